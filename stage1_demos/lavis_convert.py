"""transformers' BLIP-2 -> LAVIS's Blip2OPT: the same trained weights under Salesforce's names.

Hugging Face brought LAVIS's BLIP-2 into transformers with a key-renaming script
(transformers/models/blip_2/convert_blip_2_original_to_pytorch.py, logits compared). This goes
back the other way, so the bundled tiny BLIP-2 runs inside LAVIS's own code: `blip2_caption
--backend lavis` converts once, then stage1_demos/lavis_runner.py builds LAVIS's Blip2OPT from
the result in .venv-lavis. LAVIS cannot be imported here (it pins transformers < 4.27), so the
conversion is tensors and JSON only, and the output has the shape Salesforce ships its models in:

    blip2_opt.pth   {"model": state_dict}, LAVIS's checkpoint format (every weight, float32)
    opt/            what `opt_model="facebook/opt-2.7b"` names in LAVIS: OPT's config.json and
                    weights, and the tokenizer as the slow GPT2Tokenizer LAVIS loads (use_fast=False)
    lavis.json      what LAVIS's yaml configs cannot say: it hard-codes EVA ViT-g and bert-base, so
                    the ViT and Q-Former sizes; the image processor; the token that ends a caption

    python -m stage1_demos.lavis_convert --model tiny --out outputs/lavis/tiny-blip2

RENAMES below is the lesson: one line per module family, the two codebases' names for one part.
"""

import hashlib
import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import Blip2Config

from curriculum import OUTPUTS_DIR, cli, zoo
from curriculum.cli import UserError

FORMAT = 1  # bump when the output changes, so cached conversions are redone
CACHE = OUTPUTS_DIR / "lavis"

# transformers name (regex at the start of the key) -> LAVIS name; the rest of the key is kept.
VIT_BLOCK, EVA_BLOCK = r"vision_model\.encoder\.layers\.(\d+)\.", r"visual_encoder.blocks.\1."
QFORMER_LAYER, BERT_LAYER = r"qformer\.encoder\.layer\.(\d+)\.", r"Qformer.bert.encoder.layer.\1."
RENAMES = [
    # ViT input: x_0 = [cls; Conv_{p x p}(image)] + pos
    (r"vision_model\.embeddings\.patch_embedding\.", r"visual_encoder.patch_embed.proj."),
    (r"vision_model\.embeddings\.class_embedding$", r"visual_encoder.cls_token"),
    (r"vision_model\.embeddings\.position_embedding$", r"visual_encoder.pos_embed"),
    # ViT block i, pre-LN: x += proj(softmax(q k^T / sqrt(d)) v) of norm1(x);  x += fc2(act(fc1(norm2(x))))
    (VIT_BLOCK + r"layer_norm([12])\.", EVA_BLOCK + r"norm\2."),
    (VIT_BLOCK + r"self_attn\.qkv\.weight$", EVA_BLOCK + r"attn.qkv.weight"),  # [W_q; W_k; W_v] in both
    (VIT_BLOCK + r"self_attn\.projection\.", EVA_BLOCK + r"attn.proj."),
    (VIT_BLOCK + r"mlp\.", EVA_BLOCK + r"mlp."),
    # LN(x) after the last block: transformers keeps it in the ViT, LAVIS beside the frozen ViT (ln_vision trains)
    (r"vision_model\.post_layernorm\.", r"ln_vision."),
    # Q-Former input: LN(query tokens), BERT's embedding LayerNorm with no words or positions to embed
    (r"query_tokens$", r"query_tokens"),
    (r"qformer\.layernorm\.", r"Qformer.bert.embeddings.LayerNorm."),
    # Q-Former layer i: softmax(Q K^T / sqrt(d)) V over the queries, then with K, V from the patches (BERT: .self.)
    (QFORMER_LAYER + r"(attention|crossattention)\.attention\.", BERT_LAYER + r"\2.self."),
    # ... each followed by LN(x + dense(attended)); then the queries' own feed-forward, LN(x + W_2 gelu(W_1 x))
    (QFORMER_LAYER + r"(attention|crossattention)\.output\.", BERT_LAYER + r"\2.output."),
    (QFORMER_LAYER + r"(intermediate_query|output_query)\.", BERT_LAYER + r"\2."),
    # queries -> the decoder's word-embedding space: W q + b
    (r"language_projection\.", r"opt_proj."),
    # OPT: LAVIS ships a copy of transformers' OPT (modeling_opt.py, plus query_embeds), so the names agree
    (r"language_model\.", r"opt_model."),
]
# The fused ViT bias b = [b_q; b_k; b_v] (transformers) is stored by EVA as q_bias and v_bias alone:
# b_k adds q . b_k to every logit of a query's row, and softmax(z + c) = softmax(z), so it is dropped.
QKV_BIAS = re.compile(VIT_BLOCK + r"self_attn\.qkv\.bias$")


def lavis_name(name):
    for pattern, replacement in RENAMES:
        if re.match(pattern, name):
            return re.sub(f"^{pattern}", replacement, name)
    raise UserError(
        f"the checkpoint's weight {name} has no place in LAVIS's Blip2OPT: it does not fit the LAVIS "
        "build (a BLIP-2 with an OPT decoder and no Q-Former text input)"
    )


def lavis_state_dict(weights, config):
    """The transformers state dict under LAVIS's names (see RENAMES)."""
    state = {}
    for name, tensor in weights.items():
        if m := QKV_BIAS.match(name):
            q_bias, _k_bias, v_bias = tensor.chunk(3)
            state[f"visual_encoder.blocks.{m[1]}.attn.q_bias"] = q_bias
            state[f"visual_encoder.blocks.{m[1]}.attn.v_bias"] = v_bias
        else:
            state[lavis_name(name)] = tensor
    if "opt_model.lm_head.weight" not in state and config.text_config.tie_word_embeddings:
        # tied: logits = h E^T with E the token embeddings; transformers saves E once
        state["opt_model.lm_head.weight"] = state["opt_model.model.decoder.embed_tokens.weight"]
    return {k: v.float().contiguous() for k, v in state.items()}


def read_weights(folder):
    """Every tensor of a save_pretrained folder (one safetensors file, or shards with an index)."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(folder / shard).items()}
    if (folder / "model.safetensors").exists():
        return load_file(folder / "model.safetensors")
    raise UserError(f"{folder} has no model.safetensors: save the model with save_pretrained (safetensors)")


def check_fits(config, image_processor):
    """What the LAVIS build can represent; anything else is one line saying what differs."""
    v, t = config.vision_config, config.text_config
    problems = []
    if t.model_type != "opt":
        problems.append(f"its language model is {t.model_type}, LAVIS's Blip2OPT needs OPT")
    else:
        if t.word_embed_proj_dim != t.hidden_size:
            problems.append("OPT's word_embed_proj_dim differs from hidden_size (the 350m layout)")
        if not (t.do_layer_norm_before and t.enable_bias and t.layer_norm_elementwise_affine):
            problems.append("OPT is not pre-LayerNorm with biases, which LAVIS's copy of OPT assumes")
    if not v.qkv_bias:
        problems.append("the ViT has no q/v biases (EVA's attention has them)")
    if v.hidden_act not in ("gelu", "quick_gelu"):
        problems.append(f"the ViT's activation is {v.hidden_act} (gelu or quick_gelu fit)")
    size = image_processor.size
    if (size.height, size.width) != (v.image_size, v.image_size) or image_processor.resample != 3:
        problems.append(
            "the image processor does not resize to the ViT's square size with bicubic resampling, "
            "as LAVIS's blip_image_eval does"
        )
    if problems:
        raise UserError(f"the checkpoint does not fit LAVIS's Blip2OPT: {'; '.join(problems)}")


def lavis_sizes(config, processor):
    """lavis.json: the sizes LAVIS's initialisers would otherwise hard-code (read by lavis_runner.py)."""
    v, q = config.vision_config, config.qformer_config
    ip = processor.image_processor
    return {
        "image_size": v.image_size,
        "image_mean": list(ip.image_mean),
        "image_std": list(ip.image_std),
        "vision": {
            "patch_size": v.patch_size,
            "width": v.hidden_size,
            "depth": v.num_hidden_layers,
            "heads": v.num_attention_heads,
            "mlp_hidden": v.intermediate_size,
            "act": v.hidden_act,
            "layer_norm_eps": v.layer_norm_eps,
        },
        "num_query_token": config.num_query_tokens,
        "qformer": {
            "hidden_size": q.hidden_size,
            "num_hidden_layers": q.num_hidden_layers,
            "num_attention_heads": q.num_attention_heads,
            "intermediate_size": q.intermediate_size,
            "hidden_act": q.hidden_act,
            "layer_norm_eps": q.layer_norm_eps,
            "max_position_embeddings": q.max_position_embeddings,
            "vocab_size": q.vocab_size,
            "cross_attention_freq": q.cross_attention_frequency,
        },
        # LAVIS ends a caption at "\n", as its OPT captions were trained; this checkpoint ends them with EOS
        "eos_token_id": config.text_config.eos_token_id,
    }


def write_opt_folder(folder, config, state, tokenizer):
    """opt/: the OPTForCausalLM folder LAVIS's Blip2OPT loads with from_pretrained (transformers 4.26)."""
    t = config.text_config
    folder.mkdir()
    fields = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "ffn_dim",
        "num_attention_heads",
        "max_position_embeddings",
        "word_embed_proj_dim",
        "do_layer_norm_before",
        "_remove_final_layer_norm",
        "activation_function",
        "pad_token_id",
        "bos_token_id",
        "eos_token_id",
        "tie_word_embeddings",
    )
    opt_config = {
        "model_type": "opt",
        "architectures": ["OPTForCausalLM"],
        "torch_dtype": "float32",
        "dropout": 0.0,
        "attention_dropout": 0.0,
        **{k: getattr(t, k) for k in fields},
    }
    (folder / "config.json").write_text(json.dumps(opt_config, indent=2))
    torch.save(
        {k.removeprefix("opt_model."): v for k, v in state.items() if k.startswith("opt_model.")},
        folder / "pytorch_model.bin",
    )
    # the same BPE as a slow GPT2Tokenizer: vocab.json (token -> id, special tokens included) and merges.txt
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    if backend["model"]["type"] != "BPE" or backend["pre_tokenizer"]["type"] != "ByteLevel":
        raise UserError(
            "the checkpoint's tokenizer is not a byte-level BPE like OPT's: it does not fit LAVIS's "
            "Blip2OPT (GPT2Tokenizer)"
        )
    vocab = backend["model"]["vocab"] | {a["content"]: a["id"] for a in backend["added_tokens"]}
    merges = [" ".join(m) if isinstance(m, list) else m for m in backend["model"]["merges"]]
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    specials = {
        "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token,
        "unk_token": tokenizer.unk_token,
        "pad_token": tokenizer.pad_token,
    }
    extra = [a["content"] for a in backend["added_tokens"] if a["special"] and a["content"] not in specials.values()]
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "GPT2Tokenizer",
                **specials,
                "additional_special_tokens": extra,
                "add_bos_token": True,
                "add_prefix_space": False,
                "errors": "replace",
                "model_max_length": tokenizer.model_max_length,
            },
            indent=2,
        )
    )


def fingerprint(folder):
    """What the cached conversion was made from: each file's size and modification time."""
    return {
        "format": FORMAT,
        "files": {
            p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(Path(folder).iterdir()) if p.is_file()
        },
    }


def convert(model, out):
    """Write the LAVIS form of a transformers BLIP-2 (`model`: tiny or a folder) to `out`; returns `out`."""
    source = Path(zoo.resolve(model, "blip2"))
    if not source.is_dir():
        raise UserError(
            f"--backend lavis converts a local transformers BLIP-2 folder, and {model!r} is none; "
            "for LAVIS's own checkpoints pass a model_type such as pretrain_opt2.7b"
        )
    config = Blip2Config.from_pretrained(source)
    processor = zoo.load_processor(str(source), "blip2")
    check_fits(config, processor.image_processor)
    state = lavis_state_dict(read_weights(source), config)
    with cli.atomic_folder(out) as staging:  # swapped in whole when complete
        torch.save({"model": state}, staging / "blip2_opt.pth")
        write_opt_folder(staging / "opt", config, state, processor.tokenizer)
        sizes = lavis_sizes(config, processor) | {"source": str(source), "fingerprint": fingerprint(source)}
        (staging / "lavis.json").write_text(json.dumps(sizes, indent=2))
    return Path(out)


def converted(model):
    """The cached LAVIS form of `model` under outputs/lavis/, converted again when its source changed
    (that folder is this module's own, so an older conversion there is replaced without asking)."""
    source = Path(zoo.resolve(model, "blip2"))
    tag = "" if model == "tiny" else "-" + hashlib.sha1(str(source).encode()).hexdigest()[:8]  # same name, other folder
    out = CACHE / f"{source.name}{tag}"
    manifest = out / "lavis.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("fingerprint") == fingerprint(source):
        return out
    return convert(model, out)


def build_parser():
    parser = cli.Parser(prog="python -m stage1_demos.lavis_convert", description=__doc__, formatter_class=cli.RawHelp)
    parser.add_argument(
        "--model",
        type=cli.Model("blip2"),
        default="tiny",
        help="'tiny' (bundled, default) or a transformers BLIP-2 folder",
    )
    parser.add_argument(
        "--out",
        type=cli.OutFolder(replace=True, markers=("lavis.json",)),
        required=True,
        help="folder to write (blip2_opt.pth, opt/, lavis.json); an earlier conversion there is replaced, "
        "any other folder only with --force",
    )
    cli.add_force_arg(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    out = convert(args.model, args.out)
    print(f"LAVIS Blip2OPT checkpoint: {out} (run it: blip2_caption caption IMG --backend lavis)")


if __name__ == "__main__":
    cli.run(main)

"""BLIP-2 captioning through Salesforce LAVIS; runs only inside .venv-lavis (see lavis_backend.py).

Reads one JSON request on stdin, writes one JSON answer on stdout, logs on stderr:
  {"model": "tiny" | a LAVIS blip2_opt model_type, "device": "auto" | "cpu" | "cuda",
   "images": [...], "prompts": [...],
   "settings": {"max_new_tokens", "num_beams", "do_sample", "temperature", "top_p", "repetition_penalty"},
   "seed": 0}
  -> {"captions": [...], "backend": "lavis", "lavis_version": "1.0.2"}
'tiny' is a randomly initialised Blip2OPT built offline (its captions are gibberish): LAVIS's
constructor downloads EVA ViT-g, bert-base-uncased and OPT, so the tiny subclass below replaces
those three initialisers. A model_type such as "pretrain_opt2.7b" loads the real checkpoint.
"""
import contextlib
import importlib.metadata
import importlib.util
import json
import pathlib
import sys
import tempfile
from functools import partial

import torch
import torch.nn as nn

# PyPI's torchvision is built for CUDA torch: beside CPU torch its C ops cannot load, and its import
# then fails registering fake kernels for nms/qnms. LAVIS uses only its transforms, so when the ops
# cannot load we declare those two (kernel-less) for the import to go through.
try:
    torch.ops.load_library(pathlib.Path(importlib.util.find_spec("torchvision").origin).parent / "_C.so")
except OSError:
    for op in ("nms", "qnms"):
        torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")

from omegaconf import OmegaConf  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import BertConfig, BertTokenizer, GPT2Tokenizer, OPTConfig, OPTForCausalLM  # noqa: E402
from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode  # noqa: E402

from lavis.models import load_model_and_preprocess, load_preprocess  # noqa: E402
from lavis.models.blip2_models.blip2 import LayerNorm  # noqa: E402
from lavis.models.blip2_models.blip2_opt import Blip2OPT  # noqa: E402
from lavis.models.blip2_models.Qformer import BertLMHeadModel  # noqa: E402
from lavis.models.eva_vit import VisionTransformer  # noqa: E402

WIDTH = 32  # hidden size of every tiny part


class TinyBlip2OPT(Blip2OPT):
    """Blip2OPT with its downloading initialisers swapped for tiny random ones (same classes)."""

    @classmethod
    def init_tokenizer(cls):  # bert-base-uncased -> a 9-word WordPiece vocab
        with tempfile.TemporaryDirectory() as tmp:
            vocab = pathlib.Path(tmp) / "vocab.txt"
            vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "shape"]))
            tokenizer = BertTokenizer(str(vocab))
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        return tokenizer

    @classmethod
    def init_vision_encoder(cls, model_name, img_size, drop_path_rate, use_grad_checkpoint, precision):
        # EVA ViT-g (1408 wide, 39 blocks, 14-pixel patches) -> the same VisionTransformer, 2 blocks
        vit = VisionTransformer(img_size=img_size, patch_size=14, embed_dim=WIDTH, depth=2, num_heads=2,
                                mlp_ratio=2, qkv_bias=True, use_mean_pooling=False,
                                norm_layer=partial(nn.LayerNorm, eps=1e-6))
        return vit, LayerNorm(vit.num_features)

    @classmethod
    def init_Qformer(cls, num_query_token, vision_width, cross_attention_freq=2):
        # bert-base-uncased config and weights -> a random 2-layer BERT with the same Q-Former fields
        config = BertConfig(vocab_size=16, hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=2 * WIDTH, encoder_width=vision_width, add_cross_attention=True,
                            cross_attention_freq=cross_attention_freq, query_length=num_query_token)
        query_tokens = nn.Parameter(torch.randn(1, num_query_token, WIDTH) * config.initializer_range)
        return BertLMHeadModel(config), query_tokens


def save_tiny_opt(folder):
    """A random 2-layer OPT and a byte-level GPT-2 tokenizer (printable ASCII and newline, no merges)."""
    chars = [bytes_to_unicode()[b] for b in [10, *range(32, 127)]]
    vocab = {t: i for i, t in enumerate(["<pad>", "</s>", "<unk>", *chars])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    GPT2Tokenizer(folder / "vocab.json", folder / "merges.txt", bos_token="</s>", eos_token="</s>",
                  unk_token="<unk>", pad_token="<pad>", add_bos_token=True).save_pretrained(folder)
    config = OPTConfig(vocab_size=len(vocab), hidden_size=WIDTH, word_embed_proj_dim=WIDTH, ffn_dim=2 * WIDTH,
                       num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=128,
                       pad_token_id=0, bos_token_id=1, eos_token_id=1)
    OPTForCausalLM(config).save_pretrained(folder)


def load(model, device):
    """(model, image processor): the tiny one built offline, or a real model_type via LAVIS's loader."""
    if model != "tiny":
        if model not in Blip2OPT.PRETRAINED_MODEL_CONFIG_DICT:
            raise ValueError(f"{model!r} is no LAVIS blip2_opt model_type: use tiny or one of "
                             + ", ".join(Blip2OPT.PRETRAINED_MODEL_CONFIG_DICT))
        model, vis_processors, _ = load_model_and_preprocess("blip2_opt", model_type=model, is_eval=True,
                                                             device=device)
        return model, vis_processors["eval"]
    torch.manual_seed(0)  # the same random weights every time
    with tempfile.TemporaryDirectory() as tmp:  # OPT comes in through from_pretrained, as the real one does
        save_tiny_opt(pathlib.Path(tmp))
        net = TinyBlip2OPT(img_size=224, num_query_token=8, opt_model=tmp, vit_precision="fp32")
    # the processors pretrain_opt2.7b would get from load_model_and_preprocess (224 px, CLIP mean/std)
    preprocess = OmegaConf.load(Blip2OPT.default_config_path("pretrain_opt2.7b")).preprocess
    vis_processors, _ = load_preprocess(preprocess)
    return net.eval().float().to(device), vis_processors["eval"]  # OPT loads in fp16; LAVIS floats it on CPU


def caption(request):
    device = request["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, processor = load(request["model"], device)
    torch.manual_seed(request.get("seed", 0))  # for do_sample
    s = request["settings"]
    captions = []
    for path, prompt in zip(request["images"], request["prompts"]):  # LAVIS 1.0.2: one prompt per batch
        image = processor(Image.open(path).convert("RGB")).unsqueeze(0).to(device)
        captions += model.generate({"image": image, "prompt": prompt},
                                   use_nucleus_sampling=s["do_sample"], num_beams=s["num_beams"],
                                   max_length=s["max_new_tokens"],  # LAVIS passes it as max_new_tokens
                                   min_length=1, top_p=s["top_p"] or 1.0, temperature=s["temperature"] or 1.0,
                                   repetition_penalty=s["repetition_penalty"])
    return captions


def main():
    try:
        request = json.load(sys.stdin)
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the answer only
            captions = caption(request)
    except Exception as e:
        sys.stderr.write(f"lavis_runner: {type(e).__name__}: {' '.join(str(e).split())}\n")
        sys.exit(1)
    json.dump({"captions": captions, "backend": "lavis",
               "lavis_version": importlib.metadata.version("salesforce-lavis")}, sys.stdout)


if __name__ == "__main__":
    main()

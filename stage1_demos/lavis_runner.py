"""BLIP-2 through Salesforce LAVIS's own Blip2OPT; runs only inside .venv-lavis (see lavis_backend.py).

One JSON request on stdin, one JSON answer on stdout, log lines on stderr:
  {"model": a folder written by stage1_demos/lavis_convert.py, or a LAVIS blip2_opt model_type such
            as "pretrain_opt2.7b" (LAVIS downloads it),
   "device": "auto" | "cpu" | "cuda",
   "jobs": [{"task": "caption", "images": [...], "prompts": [...], "batch_size": 16, "seed": 0,
             "settings": {"max_new_tokens", "num_beams", "do_sample", "temperature", "top_p",
                          "repetition_penalty"}},
            {"task": "trace", "image": "...", "prompt": "..."}]}
  -> {"results": [one per job], "backend": "lavis", "lavis_version": "1.0.2"}
Exit code 1: a job failed (the last line on stderr says why); 3: LAVIS cannot be imported.
"""

import contextlib
import importlib.metadata
import importlib.util
import json
import pathlib
import sys
from functools import partial

try:
    import torch
    import torch.nn as nn

    # PyPI's torchvision is built for CUDA torch: beside CPU torch its C ops cannot load, and its
    # import then fails registering fake kernels for nms/qnms. LAVIS uses only its transforms, so
    # when the ops cannot load we declare those two (kernel-less) for the import to go through.
    torchvision = importlib.util.find_spec("torchvision")  # found, not imported yet
    if torchvision is None:
        raise ImportError("No module named 'torchvision'")
    try:
        torch.ops.load_library(pathlib.Path(torchvision.origin).parent / "_C.so")
    except OSError:
        for op in ("nms", "qnms"):
            torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")

    from lavis.models import load_model_and_preprocess, load_preprocess
    from lavis.models.blip2_models.blip2 import LayerNorm
    from lavis.models.blip2_models.blip2_opt import Blip2OPT
    from lavis.models.blip2_models.Qformer import BertLMHeadModel
    from lavis.models.clip_vit import QuickGELU
    from lavis.models.eva_vit import VisionTransformer
    from omegaconf import OmegaConf
    from PIL import Image
    from transformers import BertConfig
except ImportError as e:
    sys.stderr.write(f"lavis_runner: cannot import LAVIS or its dependencies ({type(e).__name__}: {e})\n")
    sys.exit(3)


class ConvertedBlip2OPT(Blip2OPT):
    """LAVIS's Blip2OPT at the sizes of a converted checkpoint. Blip2OPT.__init__ calls three
    initialisers that download EVA ViT-g, bert-base-uncased and its tokenizer; these build the
    same classes at the sizes in lavis.json instead (the weights come from blip2_opt.pth after), so
    LAVIS's own __init__, OPT loading, generate() and checkpoint loader do everything else."""

    sizes = None  # lavis.json, set by load_converted before Blip2OPT.__init__ calls the methods below

    @classmethod
    def init_tokenizer(cls):
        return None  # BERT's tokenizer is for the Q-Former's text input; Blip2OPT stores it and never uses it

    @classmethod
    def init_vision_encoder(cls, model_name, img_size, drop_path_rate, use_grad_checkpoint, precision):
        v = cls.sizes["vision"]
        # EVA sizes its MLP as int(width * mlp_ratio): the ratio is nudged so the int lands on mlp_hidden exactly
        vit = VisionTransformer(
            img_size=img_size,
            patch_size=v["patch_size"],
            embed_dim=v["width"],
            depth=v["depth"],
            num_heads=v["heads"],
            mlp_ratio=(v["mlp_hidden"] + 0.5) / v["width"],
            qkv_bias=True,
            use_mean_pooling=False,
            norm_layer=partial(nn.LayerNorm, eps=v["layer_norm_eps"]),
        )
        for block in vit.blocks:  # EVA ViT-g uses GELU; a CLIP vision tower (the tiny one's) x * sigmoid(1.702 x)
            block.mlp.act = QuickGELU() if v["act"] == "quick_gelu" else nn.GELU()
        return vit, LayerNorm(vit.num_features, eps=v["layer_norm_eps"])

    @classmethod
    def init_Qformer(cls, num_query_token, vision_width, cross_attention_freq=2):
        # bert-base-uncased, cross-attending every 2nd layer -> the converted sizes (the tiny one: every layer)
        config = BertConfig(
            **cls.sizes["qformer"], encoder_width=vision_width, add_cross_attention=True, query_length=num_query_token
        )
        return BertLMHeadModel(config), nn.Parameter(torch.zeros(1, num_query_token, config.hidden_size))


def load_converted(folder, device):
    """(Blip2OPT with the converted weights, LAVIS's image processor at the checkpoint's size and mean/std)."""
    sizes = ConvertedBlip2OPT.sizes = json.loads((folder / "lavis.json").read_text())
    model = ConvertedBlip2OPT(
        img_size=sizes["image_size"],
        num_query_token=sizes["num_query_token"],
        opt_model=str(folder / "opt"),
        vit_precision="fp32",
    )
    model.eos_token_id = sizes["eos_token_id"]  # LAVIS stops at "\n"; this model learned to end with </s>
    # Blip2OPT loads OPT in float16 (frozen, 2.7B parameters on a GPU): make everything float32 first,
    # then load every weight, OPT's too, from the float32 checkpoint, so none stays rounded to float16.
    model.float()
    checkpoint = folder / "blip2_opt.pth"
    try:
        loaded = model.load_from_pretrained(str(checkpoint))  # LAVIS's loader: load_state_dict(strict=False)
    except RuntimeError as e:  # shapes that differ
        raise ValueError(
            f"{checkpoint} does not fit the LAVIS model built from lavis.json: {str(e).splitlines()[1].strip()}"
        ) from None
    weights = {name for name, _ in model.named_parameters()}
    missing = [k for k in loaded.missing_keys if k in weights]  # not buffers such as position_ids
    if missing or loaded.unexpected_keys:
        raise ValueError(
            f"{checkpoint} does not fit the LAVIS model built from lavis.json: "
            f"missing {missing[:3]}, unexpected {loaded.unexpected_keys[:3]}"
        )
    processors, _ = load_preprocess(
        OmegaConf.create(
            {
                "vis_processor": {
                    "eval": {
                        "name": "blip_image_eval",
                        "image_size": sizes["image_size"],
                        "mean": sizes["image_mean"],
                        "std": sizes["image_std"],
                    }
                }
            }
        )
    )
    return model.eval().to(device), processors["eval"]


def load(model, device):
    """(model, image processor): a converted folder, or a real model_type through LAVIS's loader."""
    if (pathlib.Path(model) / "lavis.json").exists():
        return load_converted(pathlib.Path(model), device)
    if model not in Blip2OPT.PRETRAINED_MODEL_CONFIG_DICT:
        raise ValueError(
            f"{model!r} is neither a converted checkpoint folder nor a LAVIS blip2_opt model_type ("
            + ", ".join(Blip2OPT.PRETRAINED_MODEL_CONFIG_DICT)
            + ")"
        )
    model, vis_processors, _ = load_model_and_preprocess("blip2_opt", model_type=model, is_eval=True, device=device)
    return model, vis_processors["eval"]


def read_image(path, processor):
    return processor(Image.open(path).convert("RGB"))


@torch.no_grad()
def caption(model, processor, job, device):
    """LAVIS 1.0.2's generate() takes one prompt string for the whole batch, so images are batched
    by prompt; it returns text with the prompt already cut off."""
    s = job["settings"]
    torch.manual_seed(job.get("seed", 0))  # for do_sample
    captions = [None] * len(job["images"])
    by_prompt = {}
    for i, prompt in enumerate(job["prompts"]):
        by_prompt.setdefault(prompt, []).append(i)
    for prompt, rows in by_prompt.items():
        for start in range(0, len(rows), job.get("batch_size", 16)):
            chunk = rows[start : start + job.get("batch_size", 16)]
            images = torch.stack([read_image(job["images"][i], processor) for i in chunk]).to(device)
            # LAVIS's max_length goes to transformers' generate() as max_new_tokens
            texts = model.generate(
                {"image": images, "prompt": prompt},
                use_nucleus_sampling=s["do_sample"],
                num_beams=s["num_beams"],
                max_length=s["max_new_tokens"],
                min_length=1,
                top_p=s["top_p"] or 1.0,
                temperature=s["temperature"] or 1.0,
                repetition_penalty=s["repetition_penalty"],
            )
            for i, text in zip(chunk, texts):
                captions[i] = text
    return {"captions": captions}


@torch.no_grad()
def trace(model, processor, job, device):
    """The first step of Blip2OPT.generate() (the same lines), keeping each stage's tensor."""
    pixel_values = read_image(job["image"], processor).unsqueeze(0).to(device)
    image_embeds = model.ln_vision(model.visual_encoder(pixel_values))
    image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=device)
    query_output = model.Qformer.bert(
        query_embeds=model.query_tokens,
        encoder_hidden_states=image_embeds,
        encoder_attention_mask=image_atts,
        return_dict=True,
    ).last_hidden_state
    projected = model.opt_proj(query_output)
    tokens = model.opt_tokenizer([job["prompt"]], return_tensors="pt").to(device)
    attention_mask = torch.cat(
        [torch.ones(projected.shape[:-1], dtype=torch.long, device=device), tokens.attention_mask], dim=1
    )
    logits = model.opt_model(input_ids=tokens.input_ids, query_embeds=projected, attention_mask=attention_mask).logits
    stages = {
        "pixel_values": pixel_values,
        "image_embeds": image_embeds,
        "query_output": query_output,
        "projected": projected,
        "logits": logits,
    }
    return {"input_ids": tokens.input_ids[0].tolist(), **{k: v[0].float().tolist() for k, v in stages.items()}}


TASKS = {"caption": caption, "trace": trace}


def run(request):
    device = request.get("device", "cpu")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, processor = load(request["model"], device)
    return [TASKS[job["task"]](model, processor, job, device) for job in request["jobs"]]


def main():
    try:
        request = json.load(sys.stdin)
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the answer only
            results = run(request)
    except Exception as e:
        sys.stderr.write(f"lavis_runner: {type(e).__name__}: {' '.join(str(e).split())}\n")
        sys.exit(1)
    json.dump(
        {"results": results, "backend": "lavis", "lavis_version": importlib.metadata.version("salesforce-lavis")},
        sys.stdout,
    )


if __name__ == "__main__":
    main()

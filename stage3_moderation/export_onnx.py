"""Week 9: export CLIP and BLIP-2 to ONNX, then prove the exports compute what PyTorch computes.

Five graphs of the modules in graphs.py, each with a dynamic batch axis (and dynamic sequence
axes where there is text):

    clip_image.onnx     pixel_values (B,3,H,W)            -> unit image embeddings (B,D)
    clip_text.onnx      input_ids, attention_mask (B,T)   -> unit text embeddings (B,D)
    blip2_image.onnx    pixel_values (B,3,H,W)            -> image queries for the LM (B,Q,E):
                        vision encoder + Q-Former + projection, one graph
    blip2_prefill.onnx  inputs_embeds (B,T,E), mask (B,T) -> next-token logits (B,V), and the keys
                        and values of every layer (L,B,H,T,d): the KV cache, as plain tensors
    blip2_step.onnx     one new token's embedding (B,1,E), mask (B,P+1), the cache (L,B,H,P,d)
                        -> logits, and the cache grown by one position

The decoder's KV cache crosses the graph boundary as plain tensors, so a step costs one token,
not the whole sequence again. The word-embedding table is saved beside them
(blip2_embed_tokens.npy), so the greedy loop builds inputs_embeds in NumPy the way
`decoder_embeds` in week 4 does: word vectors, with the image queries written where the
processor put its <image> placeholders.

Dynamic int8 copies (*.int8.onnx) are made by onnxruntime's `quantize_dynamic`: weights stored as
int8, activations quantised on the fly per batch.

Parity is checked after every export and written to manifest.json: cosine of every embedding to
PyTorch's (target >= 0.9999) and greedy captions identical to transformers' `generate()` on the
ShapesWorld test split.

The folder is built beside --out and put in its place only when every file is written, so a failed
or interrupted export leaves the previous one as it was. An earlier export (it holds manifest.json)
is replaced; any other folder only with --force.

    python -m stage3_moderation.export_onnx                 # tiny models -> outputs/onnx/tiny
    python -m stage3_moderation.export_onnx --clip openai/clip-vit-base-patch32 \\
        --blip2 Salesforce/blip2-opt-2.7b --out outputs/onnx/real
"""

import contextlib
import io
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from curriculum import cli, shapesworld, zoo
from stage1_demos.blip2_caption import GREEDY, caption_images
from stage1_demos.clip_retrieval import embed_images, embed_texts
from stage3_moderation.engines import OnnxEngine
from stage3_moderation.graphs import (
    EMBED_TOKENS,
    MANIFEST,
    Blip2Image,
    ClipImage,
    ClipText,
    decoder_modules,
    default_dir,
    is_exported,
)

OPSET = 18
PARITY_COSINE = 0.9999
log = logging.getLogger("stage3_moderation")


def example_inputs(clip_processor, blip2, blip2_processor, prefill):
    """Two-row inputs for tracing; dynamic axes make every batch size and length legal later."""
    images = [s.image for s in shapesworld.generate("test", 2)]
    text = clip_processor(
        text=["a red circle", "a large blue square in the top left"], padding=True, return_tensors="pt"
    )
    clip_pixels = clip_processor(images=images, return_tensors="pt").pixel_values
    blip2_pixels = blip2_processor(images=images, return_tensors="pt").pixel_values
    embed = blip2.get_input_embeddings()
    # sizes that equal no fixed dimension (3 layers, 4 heads in the tiny LM), so the tracer cannot
    # mistake a dynamic axis for a fixed one
    prompt = embed(torch.tensor([[2, 100, 200, 300, 301], [1, 1, 2, 100, 300]]))
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    _, keys, values = prefill(prompt, mask)
    # Named dimensions: the same Dim on two inputs is one size, and `past + 1` tells the exporter
    # how the step's mask relates to its cache (without it, it guessed from the example and baked
    # the example's length in)
    batch, tokens, past = torch.export.Dim("batch"), torch.export.Dim("tokens"), torch.export.Dim("past")
    batch_tokens = {0: batch, 1: tokens}
    cache_axes = {1: batch, 3: past}
    return {
        "clip_image": ((clip_pixels,), {"pixel_values": {0: batch}}),
        "clip_text": (
            (text.input_ids, text.attention_mask),
            {"input_ids": batch_tokens, "attention_mask": batch_tokens},
        ),
        "blip2_image": ((blip2_pixels,), {"pixel_values": {0: batch}}),
        "blip2_prefill": ((prompt, mask), {"inputs_embeds": batch_tokens, "attention_mask": batch_tokens}),
        "blip2_step": (
            (embed(torch.tensor([[5], [6]])), torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1), keys, values),
            {
                "inputs_embeds": {0: batch},
                "attention_mask": {0: batch, 1: past + 1},
                "past_keys": cache_axes,
                "past_values": cache_axes,
            },
        ),
    }


def export_graph(module, args, axes, path, outputs=("output",)):
    """torch.export-based exporter (the default since PyTorch 2.9): the module is traced to an FX
    graph with the `axes` ({input: {axis: torch.export.Dim}}) symbolic, then translated op by op;
    its chatter goes to the debug log."""
    chatter = io.StringIO()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" notices
    with (
        contextlib.redirect_stdout(chatter),
        contextlib.redirect_stderr(chatter),
        torch.no_grad(),
        warnings.catch_warnings(),
    ):
        warnings.filterwarnings("ignore", message="# The axis name")  # one Dim on two inputs: by design
        torch.onnx.export(
            module.eval(),
            args,
            str(path),
            input_names=list(axes),
            output_names=outputs,
            dynamic_shapes=axes,
            opset_version=OPSET,
            dynamo=True,
        )
    log.debug(chatter.getvalue())


def quantize(path):
    """fp32 graph -> *.int8.onnx with int8 weights (dynamic quantisation of MatMul / Gemm)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = path.with_suffix(".int8.onnx")
    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # quantize_dynamic's generic "consider pre-processing" advice
    try:
        # external data: a real BLIP-2's decoder is far over protobuf's 2 GB limit for one file
        quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8, use_external_data_format=True)
    finally:
        root.setLevel(level)
    return out


# ---------------------------------------------------------------- parity
def min_cosine(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return float(((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))).min())


@torch.no_grad()
def parity(folder, clip, clip_processor, blip2, blip2_processor, n, precision="fp32"):
    """Cosines of each ONNX output to PyTorch's, and greedy captions compared on n test images."""
    engine = OnnxEngine(folder, clip_processor, blip2_processor, precision=precision)
    samples = shapesworld.generate("test", n)
    images, texts = [s.image for s in samples], [s.caption_en for s in samples]
    blip2_pixels = blip2_processor(images=images[:16], return_tensors="pt").pixel_values
    reference = caption_images(blip2, blip2_processor, images, [""] * n, GREEDY, batch_size=32)
    captions = engine.caption_images(images)
    return {
        "precision": precision,
        "n": n,
        "clip_image_cosine": min_cosine(engine.embed_images(images), embed_images(clip, clip_processor, images)),
        "clip_text_cosine": min_cosine(engine.embed_texts(texts), embed_texts(clip, clip_processor, texts)),
        "blip2_image_cosine": min_cosine(
            engine.blip2_queries(blip2_pixels.numpy()), Blip2Image(blip2)(blip2_pixels).numpy()
        ),
        "captions_identical": sum(a == b for a, b in zip(captions, reference)),
        "examples": [{"onnx": a, "torch": b} for a, b in list(zip(captions, reference))[:3]],
    }


def passes(report):
    cosines = [report[k] for k in ("clip_image_cosine", "clip_text_cosine", "blip2_image_cosine")]
    return min(cosines) >= PARITY_COSINE and report["captions_identical"] == report["n"]


def export(clip_name="tiny", blip2_name="tiny", out=None, n=100, int8=True):
    """Export the five graphs (and int8 copies), check parity, write manifest.json; returns it.
    The folder is built beside `out` and put in its place whole (cli.atomic_folder): a failed or
    interrupted export leaves the previous one as it was."""
    with cli.atomic_folder(out or default_dir(clip_name, blip2_name)) as staging:
        return export_into(staging, clip_name, blip2_name, n, int8)


def export_into(out, clip_name, blip2_name, n, int8):
    clip, clip_processor = zoo.load_clip(clip_name, "cpu")
    blip2, blip2_processor = zoo.load_blip2(blip2_name, "cpu")
    clip, blip2 = clip.float(), blip2.float()  # export fp32; int8 and bf16 are derived from it
    prefill, step = decoder_modules(blip2)
    modules = {
        "clip_image": ClipImage(clip),
        "clip_text": ClipText(clip),
        "blip2_image": Blip2Image(blip2),
        "blip2_prefill": prefill,
        "blip2_step": step,
    }
    timings = {}
    for name, (args, axes) in example_inputs(clip_processor, blip2, blip2_processor, prefill).items():
        start = time.perf_counter()
        outputs = ("logits", "keys", "values") if name in ("blip2_prefill", "blip2_step") else ("output",)
        export_graph(modules[name], args, axes, out / f"{name}.onnx", outputs)
        if int8:
            quantize(out / f"{name}.onnx")
        timings[name] = round(time.perf_counter() - start, 2)
    np.save(out / EMBED_TOKENS, blip2.get_input_embeddings().weight.detach().numpy())
    # written twice: the engine under test reads image_token_id (where the greedy loop writes the
    # image queries) from it; the second write adds the parity verdict
    manifest = {
        "clip": clip_name,
        "blip2": blip2_name,
        "opset": OPSET,
        "export_seconds": timings,
        "image_token_id": blip2.config.image_token_id,
    }
    cli.write_json(manifest, out / MANIFEST)
    manifest["parity"] = [
        parity(out, clip, clip_processor, blip2, blip2_processor, n, p)
        for p in (("fp32", "int8") if int8 else ("fp32",))
    ]
    manifest["fp32_parity_ok"] = passes(manifest["parity"][0])
    cli.write_json(manifest, out / MANIFEST)
    return manifest


def ensure_exported(clip_name="tiny", blip2_name="tiny", folder=None):
    """The export folder, exporting first (with a log line) if it is missing: the service's start-up
    and the benchmark call this before they load an ONNX engine."""
    folder = Path(folder or default_dir(clip_name, blip2_name))
    if not is_exported(folder):
        OUT.check_replace(folder, force=False)  # an incomplete export is replaced, a folder of other files never
        log.warning(
            "no complete ONNX export of clip=%s blip2=%s in %s: exporting now (once)", clip_name, blip2_name, folder
        )
        export(clip_name, blip2_name, folder, n=16)
    return folder


def print_report(manifest):
    print(f"ONNX export of clip={manifest['clip']} blip2={manifest['blip2']} (opset {manifest['opset']})")
    print("export seconds: " + ", ".join(f"{k} {v}" for k, v in manifest["export_seconds"].items()))
    print(f"\n{'precision':<10}{'clip image cos':>16}{'clip text cos':>15}{'blip2 image cos':>17}{'captions same':>15}")
    for r in manifest["parity"]:
        print(
            f"{r['precision']:<10}{r['clip_image_cosine']:>16.6f}{r['clip_text_cosine']:>15.6f}"
            f"{r['blip2_image_cosine']:>17.6f}{r['captions_identical']:>10}/{r['n']}"
        )
    for e in manifest["parity"][0]["examples"]:
        print(f"  onnx:  {e['onnx']}\n  torch: {e['torch']}")
    verdict = "PASS" if manifest["fp32_parity_ok"] else "FAIL"
    print(f"\nfp32 parity (cosine >= {PARITY_COSINE}, every caption identical): {verdict}")


# the export folder is the output: an earlier export there (it holds manifest.json) is replaced
OUT = cli.OutFolder(replace=True, markers=(MANIFEST,))


def build_parser():
    p = cli.Parser(prog="python -m stage3_moderation.export_onnx", description=__doc__, formatter_class=cli.RawHelp)
    p.add_argument("--clip", type=cli.Model("clip"), default="tiny", help="CLIP: tiny (bundled), a hub id or a folder")
    p.add_argument(
        "--blip2", type=cli.Model("blip2"), default="tiny", help="BLIP-2: tiny (bundled), a hub id or a folder"
    )
    p.add_argument(
        "--out",
        type=OUT,
        help="export folder (default outputs/onnx/<models>); an earlier export there is replaced, "
        "any other folder only with --force",
    )
    cli.add_force_arg(p)
    p.add_argument(
        "--n",
        type=cli.Count(1, 10_000),
        default=100,
        help="test images for the caption parity check, up to 10,000 (default 100)",
    )
    p.add_argument("--no-int8", action="store_true", help="skip the int8 copies")
    p.add_argument("--json", action="store_true")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    out = args.out or default_dir(args.clip, args.blip2)
    if args.out is None:  # the parser checked a folder it was given, not the default
        OUT.check_replace(out, args.force)
    manifest = export(args.clip, args.blip2, out, args.n, int8=not args.no_int8)
    cli.emit(manifest, args.json, print_report)
    if not manifest["fp32_parity_ok"]:
        raise SystemExit(1)


if __name__ == "__main__":
    cli.run(main)

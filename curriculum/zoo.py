"""The model zoo: `--model tiny` names a bundled checkpoint, anything else loads like the hub.

Bundled checkpoints live in data/models/tiny-<family> and are read with the very same
`from_pretrained` calls as `openai/clip-vit-base-patch32`; swapping in a real model is a flag.
"""

import contextlib
import importlib
from pathlib import Path

from huggingface_hub.errors import HFValidationError

from curriculum import MODELS_DIR, provenance, runtime
from curriculum.cli import UserError

TINY = {"clip": "tiny-clip", "clip-zh": "tiny-clip-zh", "blip2": "tiny-blip2", "sd": "tiny-sd"}


def is_saved(folder):
    """A folder written by save_pretrained: a model's config.json or a diffusers pipeline's model_index.json."""
    return (Path(folder) / "config.json").exists() or (Path(folder) / "model_index.json").exists()


def resolve(name, family):
    """'tiny' -> the bundled folder; an existing folder -> itself; anything else -> a hub id."""
    if name == "tiny":
        path = MODELS_DIR / TINY[family]
        if not is_saved(path):
            raise UserError(f"the bundled {TINY[family]} checkpoint is missing at {path}: run `make tiny-models`")
        return str(path)
    if Path(name).is_dir():
        if not is_saved(name):
            raise UserError(
                f"{name} is a folder but not a saved model (no config.json or model_index.json): "
                "pass a folder written by save_pretrained, a hub id, or tiny"
            )
        return str(Path(name).resolve())
    return name


@contextlib.contextmanager
def quiet_progress(cls, local):
    """No "Loading weights" / "Loading pipeline components" bars for a local folder, a second at
    most on every command; a hub download keeps its bars. A diffusers pipeline loads transformers
    parts too."""
    names = ["transformers"] + (["diffusers"] if cls.__module__.startswith("diffusers") else [])
    libraries = [importlib.import_module(f"{name}.utils.logging") for name in names] if local else []
    shown = [lib.is_progress_bar_enabled() for lib in libraries]
    for lib in libraries:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, was in zip(libraries, shown):
            if was:
                lib.enable_progress_bar()


def from_pretrained(cls, name_or_path, **kwargs):
    """`cls.from_pretrained`, with the offline / not-cached failure turned into advice."""
    local = Path(name_or_path).is_dir()
    if local:  # a trainer's checkpoint records the weights it started from
        provenance.LOADED.add(Path(name_or_path).resolve())
    try:
        with quiet_progress(cls, local=local):
            return cls.from_pretrained(name_or_path, **kwargs)
    except HFValidationError:
        raise UserError(
            f"{name_or_path!r} is neither a folder nor a hub id like "
            "openai/clip-vit-base-patch32; use --model tiny for the bundled model"
        ) from None
    except OSError:
        raise UserError(
            f"cannot load {name_or_path!r}: it is not in the local Hugging Face cache and the hub "
            f"cannot be reached; on a machine with internet run `hf download {name_or_path}`, "
            "or use --model tiny"
        ) from None


def load_clip(name="tiny", device="auto"):
    """(CLIPModel in eval mode on the chosen device, its processor)."""
    from transformers import AutoProcessor, CLIPModel

    path = resolve(name, "clip")
    device = runtime.pick_device(device)
    model = from_pretrained(CLIPModel, path, dtype=runtime.inference_dtype(device))
    return model.to(device).eval(), from_pretrained(AutoProcessor, path)


def load_clip_zh(name="tiny", device="auto"):
    """(Chinese CLIPTextModelWithProjection, its tokenizer): a text tower distilled into a CLIP's
    embedding space (week 7), so Chinese queries search an index built by the English CLIP."""
    from transformers import AutoTokenizer, CLIPTextModelWithProjection

    path = resolve(name, "clip-zh")
    device = runtime.pick_device(device)
    model = from_pretrained(CLIPTextModelWithProjection, path, dtype=runtime.inference_dtype(device))
    return model.to(device).eval(), from_pretrained(AutoTokenizer, path)


def load_blip2(name="tiny", device="auto"):
    """(Blip2ForConditionalGeneration in eval mode, its processor), set up for batched generation:
    a decoder-only model continues the last token of each row, so prompts are padded on the left."""
    from transformers import Blip2ForConditionalGeneration

    device = runtime.pick_device(device)
    model = from_pretrained(
        Blip2ForConditionalGeneration, resolve(name, "blip2"), dtype=runtime.inference_dtype(device)
    )
    return model.to(device).eval(), load_processor(name, "blip2")


def load_processor(name, family):
    """The processor alone (an ONNX engine needs no PyTorch model); BLIP-2's pads prompts on the left."""
    from transformers import AutoProcessor

    processor = from_pretrained(AutoProcessor, resolve(name, family))
    if family == "blip2":
        processor.tokenizer.padding_side = "left"
    return processor


def load_sd(name="tiny", device="auto"):
    """A diffusers StableDiffusionPipeline on the chosen device, without the safety checker (the
    tiny model has none; for real checkpoints stage 3 is the moderation story)."""
    from diffusers import StableDiffusionPipeline

    path = resolve(name, "sd")
    device = runtime.pick_device(device)
    pipe = from_pretrained(
        StableDiffusionPipeline,
        path,
        **diffusers_dtype(runtime.inference_dtype(device)),
        safety_checker=None,
        requires_safety_checker=False,
        low_cpu_mem_usage=False,
    )
    return pipe.to(device)


def diffusers_dtype(dtype):
    """The dtype keyword of this diffusers' from_pretrained. diffusers 0.40 renamed `torch_dtype` to `dtype`
    (the old name deprecated, to go in 1.0); 0.39, Colab's, reads only `torch_dtype` and ignores `dtype` with
    a warning, leaving the weights fp32. pipe.to(dtype=...) works in both but warns on every call that
    from_pretrained is the place for the dtype."""
    import diffusers

    major, minor = (int(part) for part in diffusers.__version__.split(".")[:2])
    return {"dtype" if (major, minor) >= (0, 40) else "torch_dtype": dtype}

"""Week 9: one interface, several ways to run the same models.

Every engine answers three calls: `embed_images(images)` and `embed_texts(texts)` return unit
CLIP vectors as float32 NumPy arrays, and `caption_images(images)` returns greedy BLIP-2
captions. What differs is how the math runs:

    onnx-fp32      onnxruntime on the exported graphs (graphs.py; `make export` writes them)
    onnx-int8      the same graphs with int8 weights (dynamic quantisation)
    torch-fp32     PyTorch eager, the reference
    torch-bf16     PyTorch eager with bf16 weights: the AMX / AVX512-BF16 units of recent CPUs
    compile        torch.compile of the image and text graphs (bf16 where the CPU is fast at it,
                   else fp32); batches are padded up to a fixed bucket size and texts to a fixed
                   length, so each bucket compiles once, at start-up (warm_up) rather than on a
                   user's request. The decoder stays eager: its length grows every step, and
                   compiling ~40 lengths (or a dynamic-shape graph) cost far more than it saved.

Captions use one greedy loop for every engine (`greedy_captions`): embed the prompt tokens, write
the image queries over the <image> placeholders, then ask the decoder for the next token until
each row has said </s>. The torch-fp32 engine's captions equal `generate()`'s (tests check).

`read_images(images, questions)` also answers a policy's yes/no questions (week 9's visual-question
rule) from the same image queries: one prefill per question, no decoding steps,

    p(yes) = softmax(logits[" yes"], logits[" no"])[0]   after "Question: <question> Answer:"
"""

import gc
import json
import logging
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from curriculum import runtime, zoo
from curriculum.cli import UserError
from curriculum.tiny_blip2 import qa_prompt
from stage3_moderation import graphs

ENGINES = ("onnx-fp32", "onnx-int8", "torch-fp32", "torch-bf16", "compile")
# The fastest engine in `make bench` that kept parity (cosine >= 0.999, R@1 unchanged, captions
# identical) on this project's CPU; see docs/week11.md.
DEFAULT_ENGINE = "onnx-fp32"
BUCKETS = (1, 2, 4, 8, 16)  # the compile engine's batch shapes; also the largest model call
COMPILED = ("clip_image", "clip_text", "blip2_image")
MAX_NEW_TOKENS = 40
log = logging.getLogger("stage3_moderation")


def cpu_has_fast_int8():
    """VNNI / AMX-INT8 make int8 dot products several times faster than fp32; without them int8
    mostly saves memory."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def bucket(n):
    """The smallest bucket that holds n rows (n itself above the largest)."""
    return next((b for b in BUCKETS if b >= n), n)


def compile_module(module):
    """torch.compile for inference at fixed shapes. Freezing turns the weights into constants, so
    inductor can fold them and let oneDNN pre-pack them for the AMX / AVX-512 kernels (on the
    ViT-B/32 image tower in bf16, 2 cores: 1.0-1.4x over eager bf16 across runs)."""
    import torch._inductor.config

    torch._inductor.config.freezing = True
    return torch.compile(module, dynamic=False)


def chunks(items, size=BUCKETS[-1]):
    """Model calls of at most `size` rows: bounded memory, and only shapes the compile engine knows."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def pad_rows(x, rows):
    """Repeat the last row until x has `rows` rows: real data, so no NaN paths, and sliced off after."""
    return x if len(x) == rows else torch.cat([x, x[-1:].expand(rows - len(x), *x.shape[1:])])


def yes_no_ids(tokenizer):
    """The ids of " yes" and " no": a yes/no answer's first token is one of them, so one forward
    pass reads the answer's probability. A tokenizer that splits either word cannot."""
    yes, no = (tokenizer(f" {word}", add_special_tokens=False).input_ids for word in ("yes", "no"))
    if len(yes) != 1 or len(no) != 1:
        raise UserError("this BLIP-2's tokenizer splits ' yes' or ' no' into several tokens: it cannot answer yes/no")
    return yes[0], no[0]


def prompt_embeds(queries, prompt_ids, embed_tokens, image_token_id):
    """The decoder's input: word vectors for every position, the image queries (B,Q,E) written over
    the Q <image> placeholders of prompt_ids (B,T)."""
    ids = np.asarray(prompt_ids)
    embeds = embed_tokens[ids]
    embeds[ids == image_token_id] = queries.reshape(-1, queries.shape[-1])
    return embeds


class Reading(NamedTuple):
    """What BLIP-2 says about an image: its caption, and p(yes) to each question asked."""

    caption: str
    answers: tuple = ()


def greedy_captions(queries, prefill, step, embed_tokens, tokenizer, image_token_id, prompt_ids, max_new_tokens):
    """Greedy decoding of one batch with a KV cache: the argmax token each step; rows that said
    </s> are padded afterwards, and the loop ends when every row has.

    queries (B,Q,E) image queries; prompt_ids (B,T) the processor's ids with Q <image> placeholders;
    prefill(inputs_embeds (B,T,E), mask (B,T)) and step(embeds (B,1,E), mask, keys, values) both
    return (logits (B,V), keys, values).
    """
    ids = np.asarray(prompt_ids)
    embeds = prompt_embeds(queries, ids, embed_tokens, image_token_id)
    mask = (ids != tokenizer.pad_token_id).astype(np.int64)
    logits, keys, values = prefill(embeds, mask)
    done = np.zeros(len(ids), bool)
    new = []
    for _ in range(max_new_tokens):
        token = np.where(done, tokenizer.pad_token_id, logits.argmax(-1))
        new.append(token)
        done |= token == tokenizer.eos_token_id
        if done.all():
            break
        mask = np.concatenate([mask, np.ones((len(ids), 1), np.int64)], axis=1)
        logits, keys, values = step(embed_tokens[token][:, None], mask, keys, values)
    return [c.strip() for c in tokenizer.batch_decode(np.stack(new, 1), skip_special_tokens=True)]


class Engine:
    """Preprocessing and the greedy loop; subclasses supply the four model functions."""

    name = "engine"
    text_padding = True  # to the longest text in the batch; "max_length" gives one fixed length

    def __init__(self, clip_processor, blip2_processor, embed_tokens, image_token_id):
        self.clip_processor, self.blip2_processor = clip_processor, blip2_processor
        # float32 once here, so the greedy loop's per-step lookups need no conversion
        self.embed_tokens, self.image_token_id = np.asarray(embed_tokens, np.float32), image_token_id
        self._question_ids = {}  # question -> its prompt ids (question_ids)

    def embed_images(self, images):
        return np.concatenate(
            [
                self.clip_image(self.clip_processor(images=chunk, return_tensors="np").pixel_values)
                for chunk in chunks(images)
            ]
        )

    def embed_texts(self, texts):
        vectors = []
        for chunk in chunks(list(texts)):
            tokens = self.clip_processor(text=chunk, padding=self.text_padding, truncation=True, return_tensors="np")
            vectors.append(self.clip_text(tokens.input_ids.astype(np.int64), tokens.attention_mask.astype(np.int64)))
        return np.concatenate(vectors)

    def caption_images(self, images, prompt="", max_new_tokens=MAX_NEW_TOKENS):
        return [reading.caption for reading in self.read_images(images, (), prompt, max_new_tokens)]

    def read_images(self, images, questions=(), prompt="", max_new_tokens=MAX_NEW_TOKENS):
        """A Reading per image: its greedy caption and its p(yes) to each question, from one vision pass."""
        readings = []
        for chunk in chunks(images):
            inputs = self.blip2_processor(images=chunk, text=[prompt] * len(chunk), padding=True, return_tensors="np")
            queries = self.blip2_queries(inputs.pixel_values)
            captions = greedy_captions(
                queries,
                self.prefill,
                self.step,
                self.embed_tokens,
                self.blip2_processor.tokenizer,
                self.image_token_id,
                inputs.input_ids,
                max_new_tokens,
            )
            answers = [self.yes_probability(queries, chunk[0], question) for question in questions]
            readings += [Reading(c, tuple(float(a[i]) for a in answers)) for i, c in enumerate(captions)]
        return readings

    @cached_property
    def yes_no(self):
        return yes_no_ids(self.blip2_processor.tokenizer)

    def question_ids(self, question, image):
        """The prompt ids of a question with its <image> placeholders (image: any one, for the processor),
        made once per question: every caption batch asks the same few."""
        if question not in self._question_ids:
            inputs = self.blip2_processor(images=[image], text=[qa_prompt(question)], return_tensors="np")
            self._question_ids[question] = inputs.input_ids
        return self._question_ids[question]

    def yes_probability(self, queries, image, question):
        """p(yes) of each row of image queries (B,Q,E) to one question: the answer's first token, one
        prefill. Every row has the same prompt, so no padding."""
        ids = np.repeat(self.question_ids(question, image), len(queries), axis=0)
        embeds = prompt_embeds(queries, ids, self.embed_tokens, self.image_token_id)
        logits, _, _ = self.prefill(embeds, np.ones(ids.shape, np.int64))
        two = logits[:, list(self.yes_no)].astype(np.float64)
        return 1 / (1 + np.exp(two[:, 1] - two[:, 0]))  # p_yes / (p_yes + p_no): the shared softmax cancels

    def warm_up(self, max_batch_size=1, questions=()):
        """Each bucket size up to max_batch_size once (and each question's prompt), so no user waits
        for a first call at a new shape: onnxruntime plans memory per shape, and the compile engine
        compiles per bucket (about 10 s per graph and bucket on 2 cores)."""
        from curriculum import shapesworld

        image = shapesworld.sample("test", 0).image
        for size in [b for b in BUCKETS if b <= max(1, max_batch_size)]:
            self.embed_images([image] * size), self.embed_texts(["a red circle"] * size)
            self.read_images([image] * size, questions, max_new_tokens=3)


def onnx_session(path, threads=None):
    """An onnxruntime CPU session with every graph optimisation on."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3
    # Idle worker threads sleep instead of spinning: in a server, three stages, the event loop
    # and the HTTP clients share the cores, and a spinning pool steals them (measured: 2.2x the
    # throughput of spinning threads at 32 concurrent clients).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxEngine(Engine):
    def __init__(self, folder, clip_processor, blip2_processor, precision="fp32", threads=None):
        folder = Path(folder)
        suffix = ".int8.onnx" if precision == "int8" else ".onnx"
        missing = [g for g in graphs.GRAPHS if not (folder / f"{g}{suffix}").exists()]
        if missing:
            raise UserError(
                f"{folder} has no {', '.join(missing)} ({precision}): run `make export` "
                "or python -m stage3_moderation.export_onnx"
            )
        self.sessions = {g: onnx_session(folder / f"{g}{suffix}", threads) for g in graphs.GRAPHS}
        self.name, self.precision = f"onnx-{precision}", precision
        manifest = json.loads((folder / graphs.MANIFEST).read_text())
        super().__init__(
            clip_processor, blip2_processor, np.load(folder / graphs.EMBED_TOKENS), manifest["image_token_id"]
        )

    def clip_image(self, pixel_values):
        return self.sessions["clip_image"].run(None, {"pixel_values": pixel_values.astype(np.float32)})[0]

    def clip_text(self, input_ids, attention_mask):
        return self.sessions["clip_text"].run(None, {"input_ids": input_ids, "attention_mask": attention_mask})[0]

    def blip2_queries(self, pixel_values):
        return self.sessions["blip2_image"].run(None, {"pixel_values": pixel_values.astype(np.float32)})[0]

    def prefill(self, inputs_embeds, attention_mask):
        return self.sessions["blip2_prefill"].run(
            None, {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask}
        )

    def step(self, inputs_embeds, attention_mask, keys, values):
        return self.sessions["blip2_step"].run(
            None,
            {
                "inputs_embeds": inputs_embeds,
                "attention_mask": attention_mask,
                "past_keys": keys,
                "past_values": values,
            },
        )


class TorchEngine(Engine):
    """PyTorch modules (the same wrappers the export traces); bf16 casts weights and inputs.
    The engine owns the models it is given: it casts them to `dtype` in place."""

    def __init__(self, clip, clip_processor, blip2, blip2_processor, dtype=torch.float32, compiled=False):
        self.dtype, self.compiled = dtype, compiled
        clip, blip2 = clip.to(dtype).eval(), blip2.to(dtype).eval()
        prefill, step = graphs.decoder_modules(blip2)
        self.modules = {
            "clip_image": graphs.ClipImage(clip),
            "clip_text": graphs.ClipText(clip),
            "blip2_image": graphs.Blip2Image(blip2),
            "blip2_prefill": prefill,
            "blip2_step": step,
        }
        if compiled:
            self.modules |= {k: compile_module(self.modules[k]) for k in COMPILED}
            self.text_padding = "max_length"
        precision = "bf16" if dtype == torch.bfloat16 else "fp32"
        self.name, self.precision = ("compile" if compiled else "torch") + f"-{precision}", precision
        super().__init__(
            clip_processor,
            blip2_processor,
            blip2.get_input_embeddings().weight.detach().float().numpy(),
            blip2.config.image_token_id,
        )

    def tensor(self, array):
        """NumPy -> torch without a copy; floating point in the engine's dtype."""
        t = torch.from_numpy(np.ascontiguousarray(array))
        return t.to(self.dtype) if t.is_floating_point() else t

    @torch.inference_mode()
    def run(self, graph, *arrays):
        tensors = [self.tensor(a) for a in arrays]
        rows = len(tensors[0])
        if self.compiled and graph in COMPILED:
            tensors = [pad_rows(t, bucket(rows)) for t in tensors]
        return self.modules[graph](*tensors)[:rows].float().numpy()

    def clip_image(self, pixel_values):
        return self.run("clip_image", pixel_values)

    def clip_text(self, input_ids, attention_mask):
        return self.run("clip_text", input_ids, attention_mask)

    def blip2_queries(self, pixel_values):
        return self.run("blip2_image", pixel_values)

    @torch.inference_mode()
    def prefill(self, inputs_embeds, attention_mask):
        logits, keys, values = self.modules["blip2_prefill"](self.tensor(inputs_embeds), self.tensor(attention_mask))
        return logits.float().numpy(), keys, values  # the cache stays a tensor between steps

    @torch.inference_mode()
    def step(self, inputs_embeds, attention_mask, keys, values):
        logits, keys, values = self.modules["blip2_step"](
            self.tensor(inputs_embeds), self.tensor(attention_mask), keys, values
        )
        return logits.float().numpy(), keys, values


def best_precision():
    """bf16 where the hardware has it (CUDA, AMX / AVX512-BF16 CPUs), else fp32."""
    return torch.bfloat16 if runtime.trains_in_bf16(torch.device("cpu")) else torch.float32


def freeze_heap():
    """Leave every object made so far (the loaded models') out of all later garbage collections. A
    full collection walks every object the process holds: under load the models' made each take
    100-290 ms, which was week 11's p99 at 32 clients. Called once the models are loaded and warm."""
    gc.collect()
    gc.freeze()


def load(name=DEFAULT_ENGINE, clip_name="tiny", blip2_name="tiny", onnx_dir=None, threads=None):
    """An engine by name; an ONNX engine needs a complete export (export_onnx.ensure_exported makes
    one). `threads`: the intra-op threads of each model call (default: all cores; PyTorch's setting
    is per process)."""
    if name not in ENGINES:
        raise UserError(f"unknown engine {name!r}: choose one of {', '.join(ENGINES)}")
    if name == "torch-bf16" and not runtime.cpu_has_fast_bf16():
        log.warning("this CPU has no fast bf16 (AMX / AVX512-BF16): torch-bf16 falls back to torch-fp32")
        name = "torch-fp32"
    if name == "onnx-int8" and not cpu_has_fast_int8():
        log.warning("this CPU has no VNNI / AMX-INT8: onnx-int8 falls back to onnx-fp32")
        name = "onnx-fp32"
    if name.startswith("onnx"):
        folder = Path(onnx_dir or graphs.default_dir(clip_name, blip2_name))
        if not graphs.is_exported(folder):
            raise UserError(
                f"no complete ONNX export of clip={clip_name} blip2={blip2_name} in {folder}: run "
                "`make export` or python -m stage3_moderation.export_onnx"
            )
        return OnnxEngine(
            folder,
            zoo.load_processor(clip_name, "clip"),
            zoo.load_processor(blip2_name, "blip2"),
            precision=name.split("-")[1],
            threads=threads,
        )
    if threads:
        torch.set_num_threads(threads)
    clip, clip_processor = zoo.load_clip(clip_name, "cpu")
    blip2, blip2_processor = zoo.load_blip2(blip2_name, "cpu")
    dtype = {"torch-fp32": torch.float32, "torch-bf16": torch.bfloat16, "compile": best_precision()}[name]
    return TorchEngine(clip.float(), clip_processor, blip2.float(), blip2_processor, dtype, compiled=name == "compile")

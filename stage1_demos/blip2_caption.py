"""Week 2: BLIP-2 image captioning, prompts and generation settings.

How BLIP-2 joins an image to text. An image encoder (a ViT) turns the picture into patch
features. The Q-Former, a small Transformer with a fixed set of learned *query tokens*,
cross-attends to those patches and distils them into as many vectors as it has queries; a linear
projection maps them into the language model's word-embedding space. The decoder (OPT) reads
them as if they were the first words of the text, then the prompt, and continues it:

    [q1 .. qN] </s> Question: what colour is the shape? Answer:   ->   red

So a prompt is text for the decoder to continue: 'a photo of' asks for a completion,
'Question: ... Answer:' for an answer. `explain` prints every shape on the way.

    python -m stage1_demos.blip2_caption caption outputs/week2/gallery/*.png --out captions.png
    python -m stage1_demos.blip2_caption caption img.png --prompt "a photo of" --num-beams 3 --json
    python -m stage1_demos.blip2_caption ask img.png --question "what colour is the shape?"
    python -m stage1_demos.blip2_caption prompts img.png --out prompts.png
    python -m stage1_demos.blip2_caption explain img.png
    python -m stage1_demos.blip2_caption eval --split test

--model tiny (bundled, default), or a hub id / folder such as Salesforce/blip2-opt-2.7b (half
precision on a GPU). --backend lavis runs caption, ask and prompts through Salesforce LAVIS's own
Blip2OPT on the same weights, converted once to LAVIS's names (run `make lavis-venv` once;
stage1_demos/lavis_convert.py converts, `python -m stage1_demos.lavis_parity` compares the two).
"""

import re
import sys

import numpy as np
import torch
from tqdm import tqdm
from transformers import Blip2Config

from curriculum import cli, shapesworld, viz, zoo
from curriculum.images import load_image
from curriculum.tiny_blip2 import DETAIL_PROMPT, PHOTO_PROMPT, qa_prompt, question_answer, reading_order
from stage1_demos import lavis_backend  # only a subprocess launcher: LAVIS lives in .venv-lavis

PROMPTS = [
    "",
    PHOTO_PROMPT,
    DETAIL_PROMPT,
    qa_prompt("what colour is the shape?"),
    qa_prompt("how many shapes are there?"),
]
GREEDY = {
    "max_new_tokens": 40,
    "num_beams": 1,
    "do_sample": False,
    "temperature": None,
    "top_p": None,
    "repetition_penalty": 1.0,
}
QA = GREEDY | {"max_new_tokens": 8}  # answers are a word or two
ATTRIBUTES = ("color", "shape", "size", "position")

# Salesforce/blip2-opt-2.7b's config.json, the sizes only: `explain` prints its shapes beside the
# loaded model's without downloading 15 GB.
BLIP2_OPT_2_7B = Blip2Config(
    vision_config=dict(
        image_size=224,
        patch_size=14,
        hidden_size=1408,
        num_hidden_layers=39,
        num_attention_heads=16,
        intermediate_size=6144,
    ),
    qformer_config=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, encoder_hidden_size=1408),
    text_config=dict(
        model_type="opt",
        hidden_size=2560,
        word_embed_proj_dim=2560,
        num_hidden_layers=32,
        num_attention_heads=32,
        ffn_dim=10240,
        vocab_size=50272,
    ),
    num_query_tokens=32,
)


# ---------------------------------------------------------------- generation
def generate_kwargs(settings):
    """The `generate()` arguments; temperature and top-p only mean something when sampling."""
    kwargs = {k: settings[k] for k in ("max_new_tokens", "num_beams", "do_sample", "repetition_penalty")}
    if settings["do_sample"]:
        kwargs |= {"temperature": settings["temperature"] or 1.0, "top_p": settings["top_p"] or 1.0}
    return kwargs


@torch.no_grad()
def caption_images(model, processor, images, prompts, settings=GREEDY, batch_size=16, progress=False):
    """One caption per (image, prompt), `batch_size` at a time; the prompt itself is not repeated."""
    captions = []
    for start in tqdm(range(0, len(images), batch_size), desc="caption", disable=not progress):
        inputs = processor(
            images=images[start : start + batch_size],
            text=prompts[start : start + batch_size],
            padding=True,
            return_tensors="pt",
        ).to(model.device, model.dtype)
        generated = model.generate(**inputs, **generate_kwargs(settings))
        new_tokens = generated[:, inputs["input_ids"].shape[1] :]  # generate returns prompt + continuation
        captions += [c.strip() for c in processor.batch_decode(new_tokens, skip_special_tokens=True)]
    return captions


def caption_files(
    paths, prompt, settings, model_name="tiny", device="auto", batch_size=16, backend="transformers", out=None
):
    """{"results": [{"image", "prompt", "caption"}], "settings": {...}} for a list of image files;
    with `out`, also a PNG of the images with their captions."""
    images = [load_image(p) for p in paths]  # fail on a bad file before loading a model
    prompts = [prompt] * len(paths)
    if backend == "lavis":
        captions = lavis_backend.caption(paths, prompts, settings, model_name, device, batch_size)
    else:
        model, processor = zoo.load_blip2(model_name, device)
        torch.manual_seed(settings["seed"])  # what --do-sample draws from
        captions = caption_images(model, processor, images, prompts, settings, batch_size, progress=len(paths) > 64)
    if out:
        viz.image_grid(images, captions, out)
    return {
        "results": [{"image": str(p), "prompt": prompt, "caption": c} for p, c in zip(paths, captions)],
        "settings": {**settings, "model": model_name, "backend": backend, "batch_size": batch_size},
    }


# ---------------------------------------------------------------- explain
def journey_shapes(config, prompt_tokens):
    """(stage, shape) for one image and a prompt of `prompt_tokens` tokens, from the config alone."""
    v, q, t = config.vision_config, config.qformer_config, config.text_config
    patches = (v.image_size // v.patch_size) ** 2 + 1  # + the [CLS] embedding
    n = config.num_query_tokens
    return [
        ("pixel values", cli.shape_text(1, 3, v.image_size, v.image_size)),
        ("patch embeddings (+CLS)", cli.shape_text(1, patches, v.hidden_size)),
        ("vision encoder output", cli.shape_text(1, patches, v.hidden_size)),
        ("learned query tokens", cli.shape_text(1, n, q.hidden_size)),
        ("Q-Former output", cli.shape_text(1, n, q.hidden_size)),
        ("projected queries", cli.shape_text(1, n, t.hidden_size)),
        ("prompt token embeddings", cli.shape_text(1, prompt_tokens, t.hidden_size)),
        ("decoder input (joined)", cli.shape_text(1, n + prompt_tokens, t.hidden_size)),
        ("decoder logits", cli.shape_text(1, n + prompt_tokens, t.vocab_size)),
    ]


@torch.no_grad()
def trace(model, processor, image, prompt):
    """One image and prompt through the model stage by stage: (the prompt's token ids, {stage: tensor}),
    the stages in journey_shapes' order."""
    inputs = processor(images=[image], text=[prompt], return_tensors="pt").to(model.device, model.dtype)
    is_image = inputs["input_ids"][0] == model.config.image_token_id
    prompt_ids = inputs["input_ids"][:, ~is_image]
    pixel_values = inputs["pixel_values"]
    # the model's own image path: ViT -> Q-Former (queries cross-attend to patches) -> projection
    features = model.get_image_features(pixel_values=pixel_values, return_dict=True)
    token_embeds = model.get_input_embeddings()(prompt_ids)
    # the processor put one <image> placeholder per query before the prompt; the model swaps them in
    joined = torch.cat([features.pooler_output, token_embeds], dim=1)
    logits = model.language_model(inputs_embeds=joined, attention_mask=inputs["attention_mask"]).logits
    stages = {
        "pixel_values": pixel_values,
        "patch_embeddings": model.vision_model.embeddings(pixel_values),
        "image_embeds": features.last_hidden_state,
        "query_tokens": model.query_tokens.expand(1, -1, -1),
        "query_output": features.qformer_outputs.last_hidden_state,
        "projected": features.pooler_output,
        "prompt_embeds": token_embeds,
        "joined": joined,
        "logits": logits,
    }
    return prompt_ids[0], stages


def explain(model, processor, image, prompt):
    """Run the model stage by stage on one image and report each real tensor shape."""
    prompt_ids, stages = trace(model, processor, image, prompt)
    expected = journey_shapes(model.config, len(prompt_ids))
    reference = journey_shapes(BLIP2_OPT_2_7B, len(prompt_ids))
    return {
        "prompt": prompt,
        "prompt_tokens": processor.tokenizer.convert_ids_to_tokens(prompt_ids),
        "next_token": processor.tokenizer.decode(stages["logits"][0, -1].argmax()),
        "stages": [
            {"stage": name, "shape": cli.shape_text(*t.shape), "from_config": cfg, "blip2_opt_2_7b": ref}
            for t, (name, cfg), (_, ref) in zip(stages.values(), expected, reference)
        ],
    }


QFORMER_NOTE = """\
What the Q-Former is for: the image encoder gives one vector per patch (257 for BLIP-2's ViT-g),
in its own feature space. The Q-Former's learned queries cross-attend to all of them and return a
fixed, small number of vectors (32), which one linear layer maps to the decoder's embedding size.
The decoder sees a short, fixed-length 'visual prompt' instead of hundreds of patch features, and
in real BLIP-2 both the image encoder and the language model stay frozen: only the Q-Former
(188M parameters) learns to translate between them."""


def print_explain(result, model_name):
    print(f"prompt {result['prompt']!r} -> {len(result['prompt_tokens'])} tokens {result['prompt_tokens']}")
    print("(the blip2-opt-2.7b column assumes the same number of prompt tokens)")
    print(f"\n{'stage':<26} {model_name:<18} {'blip2-opt-2.7b':<18}")
    for s in result["stages"]:
        print(f"{s['stage']:<26} {s['shape']:<18} {s['blip2_opt_2_7b']:<18}")
    print(f"\nmost likely next token: {result['next_token']!r}\n\n{QFORMER_NOTE}")


# ---------------------------------------------------------------- eval
def attribute_correct(truth, predicted, attribute):
    """The caption names one attribute right for every object, and names no object the image lacks.

    Colour, shape and size are compared place by place, in reading order: right when the caption
    gives each place the colour (shape, size) of the object there. Position is bound to the object:
    right when the caption names each colour-shape object at that object's own place. Comparing the
    places alone would only check which quadrants are occupied, and a caption that swaps two objects
    would pass.
    """
    if attribute == "position":
        return sorted((o.color, o.shape, o.position) for o in truth) == sorted(
            (o.color, o.shape, o.position) for o in predicted
        )
    return [getattr(o, attribute) for o in reading_order(truth)] == [
        getattr(o, attribute) for o in reading_order(predicted)
    ]


def question_form(question):
    """The question with its colour, shape and place words replaced by their kind:
    'where is the red square?' -> 'where is the ‹colour› ‹shape›?'."""
    kinds = (("colour", shapesworld.COLORS), ("shape", shapesworld.SHAPES), ("place", shapesworld.POSITIONS))
    for kind, words in kinds:
        question = re.sub(rf"\b(?:{'|'.join(words)})\b", f"‹{kind}›", question)
    return question


def qa_by_form(questions, replies, answers):
    """[{"question": form, "n", "right": share answered exactly}], the hardest form first."""
    forms = {}
    for question, reply, answer in zip(questions, replies, answers):
        forms.setdefault(question_form(question), []).append(reply == answer)
    rows = [{"question": form, "n": len(right), "right": float(np.mean(right))} for form, right in forms.items()]
    return sorted(rows, key=lambda r: (r["right"], r["question"]))


def qa_set(samples, seed=0):
    """The week-2 questions, one per sample, and their answers: (questions, answers)."""
    rng = np.random.default_rng(seed)
    return tuple(zip(*(question_answer(s.objects, rng) for s in samples)))


def evaluate(model_name="tiny", split="test", n=500, seed=0, device="auto", batch_size=64):
    """Greedy captions and one question per image; accuracy per attribute, seen vs held-out pairs."""
    model, processor = zoo.load_blip2(model_name, device)
    samples = shapesworld.generate(split, n, seed)
    images = [s.image for s in samples]
    captions = caption_images(model, processor, images, [""] * n, GREEDY, batch_size, progress=True)
    questions, answers = qa_set(samples, seed)
    replies = caption_images(model, processor, images, [qa_prompt(q) for q in questions], QA, batch_size, progress=True)
    groups = {}
    for name, keep in (("seen", False), ("heldout", True)):
        rows = [i for i, s in enumerate(samples) if s.heldout == keep]
        if not rows:  # a few images may hold no held-out pair (or only those): nothing to score
            groups[name] = {"n": 0}
            continue
        parsed = {i: shapesworld.parse_caption(captions[i]) for i in rows}
        groups[name] = {
            "n": len(rows),
            **{
                a: float(np.mean([attribute_correct(samples[i].objects, parsed[i], a) for i in rows]))
                for a in ATTRIBUTES
            },
            "exact": float(np.mean([reading_order(parsed[i]) == reading_order(samples[i].objects) for i in rows])),
            "qa": float(np.mean([replies[i] == answers[i] for i in rows])),
        }
    examples = [
        {
            "caption": captions[i],
            "truth": samples[i].caption_en,
            "question": questions[i],
            "answer": replies[i],
            "expected": answers[i],
        }
        for i in range(min(5, n))
    ]
    return {
        "model": model_name,
        "split": split,
        "n": n,
        "groups": groups,
        "qa_by_question": qa_by_form(questions, replies, answers),
        "examples": examples,
    }


def print_eval_table(result):
    print(f"BLIP-2 ({result['model']}) on ShapesWorld {result['split']}, n={result['n']}, greedy decoding")
    print(
        "caption: share of captions naming every object's attribute right (position: each colour-shape object "
        "at its own place); qa: exact answers\n"
    )
    print(f"{'':<10}{'colour':>8}{'shape':>8}{'size':>8}{'position':>10}{'exact':>8}{'qa':>8}{'n':>6}")
    for name, g in result["groups"].items():
        if not g["n"]:
            print(f"{name:<10}{'(no images)':>50}{0:>6}")
            continue
        print(
            f"{name:<10}{g['color']:>8.3f}{g['shape']:>8.3f}{g['size']:>8.3f}{g['position']:>10.3f}"
            f"{g['exact']:>8.3f}{g['qa']:>8.3f}{g['n']:>6}"
        )
    for e in result["examples"][:3]:
        print(
            f"\n  caption  {e['caption']}\n  truth    {e['truth']}\n"
            f"  Q: {e['question']}  A: {e['answer']}  (expected {e['expected']})"
        )


# ---------------------------------------------------------------- command line
class Blip2Model(cli.Model):
    """A transformers BLIP-2 (cli.Model), or one of LAVIS's own model types for --backend lavis."""

    def __init__(self):
        super().__init__("blip2")

    def __call__(self, text):
        return text if text in lavis_backend.LAVIS_MODEL_TYPES else super().__call__(text)


def add_model_arg(p):
    p.add_argument(
        "--model",
        type=Blip2Model(),
        default="tiny",
        help="'tiny' (bundled, default), a hub id or a local BLIP-2 folder; with --backend lavis also "
        f"one of LAVIS's model types ({', '.join(lavis_backend.LAVIS_MODEL_TYPES)})",
    )
    cli.add_device_arg(p)


LENGTH_HELP = (
    "the decoder reads the image's queries, the prompt and the caption in its positions (64 for tiny, 8 of them "
    "queries): a longer prompt is refused, and --max-new-tokens lowered to what fits, with a warning"
)


def add_generation_args(p):
    p.add_argument(
        "--max-new-tokens",
        type=cli.Count(1, 2048),
        default=GREEDY["max_new_tokens"],
        help=f"most tokens to generate (default {GREEDY['max_new_tokens']}, up to 2048 and what fits the model)",
    )
    p.add_argument(
        "--num-beams", type=cli.Count(1, 64), default=1, help="beam search width, up to 64; 1 = greedy (default)"
    )
    p.add_argument("--do-sample", action="store_true", help="sample instead of taking the most likely token")
    p.add_argument(
        "--temperature",
        type=cli.Number(minimum=0.01, maximum=100),
        help="with --do-sample: <1 sharper, >1 flatter, from 0.01 to 100 (1.0)",
    )
    p.add_argument(
        "--top-p", type=cli.Number(above=0, maximum=1), help="with --do-sample: nucleus mass to keep, in (0, 1] (1.0)"
    )
    p.add_argument(
        "--repetition-penalty",
        type=cli.Number(above=0, maximum=10),
        default=1.0,
        help="make tokens already generated less likely: a positive score is divided by it, a negative one "
        "multiplied; above 0, up to 10; 1.0 = off (default)",
    )
    p.add_argument("--seed", type=cli.Seed(), default=0, help="random seed for --do-sample (default 0)")
    add_backend_arg(p)


def add_backend_arg(p):
    p.add_argument(
        "--backend",
        choices=["transformers", "lavis"],
        default="transformers",
        help="transformers (default) or Salesforce LAVIS's Blip2OPT on the same weights, in .venv-lavis "
        "(make lavis-venv)",
    )


def fit_new_tokens(model_name, backend, prompts, max_new_tokens):
    """How many new tokens fit after the longest prompt, read from the config and the tokenizer
    before the weights load: the decoder holds the image's queries, the prompt and the caption in
    max_position_embeddings positions (past them OPT has no position embedding: an IndexError).
    A prompt that leaves no room is refused; a larger max_new_tokens is lowered, with a warning."""
    if model_name in lavis_backend.LAVIS_MODEL_TYPES:
        if backend != "lavis":
            raise cli.UserError(f"{model_name} is one of LAVIS's model types: add --backend lavis")
        return max_new_tokens  # LAVIS's own OPT checkpoints read 2048 positions
    config = zoo.from_pretrained(Blip2Config, zoo.resolve(model_name, "blip2"))
    tokenizer = zoo.load_processor(model_name, "blip2").tokenizer
    positions, queries = config.text_config.max_position_embeddings, config.num_query_tokens
    longest = max(len(tokenizer(p, verbose=False).input_ids) for p in prompts)  # </s> included
    room = positions - queries - longest
    if room < 1:
        raise cli.UserError(
            f"the prompt is {longest} tokens and this model reads {positions} positions, {queries} of them the "
            f"image's queries: shorten the prompt to at most {positions - queries - 2} tokens"
        )
    if max_new_tokens > room:
        print(
            f"warning: only {room} new tokens fit after this prompt ({positions} positions, {queries} image queries, "
            f"{longest} prompt tokens): generating at most {room}",
            file=sys.stderr,
        )
    return min(max_new_tokens, room)


def generation_settings(args, prompt):
    if not args.do_sample and (args.temperature is not None or args.top_p is not None):
        raise cli.UserError("--temperature and --top-p only change anything with --do-sample")
    return {
        "max_new_tokens": fit_new_tokens(args.model, args.backend, [prompt], args.max_new_tokens),
        "num_beams": args.num_beams,
        "do_sample": args.do_sample,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "repetition_penalty": args.repetition_penalty,
        "seed": args.seed,
    }


def build_parser():
    parser = cli.Parser(prog="python -m stage1_demos.blip2_caption", description=__doc__, formatter_class=cli.RawHelp)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("caption", help="caption images, optionally continuing a prompt")
    p.add_argument("images", nargs="+", type=cli.InImage(), help="image files")
    p.add_argument(
        "--prompt",
        type=cli.Text(blank=True),
        default="",
        help=f"text the caption continues, e.g. 'a photo of' (default none); {LENGTH_HELP}",
    )
    p.add_argument(
        "--batch-size", type=cli.Count(1, 256), default=16, help="images per generate() call (16, up to 256)"
    )
    p.add_argument("--out", type=cli.OutFile(".png"), help="write a PNG of the images with their captions here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_generation_args(p)
    add_model_arg(p)

    p = sub.add_parser("ask", help="visual question answering: 'Question: ... Answer:'")
    p.add_argument("image", type=cli.InImage(), help="image file")
    p.add_argument(
        "--question", type=cli.Text(), required=True, help=f"e.g. 'what colour is the shape?'; {LENGTH_HELP}"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_generation_args(p)
    add_model_arg(p)

    p = sub.add_parser("prompts", help="one image under several prompts, side by side")
    p.add_argument("image", type=cli.InImage(), help="image file")
    p.add_argument(
        "--prompt",
        type=cli.Text(blank=True),
        action="append",
        help=f"a prompt to compare (repeatable; default: the trained styles); {LENGTH_HELP}",
    )
    p.add_argument("--out", type=cli.OutFile(".png"), help="write a PNG of the image with each prompt's caption here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_backend_arg(p)
    add_model_arg(p)

    p = sub.add_parser("explain", help="how image and prompt are joined, with real tensor shapes")
    p.add_argument("image", type=cli.InImage(), help="image file")
    p.add_argument(
        "--prompt",
        type=cli.Text(blank=True),
        default=qa_prompt("what colour is the shape?"),
        help=f"prompt to trace; {LENGTH_HELP}",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    cli.add_model_args(p, "blip2")

    p = sub.add_parser("eval", help="caption and question-answering accuracy on ShapesWorld")
    p.add_argument("--split", choices=["val", "test"], default="test", help="split (default test)")
    p.add_argument(
        "--n",
        type=cli.Count(1, 10_000),
        default=500,
        help="images (default 500, up to 10,000); a group with no image (seen or held-out pairs) is reported empty",
    )
    p.add_argument("--seed", type=cli.Seed(), default=0, help="ShapesWorld seed (default 0)")
    p.add_argument("--out", type=cli.OutFile(".json"), help="also write the result as JSON here (later weeks read it)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    cli.add_model_args(p, "blip2")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "caption":
        result = caption_files(
            args.images,
            args.prompt,
            generation_settings(args, args.prompt),
            args.model,
            args.device,
            args.batch_size,
            args.backend,
            args.out,
        )
        if args.json:
            cli.print_json(result)
            return
        for r in result["results"]:
            print(f"{r['image']}: {r['caption']}")
        if args.out:
            print(f"picture: {args.out}")
    elif args.command == "ask":
        prompt = qa_prompt(args.question.strip())
        result = caption_files(
            [args.image], prompt, generation_settings(args, prompt), args.model, args.device, backend=args.backend
        )
        answer = result["results"][0]["caption"]
        if args.json:
            cli.print_json(
                {"image": str(args.image), "question": args.question, "answer": answer, "settings": result["settings"]}
            )
        else:
            print(answer)
    elif args.command == "prompts":
        prompts = args.prompt or PROMPTS
        settings = GREEDY | {
            "max_new_tokens": fit_new_tokens(args.model, args.backend, prompts, GREEDY["max_new_tokens"])
        }
        image = load_image(args.image)
        if args.backend == "lavis":
            captions = lavis_backend.caption([args.image] * len(prompts), prompts, settings, args.model, args.device)
        else:
            model, processor = zoo.load_blip2(args.model, args.device)
            captions = caption_images(model, processor, [image] * len(prompts), prompts, settings)
        rows = [{"prompt": p, "caption": c} for p, c in zip(prompts, captions)]
        if args.out:
            viz.captioned_image(image, [f"{r['prompt'] or '(no prompt)'} -> {r['caption']}" for r in rows], args.out)
        if args.json:
            cli.print_json({"image": str(args.image), "results": rows})
            return
        width = max(len(p) for p in prompts) + 2
        for r in rows:
            print(f"{r['prompt'] or '(no prompt)':<{width}} {r['caption']}")
        if args.out:
            print(f"picture: {args.out}")
    elif args.command == "explain":
        fit_new_tokens(args.model, "transformers", [args.prompt], 0)
        image = load_image(args.image)
        model, processor = zoo.load_blip2(args.model, args.device)
        result = explain(model, processor, image, args.prompt)
        cli.emit(result, args.json, lambda r: print_explain(r, args.model))
    else:
        result = evaluate(args.model, args.split, args.n, args.seed, args.device)
        if args.out:
            cli.write_json(result, args.out)
        cli.emit(result, args.json, print_eval_table)


if __name__ == "__main__":
    cli.run(main)

"""Week 5's lab: the decoding loops of decoding.py, checked against transformers' `generate()` on
the tiny BLIP-2, and what the settings do to a caption.

    python -m stage2_fundamentals.decoding_lab check [--json]
    python -m stage2_fundamentals.decoding_lab mistakes [--out outputs/week5/mistakes.json]   (can the checks fail?)
    python -m stage2_fundamentals.decoding_lab sweep --image outputs/week2/gallery/test_00001.png
    python -m stage2_fundamentals.decoding_lab repetition [--n 100] [--early-steps 150] [--out FILE]
        (does the model repeat by itself? where it does, which remedy fixes it: measured over test scenes)
    python -m stage2_fundamentals.decoding_lab bench [--json]        (tokens/s with and without the KV cache)
"""

import json
import time
from dataclasses import asdict, replace

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm
from transformers import (
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from curriculum import OUTPUTS_DIR, checks, cli, shapesworld, tiny_blip2, training, zoo
from curriculum.checkpoints import jsonable
from curriculum.images import load_image
from curriculum.tiny_blip2 import DETAIL_PROMPT, caption, detailed_caption, reading_order
from curriculum.tiny_blip2_prompts import DETAIL_PROMPT_ZH
from stage1_demos.blip2_caption import ATTRIBUTES, attribute_correct, fit_new_tokens
from stage2_fundamentals.decoder import Decoder, blip2_decoder_inputs
from stage2_fundamentals.decoding import (
    GENERATE_RULES,
    BeamRules,
    Settings,
    apply_no_repeat_ngram,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    decode,
)


# ---------------------------------------------------------------- the tiny BLIP-2, split in two
class Captioner:
    """BLIP-2 with its decoder replaced by the from-scratch one (same weights)."""

    def __init__(self, model, processor):
        self.model, self.processor = model.float(), processor
        self.decoder = Decoder.from_opt(self.model.language_model)
        self.tokenizer = processor.tokenizer
        self.eos = self.tokenizer.eos_token_id

    def inputs(self, image, prompt):
        """(decoder input embeddings (1, T, D), token ids (1, T)) for one image and prompt."""
        embeds, _, input_ids = blip2_decoder_inputs(self.model, self.processor, [image], [prompt])
        return embeds, input_ids

    def generate(self, image, prompt, s, rules=GENERATE_RULES):
        embeds, input_ids = self.inputs(image, prompt)
        return decode(self.decoder, embeds, input_ids, s, self.eos, rules)

    @torch.no_grad()
    def library_generate(self, image, prompt, s):
        """transformers' generate() with the same settings: the new tokens, padding dropped."""
        inputs = self.processor(images=[image], text=[prompt], return_tensors="pt")
        out = self.model.generate(**inputs, **s.generate_kwargs())[0, inputs.input_ids.shape[1] :].tolist()
        return out[: out.index(self.eos) + 1] if self.eos in out else out

    def text(self, tokens):
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()


def load_captioner(name="tiny"):
    return Captioner(*zoo.load_blip2(name, "cpu"))


# ---------------------------------------------------------------- check
CHECK_PROMPTS = ["", "a photo of", "Question: what colour is the shape? Answer:", "two shapes:"]
SEARCH_CHECKS = [
    ("greedy", Settings()),
    ("greedy, no KV cache", Settings(use_cache=False)),
    ("beam search, 3 beams", Settings(num_beams=3)),
    ("beam search, 3 beams, no KV cache", Settings(num_beams=3, use_cache=False)),
    (
        "beam search, 4 beams, length_penalty 0.5, early_stopping",
        Settings(num_beams=4, length_penalty=0.5, early_stopping=True),
    ),
    ("beam search, 4 beams, length_penalty 2", Settings(num_beams=4, length_penalty=2.0)),
    ("beam search, 3 beams, min_new_tokens 20", Settings(num_beams=3, min_new_tokens=20)),
    (
        "greedy, repetition_penalty 1.5, no_repeat_ngram 3, min_new_tokens 20",
        Settings(repetition_penalty=1.5, no_repeat_ngram_size=3, min_new_tokens=20),
    ),
    (
        "sampling (T 1.3, top-k 20, top-p 0.9), same seed",
        Settings(do_sample=True, temperature=1.3, top_k=20, top_p=0.9),
    ),
]


def check_images():
    """Two test images, where the model is sure of itself (every search finds the same caption),
    and three it never saw (noise, blank grey), where it is unsure and the searches disagree, so
    that a wrong beam search or length penalty shows."""
    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(2)]
    return [s.image for s in shapesworld.generate("test", 2)] + noise + [Image.new("RGB", (64, 64), "grey")]


def library_outputs(captioner, cases, s, seed=0):
    """generate()'s new tokens for every (image, prompt) case, each drawn from the same seed."""
    outputs = []
    for image, prompt in cases:
        torch.manual_seed(seed)
        outputs.append(captioner.library_generate(image, prompt, s))
    return outputs


def check_search(captioner, cases, greedy, library, name, s, rules=GENERATE_RULES, seed=0):
    """Token-identical to generate() (its `library` outputs) for every (image, prompt) case?
    max_abs_diff counts the outputs that differ; with the KV cache, ours must also equal our loop
    without it. differs_from_greedy (against the cases' greedy outputs) shows the setting mattered."""
    differ = changed = 0
    for (image, prompt), greedy_tokens, theirs in zip(cases, greedy, library):
        torch.manual_seed(seed)
        ours = captioner.generate(image, prompt, s, rules)
        if s.use_cache:
            torch.manual_seed(seed)
            differ += captioner.generate(image, prompt, replace(s, use_cache=False), rules) != ours
        differ += ours != theirs
        changed += ours != greedy_tokens
    return {
        "name": f"{name} vs generate(): token-identical outputs",
        "max_abs_diff": differ,
        "ok": differ == 0,
        "cases": len(cases),
        "differs_from_greedy": changed,
        "detail": f"{len(cases) - differ}/{len(cases)} identical ({changed} differ from greedy)",
    }


def score_diff(ours, theirs):
    """Max |difference|, where both being -inf (a removed token) counts as equal."""
    both_removed = torch.isinf(ours) & torch.isinf(theirs) & (ours.sign() == theirs.sign())
    return float(torch.where(both_removed, 0.0, (ours - theirs).abs()).max())


@torch.no_grad()
def check_processors(captioner, images):
    """Each processor on the same real logits (a batch of real prompts, mid-caption) as transformers'."""
    rows, contexts = [], []
    for image, prompt in zip(images, ["", "a photo of a red", "two shapes: in the top left there is a", "", "a"]):
        embeds, input_ids = captioner.inputs(image, prompt)
        rows.append(captioner.decoder(embeds).logits[:, -1].float())
        contexts.append(input_ids[:, -8:])  # the same width for every row
    scores, context = torch.cat(rows), torch.cat(contexts)
    cases = [
        ("temperature 0.7", apply_temperature(scores, 0.7), TemperatureLogitsWarper(0.7)),
        ("top-k 5", apply_top_k(scores, 5), TopKLogitsWarper(5)),
        ("top-p 0.8", apply_top_p(scores, 0.8), TopPLogitsWarper(0.8)),
        (
            "repetition penalty 1.3",
            apply_repetition_penalty(scores, context, 1.3),
            RepetitionPenaltyLogitsProcessor(1.3),
        ),
        ("no-repeat-ngram 2", apply_no_repeat_ngram(scores, context, 2), NoRepeatNGramLogitsProcessor(2)),
    ]
    results = []
    for name, ours, processor in cases:
        worst = score_diff(ours, LogitsProcessorList([processor])(context, scores.clone()))
        results.append(
            {"name": f"{name} vs transformers {type(processor).__name__}", "max_abs_diff": worst, "ok": worst <= 1e-6}
        )
    return results


def run_checks(model="tiny"):
    captioner, images = load_captioner(model), check_images()
    cases = check_cases(images)
    greedy = [captioner.generate(image, prompt, Settings()) for image, prompt in cases]
    searches = [
        check_search(captioner, cases, greedy, library_outputs(captioner, cases, s), name, s)
        for name, s in SEARCH_CHECKS
    ]
    return {"checks": check_processors(captioner, images) + searches}


# ---------------------------------------------------------------- mistakes: can the checks fail?
class AnyCandidateFinishes(BeamRules):
    def may_finish(self, rank, n):
        return True  # a spare candidate (ranked n+1 to 2n) that ends in </s> is kept as a finished text


class NeverStopsEarly(BeamRules):
    def stop(self, s, best_running, worst_finished):
        return False  # runs on to max_new_tokens however many texts have finished


class CountsThePrompt(BeamRules):
    def length(self, new_tokens, prefix_length):
        return prefix_length + new_tokens  # the image's queries and the prompt counted in the length


MISTAKES = {
    "lets any candidate finish, not only the top n": AnyCandidateFinishes(),
    "never stops early": NeverStopsEarly(),
    "divides by the wrong length (the image's queries and the prompt counted)": CountsThePrompt(),
}
BEAM_CHECKS = [(name, s) for name, s in SEARCH_CHECKS if s.num_beams > 1]


def check_cases(images=None):
    """`check`'s (image, prompt) cases: every image with every prompt."""
    return [(image, prompt) for image in images or check_images() for prompt in CHECK_PROMPTS]


def run_mistakes(model="tiny", cases=None):
    """Each mistake of MISTAKES put into the from-scratch beam search, which then runs `check`'s
    beam-search checks (on `check`'s cases unless given): which checks fail, how many (check, case)
    pairs fail, and on which cases (their indices in the list)."""
    captioner, cases = load_captioner(model), cases or check_cases()
    greedy = [captioner.generate(image, prompt, Settings()) for image, prompt in cases]
    library = {name: library_outputs(captioner, cases, s) for name, s in BEAM_CHECKS}  # the same for every mistake
    rows = []
    for mistake, rules in MISTAKES.items():
        failed, caught_on, failures = [], set(), 0
        for name, s in BEAM_CHECKS:
            fails = [  # the check, one case at a time
                not check_search(captioner, [case], [greedy[i]], [library[name][i]], name, s, rules)["ok"]
                for i, case in enumerate(cases)
            ]
            failed += [name] if any(fails) else []
            caught_on |= {i for i, fail in enumerate(fails) if fail}
            failures += sum(fails)
        rows.append({"mistake": mistake, "failed": failed, "failures": failures, "caught_on": sorted(caught_on)})
    return {"cases": len(cases), "checks": [name for name, _ in BEAM_CHECKS], "mistakes": rows}


def print_mistakes(result):
    print(f"{len(result['checks'])} beam-search checks, {result['cases']} cases each\n")
    for row in result["mistakes"]:
        fails = f"{len(row['failed'])} checks fail ({row['failures']} check-case pairs)"
        print(f"{fails}: a beam search that {row['mistake']}")
        for name in row["failed"]:
            print(f"    {name}")
        if row["caught_on"]:
            print(f"    on cases {', '.join(map(str, row['caught_on']))} (their indices in the list of cases)")


# ---------------------------------------------------------------- sweep and repetition
SWEEP = [
    ("greedy", Settings()),
    ("greedy, max_new_tokens 5", Settings(max_new_tokens=5)),
    ("greedy, max_new_tokens 12", Settings(max_new_tokens=12)),
    ("beam search, 3 beams", Settings(num_beams=3)),
    ("beam search, 5 beams, length_penalty 2", Settings(num_beams=5, length_penalty=2.0)),
    ("sampling, temperature 0.7", Settings(do_sample=True, temperature=0.7)),
    ("sampling, temperature 1.5", Settings(do_sample=True, temperature=1.5)),
    ("sampling, temperature 3", Settings(do_sample=True, temperature=3.0)),
    ("sampling, temperature 3, top-k 5", Settings(do_sample=True, temperature=3.0, top_k=5)),
    ("sampling, temperature 3, top-p 0.5", Settings(do_sample=True, temperature=3.0, top_p=0.5)),
    ("greedy, repetition_penalty 1.5", Settings(repetition_penalty=1.5)),
    ("greedy, repetition_penalty 3", Settings(repetition_penalty=3.0)),
]


def timed_decode(captioner, image, prompt, s, seed):
    torch.manual_seed(seed)
    start = time.perf_counter()
    tokens = captioner.generate(image, prompt, s)
    return tokens, time.perf_counter() - start


def sweep(image_path, prompt="", seed=0, model="tiny", max_new_tokens=None):
    """Each setting of SWEEP, writing at most max_new_tokens if given (fewer fit after a long prompt)."""
    image, captioner = load_image(image_path), load_captioner(model)
    rows = []
    for name, s in SWEEP:
        if max_new_tokens is not None:
            s = replace(s, max_new_tokens=min(s.max_new_tokens, max_new_tokens))
        tokens, seconds = timed_decode(captioner, image, prompt, s, seed)
        rows.append(
            {
                "setting": name,
                "settings": asdict(s),
                "text": captioner.text(tokens),
                "tokens": len(tokens),
                "seconds": round(seconds, 4),
            }
        )
    return {"image": str(image_path), "prompt": prompt, "seed": seed, "rows": rows}


def print_sweep(result):
    print(f"image {result['image']}, prompt {result['prompt']!r}, seed {result['seed']}\n")
    for r in result["rows"]:
        print(f"{r['setting']:<38} {r['tokens']:>3} tok  {r['text']}")


def repeated_ngram_rate(tokens, n=3):
    """The share of the text's n-grams that already appeared earlier in it (0: no repetition)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    seen, repeats = set(), 0
    for gram in grams:
        repeats += gram in seen
        seen.add(gram)
    return repeats / len(grams) if grams else 0.0


# The search: settings a learner would really use, none of them forbidding </s>, on the bundled model
# and on an early checkpoint (the same recipe stopped early). A caption repeats when its repeated
# 3-gram rate is above that of the true caption of its scene written the way its prompt asks: two
# objects' phrases share words ("in the top ..."), so a right caption is not always at 0.
LONG = 64  # as many new tokens as fit after the image and the prompt (the tiny decoder reads 64 positions)
PROMPTS = {"": caption, DETAIL_PROMPT: detailed_caption, DETAIL_PROMPT_ZH: detailed_caption}
SEARCH = [
    ("greedy", "", Settings(max_new_tokens=LONG)),
    ("beam search, 5 beams", "", Settings(max_new_tokens=LONG, num_beams=5)),
    ("beam search, 5 beams, length_penalty 2", "", Settings(max_new_tokens=LONG, num_beams=5, length_penalty=2.0)),
    ("sampling, temperature 0.5", "", Settings(max_new_tokens=LONG, do_sample=True, temperature=0.5)),
    ("sampling, temperature 1", "", Settings(max_new_tokens=LONG, do_sample=True)),
    ("greedy", DETAIL_PROMPT, Settings(max_new_tokens=LONG)),
    ("beam search, 5 beams", DETAIL_PROMPT, Settings(max_new_tokens=LONG, num_beams=5)),
    ("sampling, temperature 0.5", DETAIL_PROMPT, Settings(max_new_tokens=LONG, do_sample=True, temperature=0.5)),
    ("greedy", DETAIL_PROMPT_ZH, Settings(max_new_tokens=LONG)),
]
# Repeating by itself: the early checkpoint (the model itself with --early-steps 0), no prompt, greedy,
# often names the first object again for the second. Its remedies, each added to that setting:
NATURAL = ("greedy, free to stop", Settings(max_new_tokens=LONG))
NATURAL_REMEDIES = [
    ("+ repetition_penalty 1.2", {"repetition_penalty": 1.2}),
    ("+ repetition_penalty 1.5", {"repetition_penalty": 1.5}),
    ("+ repetition_penalty 2", {"repetition_penalty": 2.0}),
    ("+ no_repeat_ngram_size 2", {"no_repeat_ngram_size": 2}),
    ("+ no_repeat_ngram_size 3", {"no_repeat_ngram_size": 3}),
    ("+ no_repeat_ngram_size 4", {"no_repeat_ngram_size": 4}),
    ("+ sampling, temperature 0.7", {"do_sample": True, "temperature": 0.7}),
    ("+ beam search, 5 beams", {"num_beams": 5}),
    ("length: max_new_tokens 12", {"max_new_tokens": 12}),
]
# Where the bundled model repeats: a caption asked to be longer than its own (~18 tokens), as a
# learner does for "more detail" (min_new_tokens, LAVIS's min_length): </s> is forbidden until then.
FORCED = ("greedy, at least 30 new tokens (min_new_tokens 30)", Settings(max_new_tokens=48, min_new_tokens=30))
FORCED_REMEDIES = [
    ("+ repetition_penalty 1.2", {"repetition_penalty": 1.2}),
    ("+ repetition_penalty 1.5", {"repetition_penalty": 1.5}),
    ("+ repetition_penalty 2", {"repetition_penalty": 2.0}),
    ("+ no_repeat_ngram_size 2", {"no_repeat_ngram_size": 2}),
    ("+ no_repeat_ngram_size 3", {"no_repeat_ngram_size": 3}),
    ("+ sampling, temperature 0.7", {"do_sample": True, "temperature": 0.7}),
    ("+ sampling, top-p 0.9", {"do_sample": True, "top_p": 0.9}),
    ("+ beam search, 3 beams", {"num_beams": 3}),
    ("+ beam search, 3 beams, no_repeat_ngram_size 3", {"num_beams": 3, "no_repeat_ngram_size": 3}),
    ("length: max_new_tokens 30 (stop at the minimum)", {"max_new_tokens": 30}),
    ("length: min_new_tokens 20", {"min_new_tokens": 20}),
    ("length: min_new_tokens 0 (free to stop)", {"min_new_tokens": 0}),
]
REMOVED = 0.10  # a remedy removes the repetition when at most this share of its captions repeat
KEPT = 0.05  # and keeps the caption right when its exact score is within this of free decoding's
EARLY_STEPS = 150  # of the bundled recipe's 1,800
# a small budget (tests): greedy only in the search, and one remedy of each kind
QUICK_SEARCH = [row for row in SEARCH if row[0] == "greedy"]
QUICK = ("+ repetition_penalty 1.5", "+ no_repeat_ngram_size 3", "length: min_new_tokens 0 (free to stop)")


def early_checkpoint(steps=EARLY_STEPS, progress=True):
    """The bundled model's recipe (curriculum.tiny_blip2, seed 0) run for `steps` steps instead of
    1,800: trained into outputs/week5/ on first use (a few minutes on a CPU), then reused."""
    out = OUTPUTS_DIR / "week5" / f"early-blip2-{steps}"
    config = replace(tiny_blip2.Config(), steps=steps)
    record = out / "training.json"
    if not (record.exists() and json.loads(record.read_text())["provenance"]["config"] == jsonable(config)):
        tiny_blip2.train(out, config, training.Options(device="cpu", precision="fp32", progress=progress))
    return str(out)


def new_token_room(captioner, prompt):
    """How many new tokens fit after the image's queries and the prompt (</s> included)."""
    config = captioner.model.config
    prompt_tokens = len(captioner.tokenizer(prompt, verbose=False).input_ids)
    return config.text_config.max_position_embeddings - config.num_query_tokens - prompt_tokens


def measure(captioner, samples, prompt, s, seed, n_gram, bar):
    """Repetition and correctness of one setting's captions of `samples`: the mean repeated n-gram
    rate, the share of captions that repeat (more than their scene's true caption), the attribute
    scores of week 2 (blip2_caption.attribute_correct) and the share named exactly right."""
    s = replace(s, max_new_tokens=min(s.max_new_tokens, new_token_room(captioner, prompt)))
    truth_of = PROMPTS.get(prompt, caption)
    rates, repeats, right, exact, texts = [], [], {a: [] for a in ATTRIBUTES}, [], []
    for i, sample in enumerate(samples):
        tokens, _ = timed_decode(captioner, sample.image, prompt, s, seed + i)
        text = captioner.text(tokens)
        truth = captioner.tokenizer(truth_of(sample.objects), add_special_tokens=False).input_ids
        rates.append(repeated_ngram_rate(tokens, n_gram))
        repeats.append(rates[-1] > repeated_ngram_rate(truth, n_gram))
        named = shapesworld.parse_caption(text)
        for a in ATTRIBUTES:
            right[a].append(attribute_correct(sample.objects, named, a))
        exact.append(reading_order(named) == reading_order(sample.objects))
        texts.append(text)
        bar.update()
    mean = lambda xs: round(float(np.mean(xs)), 3)  # noqa: E731
    worst = int(np.argmax(rates))
    return {
        "settings": asdict(s),
        "repeated_ngram_rate": mean(rates),
        "repeating": mean(repeats),
        **{a: mean(right[a]) for a in ATTRIBUTES},
        "exact": mean(exact),
        "example": texts[0],
        "worst": texts[worst],
    }


def choose_fix(rows, free):
    """The remedy that removes the repetition (at most REMOVED of its captions repeat) with the
    best exact score, and whether it keeps the caption as right as free decoding (within KEPT)."""
    removed = [r for r in rows if r["repeating"] <= REMOVED]
    if not removed:
        return {"setting": None, "keeps_caption": False}
    best = max(removed, key=lambda r: (r["exact"], np.mean([r[a] for a in ATTRIBUTES]), -r["repeated_ngram_rate"]))
    return {"setting": best["setting"], "keeps_caption": best["exact"] >= free["exact"] - KEPT}


def remedies(captioner, samples, problem, changes, seed, n_gram, bar):
    """The problem's row, then one per remedy (the problem's settings changed), and the fix."""
    name, settings = problem
    rows = [{"setting": name} | measure(captioner, samples, "", settings, seed, n_gram, bar)]
    for remedy, change in changes:
        rows.append(
            {"setting": remedy} | measure(captioner, samples, "", replace(settings, **change), seed, n_gram, bar)
        )
    free = next(r for r in rows if r["settings"]["min_new_tokens"] == 0)  # the first that may stop when done
    repeats = rows[0]["repeating"] > REMOVED
    fix = choose_fix(rows[1:], free) if repeats else {"setting": None, "keeps_caption": True}
    return {"problem": name, "repeats": repeats, "free": free["setting"], "rows": rows, "fix": fix}


def repetition(n=6, seed=0, model="tiny", early_steps=0, quick=True, n_gram=3, progress=True):
    """Search SEARCH on `model` (and an early checkpoint unless early_steps is 0) over n test
    scenes; then the remedies of two problems: the early checkpoint's greedy captions (NATURAL),
    and `model` asked for a longer caption than its own (FORCED). quick: a small budget (greedy
    settings only, the remedies in QUICK). These defaults are a small budget (seconds, the
    notebook's); the command's (--n 100 --early-steps 150, not quick) are the docs' measurement."""
    search_settings = QUICK_SEARCH if quick else SEARCH
    natural_changes, forced_changes = (
        [r for r in changes if r[0] in QUICK] if quick else changes for changes in (NATURAL_REMEDIES, FORCED_REMEDIES)
    )
    samples = shapesworld.generate("test", n, seed)
    checkpoints = {model: model} | ({f"early ({early_steps} steps)": early_steps} if early_steps else {})
    work = n * (len(checkpoints) * len(search_settings) + 2 + len(natural_changes) + len(forced_changes))
    search, problems = [], {}
    with tqdm(total=work, desc="repetition", unit="caption", disable=not progress) as bar:
        for label, name in checkpoints.items():
            captioner = load_captioner(early_checkpoint(name, progress) if label != model else name)
            for setting, prompt, s in search_settings:
                row = measure(captioner, samples, prompt, s, seed, n_gram, bar)
                search.append({"checkpoint": label, "prompt": prompt, "setting": setting} | row)
        # the last checkpoint loaded: the early one, or the model when there is none
        problems["natural"] = {"checkpoint": label} | remedies(
            captioner, samples, NATURAL, natural_changes, seed, n_gram, bar
        )
        captioner = load_captioner(model)
        problems["forced"] = {"checkpoint": model} | remedies(
            captioner, samples, FORCED, forced_changes, seed, n_gram, bar
        )
    return {
        "ngram": n_gram,
        "n": n,
        "seed": seed,
        "model": model,
        "removed_at": REMOVED,
        "kept_within": KEPT,
        "search": search,
        "natural": [
            {"checkpoint": r["checkpoint"], "prompt": r["prompt"], "setting": r["setting"]}
            for r in search
            if r["repeating"] > REMOVED
        ],
        "problems": problems,
    }


def print_repetition(result):
    n = result["ngram"]
    print(
        f"{result['n']} ShapesWorld test scenes. rate: the mean share of a caption's token {n}-grams seen earlier "
        f"in it; repeat: the share of captions above their scene's true caption's rate; color … exact: "
        "attribute scores (week 2)\n"
    )
    head = f"{'rate':>5} {'repeat':>6} {'color':>5} {'shape':>5} {'size':>5} {'pos':>5} {'exact':>5}  "

    def line(r, name):
        scores = " ".join(f"{r[a]:>5.2f}" for a in (*ATTRIBUTES, "exact"))
        print(f"{r['repeated_ngram_rate']:>5.2f} {r['repeating']:>6.2f} {scores}  {name}")

    print("settings a learner would use, </s> allowed:\n" + head + "setting")
    for r in result["search"]:
        line(r, f"{r['checkpoint']}, prompt {r['prompt']!r}, {r['setting']}")
    print(
        f"\nrepeating by itself (more than {result['removed_at']:.2f} of captions): "
        f"{len(result['natural'])} of {len(result['search'])} settings"
    )
    for kind, p in result["problems"].items():
        print(f"\n{kind}: {p['checkpoint']}, {p['problem']}, and each remedy:\n" + head + "setting")
        for r in p["rows"]:
            line(r, r["setting"])
        fix = p["fix"]
        kept = "keeps the caption right" if fix["keeps_caption"] else "does NOT keep the caption right"
        if not p["repeats"]:
            print("it does not repeat here: nothing to fix")
        elif fix["setting"] is None:
            print("no remedy removes the repetition")
        else:
            print(f"fix, by the measurement: {fix['setting']} ({kept})")
        print(f"its worst caption: {p['rows'][0]['worst']}")


# ---------------------------------------------------------------- benchmark
def opt_125m_shaped():
    """A decoder with facebook/opt-125m's sizes and random weights: the cache matters more as the
    model and the text grow, and the tiny model is both small and short."""
    torch.manual_seed(0)
    return Decoder(50272, 768, 12, 12, 3072, 2048).eval()


def tokens_per_second(decoder, prefix, new_tokens, use_cache, eos):
    """Greedy, with </s> forbidden until `new_tokens`, so every run writes exactly that many."""
    s = Settings(max_new_tokens=new_tokens, min_new_tokens=new_tokens, use_cache=use_cache)
    start = time.perf_counter()
    tokens = decode(decoder, prefix, torch.zeros(1, 1, dtype=torch.long), s, eos)
    return len(tokens) / (time.perf_counter() - start)


def bench(repeats=3):
    captioner = load_captioner()
    prefix, _ = captioner.inputs(shapesworld.sample("test", 0).image, "")
    big = opt_125m_shaped()
    cases = [
        ("tiny BLIP-2 decoder (3 layers, 128-d), 48 new tokens", captioner.decoder, prefix, 48, captioner.eos),
        (
            "OPT-125m-shaped decoder (12 layers, 768-d), 32-token prefix, 128 new tokens",
            big,
            torch.randn(1, 32, 768) * 0.02,
            128,
            2,
        ),
    ]
    rows = []
    for name, decoder, start, new, eos in cases:
        tokens_per_second(decoder, start, 4, True, eos)  # warm-up
        cached = max(tokens_per_second(decoder, start, new, True, eos) for _ in range(repeats))
        uncached = max(tokens_per_second(decoder, start, new, False, eos) for _ in range(repeats))
        rows.append(
            {
                "case": name,
                "new_tokens": new,
                "tokens_per_s_cache": round(cached, 1),
                "tokens_per_s_no_cache": round(uncached, 1),
                "speedup": round(cached / uncached, 2),
            }
        )
    return {"benchmark": "KV cache, greedy decoding, batch 1, CPU", "threads": torch.get_num_threads(), "rows": rows}


def print_bench(result):
    print(f"{result['benchmark']} ({result['threads']} threads), best of runs\n")
    for r in result["rows"]:
        print(
            f"{r['case']}\n   {r['tokens_per_s_cache']:>8.1f} tok/s with cache, {r['tokens_per_s_no_cache']:>8.1f} "
            f"without: {r['speedup']:.2f}x"
        )


# ---------------------------------------------------------------- command line
def build_parser():
    parser = cli.Parser(
        prog="python -m stage2_fundamentals.decoding_lab", description=__doc__, formatter_class=cli.RawHelp
    )
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="prove every loop and processor equal to transformers' generate()")
    wrong = sub.add_parser(
        "mistakes", help="put each of three beam-search mistakes into the loop and count the checks that catch it"
    )
    sweep_parser = sub.add_parser("sweep", help="one image, many generation settings, a table of outputs")
    sweep_parser.add_argument("--image", type=cli.InImage(), required=True, help="a PNG or JPEG file")
    loop = sub.add_parser(
        "repetition",
        help="search for settings where the captions repeat; measure each remedy's repetition and correctness",
    )
    loop.add_argument(
        "--n", type=cli.Count(1, 10_000), default=100, help="ShapesWorld test scenes, 1 to 10,000 (default 100)"
    )
    loop.add_argument(
        "--early-steps",
        type=cli.Count(0, 100_000),
        default=EARLY_STEPS,
        help=f"also search an early checkpoint: the bundled recipe run this many steps (default {EARLY_STEPS}), "
        "trained into outputs/week5/ on first use (minutes); 0: skip it",
    )
    loop.add_argument(
        "--quick", action="store_true", help="a small budget: greedy settings only, three remedies (for tests)"
    )
    speed = sub.add_parser("bench", help="tokens/s with and without the KV cache (tiny model)")
    one = sub.add_parser("generate", help="caption one image with any settings, through the from-scratch loops")
    one.add_argument("--image", type=cli.InImage(), required=True, help="a PNG or JPEG file")
    one.add_argument(
        "--max-new-tokens",
        type=cli.Count(1, 1000),
        default=30,
        help="up to 1,000 (default 30); lowered, with a warning, to what the decoder's positions leave after "
        "the image and the prompt",
    )
    one.add_argument("--num-beams", type=cli.Count(1, 32), default=1, help="1 (greedy or sampling) to 32 (default 1)")
    one.add_argument("--sample", action="store_true", help="sample instead of greedy / beam search")
    one.add_argument(
        "--temperature", type=cli.Number(minimum=0.01, maximum=100), default=1.0, help="0.01 to 100; only with --sample"
    )
    one.add_argument("--top-k", type=cli.Count(0, 100_000), default=0, help="only with --sample; 0 (off) to 100,000")
    one.add_argument(
        "--top-p", type=cli.Number(above=0, maximum=1), default=1.0, help="in (0, 1], only with --sample; 1: off"
    )
    one.add_argument(
        "--repetition-penalty",
        type=cli.Number(minimum=0.01, maximum=100),
        default=1.0,
        help="0.01 to 100: > 1 discourages repeats; 1: off",
    )
    one.add_argument("--no-repeat-ngram-size", type=cli.Count(0, 1000), default=0, help="0 (off) to 1,000")
    one.add_argument(
        "--length-penalty",
        type=cli.Number(minimum=-10, maximum=10),
        default=1.0,
        help="beam search, -10 to 10: > 0 favours longer texts",
    )
    one.add_argument("--no-cache", action="store_true", help="re-run the whole sequence every step")
    for p in (sweep_parser, one):
        p.add_argument(
            "--prompt",
            type=cli.Text(blank=True),
            default="",
            help="text the decoder continues (default: none); one that leaves the decoder's positions no room "
            "for new tokens is refused",
        )
    for p in (sweep_parser, loop, one):
        p.add_argument("--seed", type=cli.Seed(), default=0, help="for sampling (default 0)")
    for p in (check, wrong, sweep_parser, loop, one):
        p.add_argument(
            "--model",
            type=cli.Model("blip2"),
            default="tiny",
            help="BLIP-2 OPT: 'tiny' (bundled), a hub id or a folder",
        )
    for p in (wrong, sweep_parser, loop, speed):
        p.add_argument("--out", type=cli.OutFile(".json"), help="also write the result as JSON here")
    for p in (check, wrong, sweep_parser, loop, speed, one):
        p.add_argument("--json", action="store_true")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "check":
        checks.emit(run_checks(args.model), args.json)
        return
    if args.command == "generate":
        s = Settings(
            args.max_new_tokens,
            args.num_beams,
            args.sample,
            args.temperature,
            args.top_k,
            args.top_p,
            args.repetition_penalty,
            args.no_repeat_ngram_size,
            length_penalty=args.length_penalty,
            use_cache=not args.no_cache,
        ).validate()
        s = replace(s, max_new_tokens=fit_new_tokens(args.model, "transformers", [args.prompt], s.max_new_tokens))
        image, captioner = load_image(args.image), load_captioner(args.model)
        tokens, seconds = timed_decode(captioner, image, args.prompt, s, args.seed)
        result = {
            "image": str(args.image),
            "prompt": args.prompt,
            "settings": asdict(s),
            "text": captioner.text(tokens),
            "tokens": len(tokens),
            "seconds": round(seconds, 4),
        }
        cli.emit(result, args.json, lambda r: print(r["text"]))
        return
    if args.command == "sweep":
        room = fit_new_tokens(args.model, "transformers", [args.prompt], max(s.max_new_tokens for _, s in SWEEP))
        result, show = sweep(args.image, args.prompt, args.seed, args.model, room), print_sweep
    elif args.command == "repetition":
        result = repetition(args.n, args.seed, args.model, args.early_steps, args.quick)
        show = print_repetition
    elif args.command == "mistakes":
        result, show = run_mistakes(args.model), print_mistakes
    else:
        result, show = bench(), print_bench
    if args.out:
        cli.write_json(result, args.out)
    cli.emit(result, args.json, show)


if __name__ == "__main__":
    cli.run(main)

"""Two checks on the docs' prose (README.md, docs/*.md, interview/*.md), outside the blocks that
`make docs` writes: no measured number typed by hand, and no comparison far from what measures it.

A typed number is one that looks measured: a decimal (0.97, 1.7, 5e-5), a percentage, or a number
with a unit of time, size, rate or speed-up (48 s, 12 ms, 3 min, 1.7 GB, 640 KiB, 80 requests/s,
2×, 3x faster), or a count of outcomes (6 of 10). Other integers are not caught (steps, sizes,
seeds are mostly settings; a reviewer still reads them). A number that is no measurement stays,
marked right after it (and its unit):

    SD 1.x scales latents by 0.18215<!-- const: SD 1.x's scaling factor, diffusers' config -->
    CLIP starts τ at 0.07<!-- const: CLIP §2.5's initial temperature -->

A measured number instead goes into a value block (a `@value` renderer in curriculum/tables/).
Not scanned: fenced code, `code spans`, links' targets, HTML tags and comments, generated blocks,
section numbers (§2.3) and versions (2.11.0, v1.2).

A comparison is a sentence with one of COMPARISONS ("beats", "needs fewer", "faster than", "the same
as", ...). It must sit in the paragraph of a generated block (table or value), or in the paragraph
just before or after one, so the reader sees the numbers that make it true, or link the test that
checks it (`[...](../tests/test_x.py)` in its sentence); a comparison that is reasoned, not measured,
says so with `<!-- reasoned -->` in its sentence. A question claims nothing.

    python -m curriculum.prose    every hit, page:line; exit 1 if there is one
"""

import re
import sys

from curriculum import REPO_ROOT, cli, docs

CONST = re.compile(r"\s*<!-- const: *\S[^>]*-->")  # a reason is required
TESTED = re.compile(r"\]\([^)\s]*tests/test_\w+\.py[^)\s]*\)")  # a link to the test that checks the claim
REASONED = re.compile(r"<!-- reasoned(?::[^>]*)? -->")  # the why may follow: <!-- reasoned: 8·8·4 vs 64·64·3 -->
# What the scan skips, each replaced by spaces so that offsets and line numbers stay.
FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)
CODE = re.compile(r"`[^`\n]*`")
LINK_TARGET = re.compile(r"\]\([^)\s]*\)")
COMMENT = re.compile(r"<!--(?! const:).*?-->", re.DOTALL)
TAG = re.compile(r"</?[a-zA-Z][^>\n]*>")
# Sections (§2.3), versions (2.11.0, v1.2, Python 3.11, SD 1.5) and model sizes (2.7b) are no measurements.
SOFTWARE = "Python|CUDA|torch|PyTorch|transformers|diffusers|PEFT|LAVIS|Accelerate|ONNX|onnxruntime|opset|Pillow|NumPy"
SOFTWARE += "|Ray|SD|Stable Diffusion|Colab|Ubuntu|Debian"
NOT_MEASURED = re.compile(
    rf"§\s?\d[\d.]*|\bv?\d+\.\d+\.\d+\b|\bv\d[\d.]*|\b\d+(?:\.\d+)?[bBM]\b"
    rf"|(?i:\b(?:{SOFTWARE})(?:\s+is|\s*[<>=~]=?)?\s+\d+\.\w+)"
)

NUMBER = r"\d(?:,\d{3}|\d)*(?:\.\d+)?(?:e-?\d+)?"
UNIT = (  # a unit of time, size, rate or speed-up, after a space or not; a speed-up's × or x right after the number
    r"\s?(?:%|x faster|times faster|ms|µs|s|sec|seconds?|min|minutes?|h|hours?|days?|[kKMGT]i?B|[GT]FLOPs?(?:/s)?"
    r"|(?:requests|req|images|captions|tokens|tok|samples|it|steps)/s)(?![\w/])|×(?!\s?\d)|x\b"
)
COUNT = rf"{NUMBER} (?:out )?of {NUMBER}\b"  # 6 of 10: a count someone made
TYPED = re.compile(rf"(?<![\w@./\-])(?:{COUNT}|{NUMBER}(?:\s?[–-]\s?{NUMBER})?(?:{UNIT})?)")
MEASURED_LOOK = re.compile(rf"\.\d|\de-?\d|(?:{UNIT})$|^{COUNT}$")

COMPARISONS = (  # short on purpose: each phrase almost always states a measured outcome
    r"beats?",
    r"outperforms?",
    r"needs? fewer",
    r"fewer \w+ than",
    r"(?:faster|slower|better|worse|higher|lower|cheaper) than",
    r"(?:more|less) (?:precise|accurate)",
    r"(?:captions|scores|works|learns|performs) best",
    r"the (?:fastest|slowest|cheapest|most accurate)",
    r"equals",
    r"identical to",
    r"the same as",
    r"the same (?:answers|results?|captions?|scores|accuracy)",
    r"bit for bit|bit-identical",
    r"(?:grows|scales) linearly",
)
COMPARISON = re.compile(r"\b(?:" + "|".join(COMPARISONS) + r")\b", re.IGNORECASE)
# where a sentence ends: its stop (not e.g.'s, i.e.'s, vs.'s), or where a list item starts
SENTENCE_END = re.compile(r"(?<!e\.g)(?<!i\.e)(?<!\bvs)[.!?](?=\s|$)|\n\s*(?:[-*]|\d+\.)\s")


def prose_pages():
    return [*docs.pages(), *sorted((REPO_ROOT / "interview").glob("*.md"))]


def blank(text, pattern):
    """text with every match of pattern replaced by spaces (newlines kept, so lines keep their numbers)."""
    return pattern.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def scannable(text):
    """The prose a reader types: generated blocks, code, link targets, tags and comments blanked."""
    for pattern in (FENCE, CODE, docs.BLOCK, LINK_TARGET, COMMENT, TAG, NOT_MEASURED):  # code first: a quoted marker
        text = blank(text, pattern)
    return text


def line_of(text, offset):
    return text.count("\n", 0, offset) + 1


def typed_numbers(text):
    """[(line, number, line's text)] of every number that looks measured and carries no const marker."""
    prose = scannable(text)
    hits = []
    for m in TYPED.finditer(blank(prose, CONST)):  # a marker's reason may hold numbers of its own
        number = m.group(0).strip()
        if not MEASURED_LOOK.search(number) or CONST.match(prose, m.end()):
            continue
        line = line_of(prose, m.start())
        hits.append((line, number, text.split("\n")[line - 1].strip()))
    return hits


def paragraphs(text):
    """[(start, end)] of the runs of text between blank lines."""
    return [(m.start(), m.end()) for m in re.finditer(r"\S(?:.|\n(?!\s*\n))*", text)]


def unbacked_comparisons(text):
    """[(line, phrase, sentence)] of every comparison neither reasoned nor within a paragraph of a
    generated block."""
    unfenced = blank(text, FENCE)
    blocks = [m.span() for m in docs.BLOCK.finditer(blank(unfenced, CODE))]  # not a marker quoted as code
    prose = blank(blank(unfenced, docs.BLOCK), CODE)
    spans = paragraphs(unfenced)
    generated = [any(s < b_end and b_start < e for b_start, b_end in blocks) for s, e in spans]
    hits = []
    for m in COMPARISON.finditer(prose):
        i = next(i for i, (s, e) in enumerate(spans) if s <= m.start() < e)
        if any(generated[max(i - 1, 0) : i + 2]):
            continue
        start, end = spans[i]
        before = [e.end() for e in SENTENCE_END.finditer(text, start, m.start())]
        after = SENTENCE_END.search(text, m.end(), end)
        sentence = text[before[-1] if before else start : after.end() if after else end]
        # reasoned, checked by the test it links, or a question (which claims nothing)
        if REASONED.search(sentence) or TESTED.search(sentence) or sentence.rstrip().endswith("?"):
            continue
        hits.append((line_of(text, m.start()), m.group(0), " ".join(sentence.split())))
    return hits


HELP = {
    "typed_numbers": "a measured number typed in prose: render it from results/ (a @value renderer in "
    "curriculum/tables/weekNN.py and its <!-- value NAME --><!-- /value --> marker), or, if it is no "
    "measurement (a default, a threshold, an image size, a paper's number), mark it right after it: "
    "<!-- const: why, or the paper and section -->",
    "unbacked_comparisons": "a comparison far from the numbers that make it true: move it beside the generated "
    "table or value that shows it (same or adjacent paragraph), make the comparison itself a generated value, "
    "link the test that checks it in the sentence ([the test](../tests/test_x.py)), "
    "or, if it is reasoned rather than measured, put <!-- reasoned --> in the sentence",
}


def failures(check, pages=None):
    """'' when the check finds nothing in the pages; else what it found, 'page:line: what: text' a
    line, under the ways out."""
    lines = []
    for page in pages or prose_pages():
        name = page.relative_to(REPO_ROOT) if page.is_relative_to(REPO_ROOT) else page
        lines += [f"{name}:{line}: {what}: {text}" for line, what, text in check(page.read_text(encoding="utf-8"))]
    return f"{len(lines)} × {HELP[check.__name__]}:\n" + "\n".join(lines) if lines else ""


def build_parser():
    return cli.Parser(prog="python -m curriculum.prose", description=__doc__, formatter_class=cli.RawHelp)


def main(argv=None):
    build_parser().parse_args(argv)
    found = [message for message in map(failures, (typed_numbers, unbacked_comparisons)) if message]
    print("\n\n".join(found) or "no typed number and no unbacked comparison in the docs")
    if found:
        sys.exit(1)


if __name__ == "__main__":
    cli.run(main)

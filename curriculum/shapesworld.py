"""ShapesWorld: a seeded synthetic world of coloured shapes, small enough to learn on a CPU.

Every image holds 1-2 objects, each a (colour, shape, size, position) tuple; position is one
of four quadrants, and two objects never share one. Each image comes with an English and a
Chinese caption (several templates each) and its structured labels. Image `i` of a split is
drawn from its own RNG stream `(seed, split, i)`, so any image can be rebuilt on its own.

A fixed set of colour-shape combinations never appears in `train`: retrieval or captioning on
them (they do appear in `val` and `test`) measures compositional generalisation.

    python -m curriculum.shapesworld export --n 200 --split test --out outputs/gallery
    python -m curriculum.shapesworld grid --n 16 --out outputs/shapesworld.png
"""

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from curriculum import cli

# name -> (RGB, Chinese)
COLORS = {
    "red": ((220, 40, 40), "红色"),
    "orange": ((245, 140, 20), "橙色"),
    "yellow": ((235, 215, 30), "黄色"),
    "green": ((40, 170, 60), "绿色"),
    "blue": ((40, 80, 220), "蓝色"),
    "purple": ((140, 60, 190), "紫色"),
}
SHAPES = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "cross": "十字"}
SIZES = {"small": "小的", "large": "大的"}
# name -> (centre as a fraction of the image side, Chinese)
POSITIONS = {
    "top left": ((0.25, 0.25), "左上方"),
    "top right": ((0.75, 0.25), "右上方"),
    "bottom left": ((0.25, 0.75), "左下方"),
    "bottom right": ((0.75, 0.75), "右下方"),
}
# Never rendered in train: one per colour, each shape twice.
HELDOUT_COMBINATIONS = frozenset(
    {
        ("red", "triangle"),
        ("orange", "cross"),
        ("yellow", "circle"),
        ("green", "square"),
        ("blue", "triangle"),
        ("purple", "circle"),
    }
)
SPLITS = {"train": 0, "val": 1, "test": 2}
RADIUS = {"small": 0.10, "large": 0.19}  # fraction of the image side
JITTER = 0.04  # centre jitter, fraction of the image side
BACKGROUND = (235, 235, 230)


@dataclass(frozen=True, order=True)
class ShapeObject:
    color: str
    shape: str
    size: str
    position: str

    @property
    def heldout(self):
        return (self.color, self.shape) in HELDOUT_COMBINATIONS


@dataclass
class Sample:
    image: Image.Image
    caption_en: str
    caption_zh: str
    objects: tuple

    @property
    def labels(self):
        return {"objects": [asdict(o) for o in self.objects]}

    @property
    def heldout(self):
        return any(o.heldout for o in self.objects)


def label_key(objects):
    """Order-free identity of an image's content: two images match when their keys are equal."""
    return tuple(sorted(objects))


# ---------------------------------------------------------------- captions
def _phrase_en(o):
    return f"a {o.size} {o.color} {o.shape}"


EN_TEMPLATES = (
    lambda o: f"{_phrase_en(o)} in the {o.position}",
    lambda o: f"in the {o.position} there is {_phrase_en(o)}",
    lambda o: f"{_phrase_en(o)} at the {o.position}",
)
ZH_TEMPLATES = (
    lambda o: f"{POSITIONS[o.position][1]}有一个{SIZES[o.size]}{COLORS[o.color][1]}{SHAPES[o.shape]}",
    lambda o: f"一个{SIZES[o.size]}{COLORS[o.color][1]}{SHAPES[o.shape]}在{POSITIONS[o.position][1]}",
)


def describe_en(o):
    """An English phrase for an object whose size and/or position may be None (left unsaid),
    e.g. 'a red circle': the short queries people type."""
    words = " ".join(w for w in (o.size, o.color, o.shape) if w)
    article = "an" if words[0] in "aeiou" else "a"
    return f"{article} {words}" + (f" in the {o.position}" if o.position else "")


def describe_zh(o):
    """The Chinese counterpart of describe_en: '红色圆形', '左上方的小的红色圆形'."""
    words = (SIZES[o.size] if o.size else "") + COLORS[o.color][1] + SHAPES[o.shape]
    return (f"{POSITIONS[o.position][1]}的" if o.position else "") + words


def caption_en(objects, template=0):
    return " and ".join(EN_TEMPLATES[template](o) for o in objects)


def caption_zh(objects, template=0):
    return "，".join(ZH_TEMPLATES[template](o) for o in objects)


def parse_caption(text, colors=COLORS):
    """Recover the objects a caption (English or Chinese) describes; incomplete ones are dropped.

    Later weeks score generated captions with this, so it reads any template, in any order.
    `colors` can add a colour the world does not have (week 7 teaches the models a new one).
    """
    objects = []
    for chunk in re.split(r"\band\b|，|,|和", text.lower()):
        found = {}
        for field, vocab in (("color", colors), ("shape", SHAPES), ("size", SIZES), ("position", POSITIONS)):
            for name, value in vocab.items():
                zh = value if isinstance(value, str) else value[1]
                if re.search(rf"\b{name}\b", chunk) or zh in chunk:
                    found[field] = name
        if len(found) == 4:
            objects.append(ShapeObject(**found))
    return tuple(objects)


# ---------------------------------------------------------------- rendering
def _polygon(shape, cx, cy, r):
    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.75), (cx - r * 0.95, cy + r * 0.75)]
    if shape == "cross":
        a, b = r, r * 0.35
        return [
            (cx - b, cy - a),
            (cx + b, cy - a),
            (cx + b, cy - b),
            (cx + a, cy - b),
            (cx + a, cy + b),
            (cx + b, cy + b),
            (cx + b, cy + a),
            (cx - b, cy + a),
            (cx - b, cy + b),
            (cx - a, cy + b),
            (cx - a, cy - b),
            (cx - b, cy - b),
        ]
    raise ValueError(shape)


def render(objects, size, rng, colors=COLORS):
    """Draw objects on a plain background, with small jitter in place, radius and colour."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for o in objects:
        (fx, fy), _ = POSITIONS[o.position]
        cx, cy = (fx + rng.uniform(-JITTER, JITTER)) * size, (fy + rng.uniform(-JITTER, JITTER)) * size
        r = RADIUS[o.size] * size * rng.uniform(0.9, 1.1)
        rgb = tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in colors[o.color][0])
        if o.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb)
        else:
            draw.polygon(_polygon(o.shape, cx, cy, r), fill=rgb)
    return image


# ---------------------------------------------------------------- sampling
def sample_objects(rng, split):
    n = int(rng.integers(1, 3))
    positions = rng.choice(list(POSITIONS), size=n, replace=False)
    objects = []
    for position in positions:
        while True:
            o = ShapeObject(
                str(rng.choice(list(COLORS))),
                str(rng.choice(list(SHAPES))),
                str(rng.choice(list(SIZES))),
                str(position),
            )
            if split != "train" or not o.heldout:
                break
        objects.append(o)
    return tuple(objects)


def sample(split, index, seed=0, size=64):
    """Image `index` of `split`: the same arguments always give the same pixels and captions."""
    if split not in SPLITS:
        raise cli.UserError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    rng = np.random.default_rng([seed, SPLITS[split], index])
    objects = sample_objects(rng, split)
    image = render(objects, size, rng)
    return Sample(
        image,
        caption_en(objects, int(rng.integers(len(EN_TEMPLATES)))),
        caption_zh(objects, int(rng.integers(len(ZH_TEMPLATES)))),
        objects,
    )


def generate(split, n, seed=0, size=64, progress=False):
    return [sample(split, i, seed, size) for i in tqdm(range(n), desc=f"ShapesWorld {split}", disable=not progress)]


def export(split, n, out, seed=0, size=64):
    """Write n PNGs plus captions.jsonl (one line per image, paths relative to `out`), as one folder
    that appears whole when every file is written (cli.atomic_folder)."""
    with cli.atomic_folder(out) as staging, open(staging / "captions.jsonl", "w", encoding="utf-8") as f:
        for i in tqdm(range(n), desc=f"export {split}"):
            s = sample(split, i, seed, size)
            name = f"{split}_{i:05d}.png"
            s.image.save(staging / name)
            f.write(
                json.dumps(
                    {"path": name, "caption_en": s.caption_en, "caption_zh": s.caption_zh, "labels": s.labels},
                    ensure_ascii=False,
                )
                + "\n"
            )
    return Path(out)


def read_captions(folder):
    """captions.jsonl of an exported folder as {file name: record}; {} when there is none."""
    path = Path(folder) / "captions.jsonl"
    if not path.exists():
        return {}
    records = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return {r["path"]: r for r in records}


def add_world_args(parser, n_default):
    parser.add_argument(
        "--n",
        type=cli.Count(1, 100_000),
        default=n_default,
        help=f"number of images, up to 100,000 (default {n_default})",
    )
    parser.add_argument("--split", choices=list(SPLITS), default="test", help="which split (default test)")
    parser.add_argument("--seed", type=cli.Seed(), default=0, help="world seed (default 0)")
    parser.add_argument(
        "--size", type=cli.Count(16, 1024), default=64, help="image side in pixels, 16-1024 (default 64)"
    )


def build_parser():
    parser = cli.Parser(prog="python -m curriculum.shapesworld", description=__doc__, formatter_class=cli.RawHelp)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export", help="write PNGs and captions.jsonl to a new folder")
    add_world_args(p, 16)
    p.add_argument(
        "--out",
        type=cli.OutFolder(replace=True, markers=("captions.jsonl",)),
        required=True,
        help="folder to write; an earlier export there is replaced, any other folder only with --force",
    )
    cli.add_force_arg(p)
    p = sub.add_parser("grid", help="write one PNG of n samples with their captions")
    add_world_args(p, 16)
    p.add_argument("--out", type=cli.OutFile(".png"), required=True, help="PNG to write")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "export":
        out = export(args.split, args.n, args.out, args.seed, args.size)
        print(f"wrote {args.n} images and captions.jsonl to {out}")
    else:
        from curriculum import viz

        samples = generate(args.split, args.n, args.seed, args.size)
        viz.image_grid([s.image for s in samples], [s.caption_en for s in samples], args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    cli.run(main)

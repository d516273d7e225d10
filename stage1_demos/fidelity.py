"""Prompt fidelity of a generated ShapesWorld image, judged by the bundled tiny CLIP (week 1).

For each object the prompt asks for, the judge looks only at that object's quadrant (the others
painted over with the background) and picks, zero-shot, the best of the 24 phrases
"a <colour> <shape> in the <position>". The object counts as right in colour (or shape) when the
picked phrase names the asked colour (or shape). Isolating the quadrant matters: on real test
images whole-image zero-shot scoring picked the right colour for only ~75% of objects, because a
second shape in the image pulls the scores; isolated, it names the right colour for every object
of 60 real test images and the right shape for 95 of 97 (a test holds colour 1.0, shape >= 0.95).
"""

import itertools

import numpy as np
from PIL import Image, ImageDraw

from curriculum import shapesworld, zoo
from stage1_demos.clip_retrieval import embed_images, embed_texts


def isolate(image, position):
    """The image with every quadrant but `position` painted over with the background colour."""
    image = image.convert("RGB").copy()
    w, h = image.size
    (fx, fy), _ = shapesworld.POSITIONS[position]
    keep_x, keep_y = int(fx > 0.5), int(fy > 0.5)
    draw = ImageDraw.Draw(image)
    for qx, qy in itertools.product((0, 1), (0, 1)):
        if (qx, qy) != (keep_x, keep_y):
            draw.rectangle(
                [qx * w // 2, qy * h // 2, (qx + 1) * w // 2, (qy + 1) * h // 2], fill=shapesworld.BACKGROUND
            )
    return image


class Judge:
    """judge(images, prompts) -> one record per asked object: what was asked, what CLIP saw."""

    CANDIDATES = list(itertools.product(shapesworld.COLORS, shapesworld.SHAPES))

    def __init__(self, device="cpu"):
        self.model, self.processor = zoo.load_clip("tiny", device=device)
        self.phrases = {
            position: embed_texts(
                self.model, self.processor, [f"a {c} {s} in the {position}" for c, s in self.CANDIDATES]
            )
            for position in shapesworld.POSITIONS
        }

    def __call__(self, images, prompts):
        asked = [(i, o) for i, prompt in enumerate(prompts) for o in shapesworld.parse_caption(prompt)]
        if not asked:
            return []
        crops = [isolate(images[i].resize((64, 64), Image.BILINEAR), o.position) for i, o in asked]
        crop_embeddings = embed_images(self.model, self.processor, crops)
        records = []
        for (i, o), e in zip(asked, crop_embeddings):
            color, shape = self.CANDIDATES[int(np.argmax(self.phrases[o.position] @ e))]
            records.append(
                {
                    "image": i,
                    "position": o.position,
                    "asked": f"{o.color} {o.shape}",
                    "heldout": o.heldout,
                    "seen": f"{color} {shape}",
                    "color_ok": color == o.color,
                    "shape_ok": shape == o.shape,
                }
            )
        return records


def fidelity(records):
    """{"color", "shape", "both"}: share of asked objects CLIP saw right; "objects": how many were asked."""
    if not records:
        return {"color": None, "shape": None, "both": None, "objects": 0}
    color = np.array([r["color_ok"] for r in records])
    shape = np.array([r["shape_ok"] for r in records])
    return {
        "color": round(float(color.mean()), 3),
        "shape": round(float(shape.mean()), 3),
        "both": round(float((color & shape).mean()), 3),
        "objects": len(records),
    }

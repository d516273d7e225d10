"""Week 1: CLIP image-text retrieval. Search a folder of images by text or by image.

Why two encoders? Pixels and words are different signals, so CLIP gives each its own tower (a
vision Transformer for images, a text Transformer for captions) and trains both together so
that a matching pair lands close in one shared vector space. Because the towers never look at
each other, a gallery is embedded once (`index`) and every later query costs one encoder pass
plus a dot product against the stored vectors (`search`).

Cosine similarity: cos(a, b) = a.b / (|a| |b|). Every feature vector is L2-normalised
(|v| = 1) as it is made, so cosine similarity is a plain dot product, which is what the FAISS
inner-product index computes.

    python -m stage1_demos.clip_retrieval index --images outputs/week1/gallery --out outputs/week1/index
    python -m stage1_demos.clip_retrieval search --index outputs/week1/index --text "a red circle" --out hits.png
    python -m stage1_demos.clip_retrieval search --index outputs/week1/index --image query.png -k 5 --json
    python -m stage1_demos.clip_retrieval eval --split test --json

`index` and `eval` take --model tiny (bundled, default) or a hub id / folder, e.g.
--model openai/clip-vit-base-patch32; `search` uses the model its index was built with.
"""

import argparse
import json
import sys
from pathlib import Path

import faiss
import numpy as np
import torch
from tqdm import tqdm

from curriculum import cli, shapesworld, viz, zoo
from curriculum.images import load_image, open_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
INDEX_FILE, META_FILE = "index.faiss", "meta.json"


# ---------------------------------------------------------------- embeddings
def l2_normalize(x):
    return x / x.norm(dim=-1, keepdim=True)  # v / |v|, so that a.b = cos(a, b)


@torch.no_grad()
def embed_images(model, processor, images, batch_size=64, progress=False):
    """PIL images -> (N, D) float32 unit vectors from the image tower."""
    chunks = []
    for i in tqdm(range(0, len(images), batch_size), desc="embed images", disable=not progress):
        inputs = processor(images=images[i : i + batch_size], return_tensors="pt").to(model.device)
        features = model.get_image_features(pixel_values=inputs.pixel_values.to(model.dtype)).pooler_output
        chunks.append(l2_normalize(features.float()).cpu())
    return torch.cat(chunks).numpy()


@torch.no_grad()
def embed_texts(model, processor, texts, batch_size=256):
    """Strings -> (N, D) float32 unit vectors from the text tower."""
    chunks = []
    for i in range(0, len(texts), batch_size):
        inputs = processor(text=texts[i : i + batch_size], padding=True, truncation=True, return_tensors="pt").to(
            model.device
        )
        chunks.append(l2_normalize(model.get_text_features(**inputs).pooler_output.float()).cpu())
    return torch.cat(chunks).numpy()


@torch.no_grad()
def embed_texts_zh(model, tokenizer, texts, batch_size=256):
    """Chinese strings -> unit vectors in the English CLIP's space, from the distilled Chinese
    text tower (a CLIPTextModelWithProjection, trained by stage2_fundamentals.crosslingual)."""
    chunks = []
    for i in range(0, len(texts), batch_size):
        inputs = tokenizer(texts[i : i + batch_size], padding=True, truncation=True, return_tensors="pt")
        chunks.append(l2_normalize(model(**inputs.to(model.device)).text_embeds.float()).cpu())
    return torch.cat(chunks).numpy()


def query_language(text, lang="auto"):
    """'zh' if the text has any Chinese character, else 'en'; `lang` other than auto wins."""
    if lang != "auto":
        return lang
    return "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in text) else "en"


# ---------------------------------------------------------------- index
def build_index(images_dir, out, model_name="tiny", device="auto", batch_size=64):
    """Embed every image of a folder into a FAISS inner-product index plus meta.json, written to
    the folder `out` whole (built beside it and swapped in)."""
    images_dir = Path(images_dir)
    files = sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise cli.UserError(f"{images_dir} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    model, processor = zoo.load_clip(model_name, device)
    captions = shapesworld.read_captions(images_dir)
    kept, skipped, vectors = [], [], []
    for i in tqdm(range(0, len(files), batch_size), desc="index images"):
        batch = []
        for path in files[i : i + batch_size]:
            image = open_image(path)
            if image is None:
                print(f"warning: skipping {path}: not a readable image", file=sys.stderr)
                skipped.append(str(path))
            else:
                batch.append(image)
                kept.append(path)
        if batch:
            vectors.append(embed_images(model, processor, batch, batch_size))
    if not kept:
        raise cli.UserError(f"none of the {len(files)} image files in {images_dir} could be read")
    vectors = np.concatenate(vectors)
    index = faiss.IndexFlatIP(vectors.shape[1])  # exact search; score = dot product = cosine
    index.add(vectors)
    meta = {
        "model": model_name if model_name == "tiny" else zoo.resolve(model_name, "clip"),
        "dim": int(vectors.shape[1]),
        "paths": [str(p.resolve()) for p in kept],
        "captions": [captions.get(str(p.relative_to(images_dir)), {}).get("caption_en", "") for p in kept],
        "skipped": skipped,
    }
    with cli.atomic_folder(out) as staging:
        faiss.write_index(index, str(staging / INDEX_FILE))
        (staging / META_FILE).write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")
    return meta


def load_index(index_dir):
    """(FAISS index, meta) of a folder written by `index`; a damaged one is one line, not a traceback."""
    index_dir = Path(index_dir)
    rebuild = f"build it again with `python -m stage1_demos.clip_retrieval index --images DIR --out {index_dir}`"
    try:
        meta = json.loads((index_dir / META_FILE).read_text(encoding="utf-8"))
        index = faiss.read_index(str(index_dir / INDEX_FILE))
    except (OSError, ValueError, RuntimeError):  # unreadable, not JSON or not UTF-8, not a FAISS index
        raise cli.UserError(
            f"the index at {index_dir} is damaged ({META_FILE} or {INDEX_FILE} unreadable): {rebuild}"
        ) from None
    lists_fit = isinstance(meta, dict) and all(isinstance(meta.get(k), list) for k in ("paths", "captions"))
    if not (lists_fit and isinstance(meta.get("model"), str) and len(meta["paths"]) == len(meta["captions"])):
        raise cli.UserError(f"{index_dir / META_FILE} is not what `index` writes: {rebuild}")
    if index.ntotal != len(meta["paths"]):
        raise cli.UserError(
            f"{index_dir}: {INDEX_FILE} holds {index.ntotal} vectors for {len(meta['paths'])} images: {rebuild}"
        )
    try:  # the model it was built with, which embeds the queries: still there, and a CLIP
        cli.Model("clip")(meta["model"])
    except argparse.ArgumentTypeError as e:
        raise cli.UserError(
            f"the index at {index_dir} was built with {meta['model']}, which cannot be used: {e}"
        ) from None
    return index, meta


def warn_if_truncated(tokenizer, text):
    """The text towers read a fixed number of tokens: a longer query is cut, and the learner is told."""
    tokens = len(tokenizer(text, verbose=False).input_ids)
    if tokens > tokenizer.model_max_length:
        print(
            f"warning: the query is {tokens} tokens; the text tower reads the first {tokenizer.model_max_length}",
            file=sys.stderr,
        )


def check_chinese(index_model):
    """Chinese queries go through the Chinese tower distilled into the tiny CLIP's space, no other."""
    if index_model != "tiny":
        raise cli.UserError(
            "Chinese queries need a Chinese text tower distilled into this index's CLIP space; "
            "the bundled tiny-clip-zh fits the tiny CLIP only: index with --model tiny, "
            "or query in English (--lang en)"
        )


def embed_query(clip, text=None, image=None, language="en", clip_zh=None):
    """(1, D) unit vector of one query: a text (through clip_zh's tower when language is 'zh') or a
    PIL image. clip, clip_zh: (model, processor) and (model, tokenizer) as the zoo loads them."""
    model, processor = clip
    if image is not None:
        return embed_images(model, processor, [image])
    if language == "zh":
        warn_if_truncated(clip_zh[1], text)
        return embed_texts_zh(*clip_zh, [text])
    warn_if_truncated(processor.tokenizer, text)
    return embed_texts(model, processor, [text])


def top_hits(index, meta, query, k):
    """The k nearest gallery images to a (1, D) query: [{path, score (cosine), caption}], best first."""
    scores, ids = index.search(query, min(k, index.ntotal))
    return [
        {"path": meta["paths"][i], "score": round(float(s), 4), "caption": meta["captions"][i]}
        for s, i in zip(scores[0], ids[0])
    ]


def query_hits(index, meta, load, text=None, image=None, k=5, lang="auto"):
    """(language, top-k hits) of one query on a loaded index: a text (in its language) or a PIL image.
    load(family) gives the loaded 'clip' or 'clip-zh', asked for after the query is checked."""
    language = query_language(text, lang) if text is not None else None
    if language == "zh":
        check_chinese(meta["model"])
    clip_zh = load("clip-zh") if language == "zh" else None
    return language, top_hits(index, meta, embed_query(load("clip"), text, image, language, clip_zh), k)


def search(index_dir, text=None, image=None, k=5, device="auto", lang="auto"):
    """Top-k gallery images for a text or an image query, with the index's own model. Chinese
    text goes through the Chinese tower distilled into that model's space: the same index serves both."""
    if (text is None) == (image is None):
        raise cli.UserError("give exactly one query: --text or --image")
    index, meta = load_index(index_dir)
    query_image = load_image(image) if image is not None else None

    def load(family):
        return zoo.load_clip(meta["model"], device) if family == "clip" else zoo.load_clip_zh("tiny", device)

    language, results = query_hits(index, meta, load, text, query_image, k, lang)
    query = {"text": text, "lang": language} if text is not None else {"image": str(image)}
    return {"query": query, "results": results}


def save_hits_picture(result, out):
    """The query (its text, or the image itself) followed by its hits and their scores."""
    query = result["query"]
    first = viz.text_tile(f"query: {query['text']}") if "text" in query else open_image(query["image"])
    images = [first] + [open_image(r["path"]) for r in result["results"]]
    captions = ["query" if "text" in query else f"query: {Path(query['image']).name}"]
    captions += [
        f"#{n} ({r['score']:.3f}) {r['caption'] or Path(r['path']).name}" for n, r in enumerate(result["results"], 1)
    ]
    return viz.image_grid(images, captions, out)


# ---------------------------------------------------------------- evaluation
def recall_at_k(similarity, query_keys, gallery_keys, ks=(1, 5, 10)):
    """Share of queries with a correct item among the top k; correct = same ShapesWorld labels.
    None when there is no query (a small gallery may hold no held-out pair, or only those)."""
    if not query_keys:
        return {f"R@{k}": None for k in ks}
    top = np.argsort(-similarity, axis=1, kind="stable")[:, : max(ks)]
    hits = np.array([[gallery_keys[j] == key for j in row] for key, row in zip(query_keys, top)])
    return {f"R@{k}": round(float(hits[:, :k].any(axis=1).mean()), 4) for k in ks}


def evaluate(model_name="tiny", split="test", n=1000, seed=0, device="auto"):
    """Recall@k on n ShapesWorld images of a split, every image and caption in the gallery.

    A retrieved item counts as correct when its objects equal the query's (same labels, any
    jitter). text_to_image and image_to_text use queries whose colour-shape pairs were seen in
    training; heldout_combinations uses the queries with a pair never seen in training.
    """
    model, processor = zoo.load_clip(model_name, device)
    samples = shapesworld.generate(split, n, seed=seed, size=processor.image_processor.crop_size["height"])
    image_vectors = embed_images(model, processor, [s.image for s in samples], progress=True)
    text_vectors = embed_texts(model, processor, [s.caption_en for s in samples])
    return recall_table(samples, image_vectors, text_vectors) | {"model": model_name, "split": split}


def recall_table(samples, image_vectors, text_vectors):
    """Recall@k of text->image and image->text for unit vectors of the samples' images and captions
    (from any model: later weeks pass their own)."""
    n = len(samples)
    keys = [shapesworld.label_key(s.objects) for s in samples]
    heldout = np.array([s.heldout for s in samples])
    seen = ~heldout
    text_to_image = text_vectors @ image_vectors.T  # cos(text_i, image_j) for unit vectors
    seen_keys = [k for k, s in zip(keys, seen) if s]
    heldout_keys = [k for k, h in zip(keys, heldout) if h]
    return {
        "text_to_image": recall_at_k(text_to_image[seen], seen_keys, keys),
        "image_to_text": recall_at_k(text_to_image.T[seen], seen_keys, keys),
        "n": n,
        "n_seen": int(seen.sum()),
        "n_heldout": int(heldout.sum()),
        "heldout_combinations": recall_at_k(text_to_image[heldout], heldout_keys, keys, ks=(1,)),
    }


def rate(value):
    return "n/a" if value is None else f"{value:.3f}"


def print_eval_table(result):
    print(
        f"ShapesWorld {result['split']}: {result['n']} images "
        f"({result['n_seen']} seen combinations, {result['n_heldout']} held out), model {result['model']}"
    )
    print(f"{'direction':<16}{'R@1':>8}{'R@5':>8}{'R@10':>8}")
    for name in ("text_to_image", "image_to_text"):
        r = result[name]
        print(f"{name:<16}" + "".join(f"{rate(r[k]):>8}" for k in ("R@1", "R@5", "R@10")))
    print(f"{'held-out combos':<16}{rate(result['heldout_combinations']['R@1']):>8}   (text->image R@1)")


# ---------------------------------------------------------------- command line
def build_parser():
    parser = cli.Parser(prog="python -m stage1_demos.clip_retrieval", description=__doc__, formatter_class=cli.RawHelp)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="embed a folder of images into a FAISS index")
    p.add_argument(
        "--images",
        type=cli.InFolder(hint="make one with `python -m curriculum.shapesworld export --out DIR`"),
        required=True,
        help="folder of images (captions.jsonl beside them is used)",
    )
    p.add_argument(
        "--out",
        type=cli.OutFolder(replace=True, markers=(META_FILE,)),
        required=True,
        help="index folder to write (index.faiss, meta.json); an earlier index there is replaced, "
        "any other folder only with --force",
    )
    cli.add_force_arg(p)
    p.add_argument(
        "--batch-size", type=cli.Count(1, 1024), default=64, help="images per forward pass (default 64, up to 1024)"
    )
    cli.add_model_args(p, "clip")

    p = sub.add_parser("search", help="text->image or image->image search in an index")
    p.add_argument(
        "--index",
        type=cli.InFolder(INDEX_FILE, META_FILE, hint="build one with `python -m stage1_demos.clip_retrieval index`"),
        required=True,
        help="folder written by `index`",
    )
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument(
        "--text",
        type=cli.Text(),
        help="find images matching this description; past the text tower's length (32 tokens for tiny) "
        "it is cut, with a warning",
    )
    query.add_argument("--image", type=cli.InImage(), help="find images similar to this image file")
    p.add_argument(
        "--lang",
        choices=["auto", "en", "zh"],
        default="auto",
        help="language of --text (default auto: Chinese if it has Chinese characters)",
    )
    p.add_argument("-k", type=cli.Count(1, 1000), default=5, help="number of hits (default 5, up to 1000)")
    p.add_argument("--out", type=cli.OutFile(".png"), help="write a PNG of the query and its hits here")
    cli.add_device_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("eval", help="recall@1/5/10 on ShapesWorld, both directions")
    p.add_argument("--split", choices=["val", "test"], default="test", help="split (default test)")
    p.add_argument(
        "--n",
        type=cli.Count(1, 10_000),
        default=1000,
        help="gallery size (default 1000, up to 10,000); a gallery of n < 10 makes R@10 trivially 1, and one "
        "without held-out (or seen) pairs reports n/a for them",
    )
    p.add_argument("--seed", type=cli.Seed(), default=0, help="ShapesWorld seed (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", type=cli.OutFile(".json"), help="also write the result JSON here")
    cli.add_model_args(p, "clip")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "index":
        meta = build_index(args.images, args.out, args.model, args.device, args.batch_size)
        print(f"indexed {len(meta['paths'])} images into {args.out} (skipped {len(meta['skipped'])} unreadable)")
    elif args.command == "search":
        result = search(args.index, args.text, args.image, args.k, args.device, args.lang)
        if args.out:
            save_hits_picture(result, args.out)
        if args.json:
            cli.print_json(result)
            return
        for n, r in enumerate(result["results"], 1):
            print(f"{n:>2}. {r['score']:.3f}  {r['path']}  {r['caption']}")
        if args.out:
            print(f"picture: {args.out}")
    else:
        result = evaluate(args.model, args.split, args.n, args.seed, args.device)
        if args.out:
            cli.write_json(result, args.out)
        cli.emit(result, args.json, print_eval_table)


if __name__ == "__main__":
    cli.run(main)

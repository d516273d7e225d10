"""Week 1: zero-shot classification with CLIP (the CLIP paper, §3.1), against a linear probe.

CLIP classifies without training a classifier: each class name is written into a prompt, the text
tower embeds it, and an image gets the class whose text embedding is closest, as if the text
embeddings were the weights of a linear layer:

    w_c = t(prompt(c)) / |t(prompt(c))|            p(c | image) = softmax_c(exp(logit_scale) · w_c · v)

Prompt ensembling (§3.1.4): several templates per class, each embedding L2-normalised, averaged,
and the average normalised again, w_c = normalize(mean_k normalize(t(template_k(c)))), so the
classifier no longer hangs on one wording. A linear probe (§3.2) instead trains a logistic
regression on the image features of labelled training images: it needs labels, and it can only
name classes its training set held.

    python -m stage1_demos.clip_zeroshot [--n 600] [--n-train 2000] [--out outputs/week1/zeroshot.json] [--json]

Three tasks on single-object ShapesWorld test images: the colour (6 classes), the shape (4) and
the colour-shape pair (24, of which 6 never appear in training).
"""

import numpy as np
import torch

from curriculum import cli, shapesworld, viz, zoo
from stage1_demos.clip_retrieval import embed_images, embed_texts

# The class phrase goes into each template: what the one-template classifier uses, then the ensemble.
ONE_TEMPLATE = "a {}"
ENSEMBLE = [
    "a {}",
    *(f"a {size} {{}}" for size in shapesworld.SIZES),
    *(f"a {{}} in the {position}" for position in shapesworld.POSITIONS),
    *(f"a {size} {{}} in the {position}" for size in shapesworld.SIZES for position in shapesworld.POSITIONS),
]
TASKS = {  # task -> (class phrase, the class of an object)
    "colour": (lambda c: f"{c} shape", lambda o: o.color),
    "shape": (lambda c: c, lambda o: o.shape),
    "colour-shape": (lambda c: f"{c[0]} {c[1]}", lambda o: (o.color, o.shape)),
}
CLASSES = {
    "colour": list(shapesworld.COLORS),
    "shape": list(shapesworld.SHAPES),
    "colour-shape": [(c, s) for c in shapesworld.COLORS for s in shapesworld.SHAPES],
}


def class_embeddings(model, processor, phrases, templates):
    """(classes, D) zero-shot weights: per class, each template's text embedding normalised, the
    mean over templates, normalised again (CLIP's prompt ensembling)."""
    texts = [t.format(p) for p in phrases for t in templates]
    vectors = embed_texts(model, processor, texts).reshape(len(phrases), len(templates), -1)  # unit vectors
    mean = vectors.mean(axis=1)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def single_object_samples(split, n, seed=0):
    """The first n images of a split that hold exactly one object (drawn in chunks until n are found)."""
    found, start = [], 0
    while len(found) < n:
        chunk = [shapesworld.sample(split, i, seed) for i in range(start, start + 4 * n)]
        found += [s for s in chunk if len(s.objects) == 1]
        start += 4 * n
    return found[:n]


def linear_probe(features, labels, n_classes, weight_decay=1e-3, steps=200):
    """Multinomial logistic regression on fixed features (full batch, L-BFGS, as the paper's
    probes): returns a function from features to class indices."""
    x, y = torch.from_numpy(features), torch.from_numpy(labels)
    torch.manual_seed(0)
    layer = torch.nn.Linear(x.shape[1], n_classes)
    optimizer = torch.optim.LBFGS(layer.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(layer(x), y) + weight_decay * layer.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return lambda f: layer(torch.from_numpy(f)).argmax(dim=1).numpy()


def accuracy(predicted, truth, where=None):
    hits = np.asarray(predicted) == np.asarray(truth)
    return round(float(hits[where].mean() if where is not None else hits.mean()), 4)


def evaluate(model_name="tiny", n=600, n_train=2000, device="auto"):
    model, processor = zoo.load_clip(model_name, device)
    test = single_object_samples("test", n)
    train = single_object_samples("train", n_train)
    test_vectors = embed_images(model, processor, [s.image for s in test], progress=True)
    train_vectors = embed_images(model, processor, [s.image for s in train], progress=True)
    heldout = np.array([s.objects[0].heldout for s in test])
    rows = []
    for task, (phrase, label_of) in TASKS.items():
        classes = CLASSES[task]
        truth = np.array([classes.index(label_of(s.objects[0])) for s in test])
        phrases = [phrase(c) for c in classes]
        one = (test_vectors @ class_embeddings(model, processor, phrases, [ONE_TEMPLATE]).T).argmax(axis=1)
        many = (test_vectors @ class_embeddings(model, processor, phrases, ENSEMBLE).T).argmax(axis=1)
        train_labels = np.array([classes.index(label_of(s.objects[0])) for s in train])
        probe = linear_probe(train_vectors, train_labels, len(classes))(test_vectors)
        groups = {"all": None}
        if task == "colour-shape":  # the pairs training never showed, and the rest
            groups = {"seen pairs": ~heldout, "held-out pairs": heldout}
        for group, where in groups.items():
            if where is not None and not where.any():  # a few images may hold no held-out pair (or only those)
                continue
            rows.append(
                {
                    "task": task,
                    "images": group,
                    "classes": len(classes),
                    "n": int(len(test) if where is None else where.sum()),
                    "one_template": accuracy(one, truth, where),
                    "ensemble": accuracy(many, truth, where),
                    "linear_probe": accuracy(probe, truth, where),
                    "probe_classes_trained": len(set(train_labels.tolist())),
                }
            )
    return {
        "model": model_name,
        "n_test": len(test),
        "n_train_probe": len(train),
        "one_template": ONE_TEMPLATE,
        "ensemble": ENSEMBLE,
        "phrases": {task: phrase(CLASSES[task][0]) for task, (phrase, _) in TASKS.items()},
        "rows": rows,
    }


def picture(result, out):
    groups = {
        f"{r['task']}" + ("" if r["images"] == "all" else f"\n({r['images']})"): {
            "one template": r["one_template"],
            "template ensemble": r["ensemble"],
            "linear probe": r["linear_probe"],
        }
        for r in result["rows"]
    }
    return viz.grouped_bars(groups, out, f"tiny CLIP on {result['n_test']} single-object test images: accuracy")


def print_result(result):
    print(f"{result['n_test']} single-object test images; the probe trained on {result['n_train_probe']} train images")
    print(f"{'task':<14}{'images':<16}{'classes':>8}{'one template':>14}{'ensemble':>10}{'probe':>8}")
    for r in result["rows"]:
        print(
            f"{r['task']:<14}{r['images']:<16}{r['classes']:>8}{r['one_template']:>14.3f}{r['ensemble']:>10.3f}"
            f"{r['linear_probe']:>8.3f}"
        )
    if "picture" in result:
        print(f"picture: {result['picture']}")


def build_parser():
    parser = cli.Parser(prog="python -m stage1_demos.clip_zeroshot", description=__doc__, formatter_class=cli.RawHelp)
    parser.add_argument(
        "--n", type=cli.Count(1, 10_000), default=600, help="single-object test images (default 600, up to 10,000)"
    )
    parser.add_argument(
        "--n-train",
        type=cli.Count(1, 20_000),
        default=2000,
        help="single-object train images for the probe (default 2000, up to 20,000)",
    )
    parser.add_argument(
        "--out", type=cli.OutFile(".json"), help="write the result JSON here, and a bar chart beside it (.png)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    cli.add_model_args(parser, "clip")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    result = evaluate(args.model, args.n, args.n_train, args.device)
    if args.out:
        picture_path = cli.beside(args.out, ".png")
        result["picture"] = str(picture_path)
        with cli.atomic_paths(args.out, picture_path) as (json_temp, picture_temp):  # both or neither
            picture(result, picture_temp)
            cli.write_json(result, json_temp)
    cli.emit(result, args.json, print_result)


if __name__ == "__main__":
    cli.run(main)

"""Week 7's experiment: teach the tiny BLIP-2 a colour it has never seen, three ways.

ShapesWorld has six colours. Here, for this experiment only, every training image holds one pink
object (and maybe one ordinary object), captioned as usual: "a small pink circle in the top left
and ...". The bundled model calls pink something else. Each method gets the same images, the
same order and the same number of steps:

    full fine-tuning   everything BLIP-2 trains (Q-Former, projection, decoder; the ViT stays frozen)
    LoRA, rank r       low-rank updates of the Q-Former's and the decoder's attention q and v (lora.py;
                       --targets picks other layers)
    prefix tuning      N learned virtual tokens in the decoder, nothing else (prefix_tuning.py)

and is scored on new pink images (does the caption name every colour right?) and on the old test
split (did it forget the rest?). Run by `python -m stage2_fundamentals.finetuning_lab experiment`.
"""

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from curriculum import cli, runtime, shapesworld, training, viz, zoo
from curriculum.tiny_blip2 import batch_tokens, caption, reading_order, target_tokens
from curriculum.tiny_clip import pixels
from stage1_demos.blip2_caption import GREEDY, attribute_correct, caption_images
from stage2_fundamentals import decoding, lora
from stage2_fundamentals.decoder import Decoder, decoder_embeds
from stage2_fundamentals.prefix_tuning import Prefix, PrefixedDecoder

NEW_COLOR = "pink"
COLORS = shapesworld.COLORS | {NEW_COLOR: ((240, 110, 190), "粉色")}
STREAMS = {"train": 10, "test": 12}  # random streams apart from ShapesWorld's own splits
BATCH = 32
PREFIX_TOKENS = 16
LEARNING_RATES = {"full": 3e-4, "lora": 3e-3, "prefix": 1e-2}  # each method's usual range


def sample(split, index, seed=0):
    """(image, objects): ShapesWorld objects, the first of them recoloured pink."""
    rng = np.random.default_rng([seed, STREAMS[split], index])
    objects = list(shapesworld.sample_objects(rng, "test"))
    objects[0] = replace(objects[0], color=NEW_COLOR)
    return shapesworld.render(objects, 64, rng, colors=COLORS), tuple(objects)


# ---------------------------------------------------------------- the three methods
class Method:
    """A model being taught: its trainable parameters, its loss on a batch, its captions.
    `module` is what trains (what Accelerate wraps in DDP): the whole model here."""

    def __init__(self, name, model, processor, params, lr, trainable=None):
        self.name, self.model, self.processor, self.params, self.lr = name, model, processor, params, lr
        self.module = model
        self.trainable = trainable if trainable is not None else sum(p.numel() for p in params)

    def loss(self, pixel_values, input_ids, attention_mask, labels):
        return self.module(
            pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask, labels=labels
        ).loss

    def captions(self, images):
        self.model.eval()
        return caption_images(self.model, self.processor, images, [""] * len(images), GREEDY, batch_size=64)


class PrefixMethod(Method):
    """Prefix tuning runs the from-scratch decoder (week 4) and decoding loop (week 5)."""

    def __init__(self, model, processor, virtual_tokens):
        self.decoder = PrefixedDecoder(
            Decoder.from_opt(model.language_model),
            Prefix.for_decoder(Decoder.from_opt(model.language_model), virtual_tokens),
        )
        model.requires_grad_(False)
        super().__init__(
            f"prefix tuning, {virtual_tokens} tokens",
            model,
            processor,
            list(self.decoder.prefix.parameters()),
            LEARNING_RATES["prefix"],
        )
        self.module = self.decoder  # only the prefix trains

    def loss(self, pixel_values, input_ids, attention_mask, labels):
        with torch.no_grad():
            embeds = decoder_embeds(self.model, pixel_values, input_ids)
        logits = self.module(embeds, attention_mask).logits
        # token i predicts token i + 1, as in transformers' causal-LM loss
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)

    @torch.no_grad()
    def captions(self, images):
        eos, out = self.processor.tokenizer.eos_token_id, []
        for image in images:
            inputs = self.processor(images=[image], text=[""], return_tensors="pt")
            embeds = decoder_embeds(self.model, inputs.pixel_values, inputs.input_ids)
            tokens = decoding.decode(self.decoder, embeds, inputs.input_ids, decoding.Settings(max_new_tokens=40), eos)
            out.append(self.processor.tokenizer.decode(tokens, skip_special_tokens=True).strip())
        return out


def full_finetuning():
    model, processor = zoo.load_blip2("tiny", "cpu")
    model.vision_model.requires_grad_(False)  # as in BLIP-2's own training
    return Method(
        "full fine-tuning", model, processor, [p for p in model.parameters() if p.requires_grad], LEARNING_RATES["full"]
    )


def lora_method(r, targets):
    model, processor = zoo.load_blip2("tiny", "cpu")
    lora.add_lora(model, targets, r, alpha=2 * r)
    return Method(
        f"LoRA r={r}", model, processor, [p for p in model.parameters() if p.requires_grad], LEARNING_RATES["lora"]
    )


def lora_with_new_word(r, targets):
    """LoRA with the word's own embedding rows trainable too, and only those (PEFT's
    trainable_token_indices). ' pink' is the byte pieces 'Ġp' 'i' 'n' 'k', which the bundled model
    never writes as a word; their rows were trained all the same, toward "never say this": the output
    layer is tied to them, and every softmax step pushes down every token's logit but the target's.
    On the q and v projections alone, LoRA did not learn to write the word (`make lora`'s first
    table); on every linear layer it did (its lora_all_layers run)."""
    method = lora_method(r, targets)
    tokenizer = method.processor.tokenizer
    rows = tokenizer(f" {NEW_COLOR}", add_special_tokens=False).input_ids
    embedding = method.model.get_input_embeddings().weight.requires_grad_(True)
    only_rows = torch.zeros(embedding.shape[0], 1)
    only_rows[rows] = 1.0
    embedding.register_hook(lambda grad: grad * only_rows)  # no gradient, no Adam step: other rows stay put
    method.name = f"LoRA r={r} + '{NEW_COLOR}' embeddings"
    method.params.append(embedding)
    method.trainable += len(rows) * embedding.shape[1]
    return method


def prefix_method():
    return PrefixMethod(*zoo.load_blip2("tiny", "cpu"), PREFIX_TOKENS)


# ---------------------------------------------------------------- train and score
def train(method, data, steps, seed, options=training.Options()):
    """Same batches for every method: the order depends on the seed only. Returns (losses, seconds)."""
    images, targets = data
    config = {"method": method.name, "steps": steps, "batch_size": BATCH, "lr": method.lr, "seed": seed}
    trainer = training.Trainer(method.name, None, config, options)
    optimizer = torch.optim.AdamW(method.params, lr=method.lr, weight_decay=0.0)
    method.module, optimizer = trainer.prepare(
        method.module.train(), optimizer, training.warmup_cosine(optimizer, steps)
    )
    for _ in trainer.steps(steps):
        idx = trainer.rng.choice(len(targets), BATCH, replace=False)
        input_ids, attention_mask, labels = batch_tokens(method.processor, [""] * BATCH, [targets[i] for i in idx])
        for rows in trainer.micro_batches(BATCH):
            loss = method.loss(
                pixels(images[idx[rows]], method.processor.image_processor).to(trainer.device),
                input_ids[rows].to(trainer.device),
                attention_mask[rows].to(trainer.device),
                labels[rows].to(trainer.device),
            )
            # a mean over target tokens: rows hold different numbers of them
            trainer.backward(trainer.share_of_mean(loss, target_tokens(labels[rows]), target_tokens(labels)))
    method.module = trainer.unwrap()
    return trainer.progress.losses, trainer.progress.seconds


def scores(captions, truths):
    """Share of images whose caption names every object's colour right, and all four attributes."""
    parsed = [shapesworld.parse_caption(c, COLORS) for c in captions]
    return {
        "color": float(np.mean([attribute_correct(t, p, "color") for t, p in zip(truths, parsed)])),
        "exact": float(np.mean([reading_order(t) == reading_order(p) for t, p in zip(truths, parsed)])),
    }


def evaluate(method, new_test, old_test):
    new = scores(method.captions(new_test[0]), new_test[1])
    old = scores(method.captions(old_test[0]), old_test[1])
    return {"new_color": new["color"], "new_exact": new["exact"], "old_color": old["color"], "old_exact": old["exact"]}


def test_sets(n_new=100, n_old=200):
    new = [sample("test", i) for i in range(n_new)]
    old = shapesworld.generate("test", n_old)
    return ([i for i, _ in new], [o for _, o in new]), ([s.image for s in old], [s.objects for s in old])


def adapter_round_trip(method, r, targets, folder, images):
    """Save the LoRA adapter alone, load it into a fresh base model, merge: same captions?"""
    folder = lora.save_adapter(method.model, folder, {"r": r, "alpha": 2 * r, "targets": targets, "base": "tiny"})
    fresh, processor = zoo.load_blip2("tiny", "cpu")
    lora.load_adapter(fresh, folder)
    lora.merge_all(fresh)
    reloaded = Method("reloaded", fresh, processor, [], 0).captions(images)
    size = (folder / "adapter.safetensors").stat().st_size
    return {
        "folder": str(folder),
        "kilobytes": round(size / 1024, 1),
        "same_captions_after_reload_and_merge": reloaded == method.captions(images),
    }


def experiment(
    steps=300,
    ranks=(1, 4, 16),
    targets=lora.BLIP2_TARGETS,
    seed=0,
    out="outputs/week7",
    n_train=3000,
    n_new=100,
    n_old=200,
    options=training.Options(),
):
    """Every method trained in turn (on all processes), scored and written by the main process."""
    if any(r <= 0 for r in ranks):
        raise cli.UserError(f"LoRA ranks must be positive integers, got {' '.join(map(str, ranks))}")
    training.start(options, "lora experiment", [BATCH])
    base = full_finetuning()
    lora.target_linears(base.model, targets)  # a wrong name fails now, not after the first training
    out = Path(out)
    runtime.seed_everything(seed)
    main = training.is_main_process()
    pool = [sample("train", i, seed) for i in tqdm(range(n_train), desc="pink ShapesWorld", disable=not main)]
    data = (np.stack([np.asarray(image) for image, _ in pool]), [caption(objects) for _, objects in pool])
    new_test, old_test = test_sets(n_new, n_old)
    rows = (
        [{"method": "bundled model, untrained", "trainable": 0, "seconds": 0.0} | evaluate(base, new_test, old_test)]
        if main
        else []
    )
    makers = (
        [full_finetuning]
        + [lambda r=r: lora_method(r, targets) for r in ranks]
        + [lambda: lora_with_new_word(max(ranks), targets), prefix_method]
    )
    curves, adapter = {}, None
    for make in makers:
        runtime.seed_everything(seed)
        method = make()
        losses, seconds = train(method, data, steps, seed, options)
        if not main:
            continue
        curves[method.name] = losses
        rows.append(
            {"method": method.name, "trainable": method.trainable, "seconds": round(seconds, 1)}
            | evaluate(method, new_test, old_test)
        )
        if adapter is None and method.name.startswith("LoRA"):
            r = int(method.name.split("=")[1].split()[0])
            adapter = adapter_round_trip(method, r, targets, out / f"adapter-r{r}", new_test[0][:20])
    if not main:
        return None
    result = {
        "steps": steps,
        "batch_size": BATCH,
        "learning_rates": LEARNING_RATES,
        "targets": list(targets),
        "new_color": NEW_COLOR,
        "n_new_test": len(new_test[0]),
        "n_old_test": len(old_test[0]),
        "rows": rows,
        "adapter": adapter,
    }
    plot, loss_plot = out / "new_concept.png", out / "new_concept_loss.png"
    result |= {"plot": str(plot), "loss_plot": str(loss_plot)}
    with cli.atomic_paths(plot, loss_plot, out / "new_concept.json") as (plot_file, loss_file, json_file):
        viz.grouped_bars(
            {
                r["method"]: {
                    "pink images: colours right": r["new_color"],
                    "old test split: colours right": r["old_color"],
                }
                for r in rows
            },
            plot_file,
            f"teaching the tiny BLIP-2 '{NEW_COLOR}': {steps} steps of {BATCH}",
        )
        viz.lines(curves, loss_file, "training loss (same batches)", "step", "caption loss")
        cli.write_json(result, json_file)
    return result


def print_table(result):
    print(
        f"teaching '{result['new_color']}': {result['steps']} steps x {result['batch_size']} images, same batches; "
        f"scored on {result['n_new_test']} new pink images and {result['n_old_test']} old test images\n"
    )
    print(
        f"{'method':<36}{'trainable':>11}{'seconds':>9}{'pink: colours':>15}{'pink: exact':>13}"
        f"{'old: colours':>14}{'old: exact':>12}"
    )
    for r in result["rows"]:
        print(
            f"{r['method']:<36}{r['trainable']:>11,}{r['seconds']:>9.1f}{r['new_color']:>15.3f}"
            f"{r['new_exact']:>13.3f}"
            f"{r['old_color']:>14.3f}{r['old_exact']:>12.3f}"
        )
    if result["adapter"]:
        a = result["adapter"]
        print(
            f"\nLoRA adapter saved alone: {a['folder']} ({a['kilobytes']} kB); reloaded into a fresh base model and "
            f"merged, same captions: {a['same_captions_after_reload_and_merge']}"
        )
    print(f"plots: {result['plot']}, {result['loss_plot']}")

"""Week 7 milestone (fine-tuning): LoRA and prefix tuning from scratch equal PEFT's, adapters
save and merge, and the new-colour experiment runs end to end."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from curriculum import shapesworld, zoo
from curriculum.cli import UserError
from stage2_fundamentals import decoding, finetuning_lab, lora, new_concept, prefix_tuning
from stage2_fundamentals.decoder import Decoder

pytestmark = pytest.mark.week7


@pytest.fixture(scope="module")
def checks():
    return finetuning_lab.run_checks()["checks"]


@pytest.mark.parametrize(
    "part", ["one nn.Linear", "tiny CLIP", "tiny BLIP-2", "prefix tuning, 8 virtual tokens:", "through a 64-d MLP"]
)
def test_each_check_passes(checks, part):
    matching = [c for c in checks if part in c["name"]]
    assert len(matching) >= 2
    for c in matching:
        assert c["ok"], c


def test_the_checks_compare_a_real_update(checks):
    """With B = 0 (or a prefix that changes nothing) ours and PEFT's would agree trivially."""
    updates = [c["update"] for c in checks if "update" in c]
    assert len(updates) == 5 and min(updates) > 1e-3


def test_lora_linear_starts_as_the_base_and_merges_back():
    torch.manual_seed(0)
    base = nn.Linear(12, 6)
    layer = lora.LoRALinear(base, r=2, alpha=4)
    x = torch.randn(3, 12)
    assert torch.equal(layer(x), base(x))  # B = 0
    assert lora.trainable_parameters(layer) == 2 * (12 + 6) and layer.scaling == 2.0
    nn.init.normal_(layer.lora_B.weight)
    before, weight = layer(x), base.weight.clone()
    layer.merge()
    assert torch.allclose(layer(x), before, atol=1e-6) and not torch.equal(base.weight, weight)
    layer.unmerge()
    assert torch.allclose(base.weight, weight, atol=1e-6)


def test_bad_targets_and_ranks_are_clear_errors():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(UserError, match="no nn.Linear named nope in Sequential; its linear layers are: 0"):
        lora.add_lora(model, ["nope"])
    with pytest.raises(UserError, match="rank r must be a positive integer, got 0"):
        lora.add_lora(model, ["0"], r=0)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["experiment", "--ranks", "0"], "argument --ranks: expected a whole number from 1 to 128, got 0"),
        (["experiment", "--ranks", "4", "1000000000"], "argument --ranks: expected a whole number from 1 to 128"),
        (["experiment", "--targets", "attn"], "its linear layers are: dense, fc1, fc2, k_proj, key"),
    ],
)
def test_experiment_bad_input(cli_runner, argv, message):
    code, _, err = cli_runner(finetuning_lab.main, argv)
    assert code == 2 and message in err.strip().splitlines()[-1]


def test_training_moves_only_the_adapter_and_the_new_word_rows():
    method = new_concept.lora_with_new_word(2, lora.BLIP2_TARGETS)
    frozen = {n: p.clone() for n, p in method.model.named_parameters() if ".lora_" not in n}
    pool = [new_concept.sample("train", i) for i in range(40)]
    data = (np.stack([np.asarray(image) for image, _ in pool]), [new_concept.caption(objects) for _, objects in pool])
    new_concept.train(method, data, steps=3, seed=0)
    rows = method.processor.tokenizer(" pink", add_special_tokens=False).input_ids
    for name, before in frozen.items():
        after = dict(method.model.named_parameters())[name]
        if name.endswith("embed_tokens.weight"):
            changed = (after != before).any(dim=1).nonzero().flatten().tolist()
            assert changed == sorted(rows)
        else:
            assert torch.equal(after, before), name


def test_adapter_saves_alone_and_reloads(tmp_path):
    model, processor = zoo.load_blip2("tiny", "cpu")
    lora.add_lora(model, ["q_proj", "v_proj"], r=2, alpha=4)
    finetuning_lab.randomise_b(model)
    settings = {"r": 2, "alpha": 4, "targets": ["q_proj", "v_proj"]}
    folder = lora.save_adapter(model, tmp_path / "adapter", settings)
    assert (folder / "adapter.safetensors").stat().st_size < 100_000
    fresh = zoo.load_blip2("tiny", "cpu")[0]
    assert lora.load_adapter(fresh, folder) == settings
    inputs = processor(images=[shapesworld.sample("test", 0).image], text=[""], return_tensors="pt")
    with torch.no_grad():
        expected = model(**inputs).logits
        assert torch.allclose(fresh(**inputs).logits, expected, atol=1e-5)
        assert torch.allclose(lora.merge_all(fresh)(**inputs).logits, expected, atol=1e-4)
    with pytest.raises(UserError, match="no LoRA adapter in"):
        lora.load_adapter(fresh, tmp_path)


def test_prefixed_decoder_decodes_with_its_prefix_in_the_cache(blip2_model):
    model, processor = blip2_model
    decoder = Decoder.from_opt(model.float().language_model)
    prefixed = prefix_tuning.PrefixedDecoder(decoder, prefix_tuning.Prefix.for_decoder(decoder, 4))
    assert prefixed.new_cache(2).length == 4
    inputs = processor(images=[shapesworld.sample("test", 0).image], text=[""], return_tensors="pt")
    embeds = new_concept.decoder_embeds(model, inputs.pixel_values, inputs.input_ids)
    settings = decoding.Settings(max_new_tokens=6, min_new_tokens=6)
    cached = decoding.decode(prefixed, embeds, inputs.input_ids, settings, processor.tokenizer.eos_token_id)
    uncached = decoding.decode(
        prefixed,
        embeds,
        inputs.input_ids,
        decoding.Settings(max_new_tokens=6, min_new_tokens=6, use_cache=False),
        processor.tokenizer.eos_token_id,
    )
    assert cached == uncached and len(cached) == 6


def test_new_colour_is_rendered_and_read_back():
    image, objects = new_concept.sample("test", 3)
    assert objects[0].color == "pink" and image.size == (64, 64)
    text = "a small pink circle in the top left"
    assert shapesworld.parse_caption(text) == ()  # ShapesWorld itself has no pink
    assert shapesworld.parse_caption(text, new_concept.COLORS)[0].color == "pink"


def test_experiment_end_to_end(tmp_path):
    result = new_concept.experiment(steps=3, ranks=(2,), n_train=100, n_new=6, n_old=6, out=tmp_path)
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == [
        "bundled model, untrained",
        "full fine-tuning",
        "LoRA r=2",
        "LoRA r=2 + 'pink' embeddings",
        "prefix tuning, 16 tokens",
    ]
    assert rows["bundled model, untrained"]["new_color"] == 0  # it has no word for pink
    assert (
        rows["full fine-tuning"]["trainable"]
        > rows["LoRA r=2 + 'pink' embeddings"]["trainable"]
        > rows["LoRA r=2"]["trainable"]
        > 0
    )
    assert result["adapter"]["same_captions_after_reload_and_merge"]
    assert json.loads((tmp_path / "new_concept.json").read_text())["rows"] == result["rows"]
    assert (tmp_path / "new_concept.png").exists() and (tmp_path / "new_concept_loss.png").exists()

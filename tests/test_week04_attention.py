"""Week 4 milestone: attention from scratch equals torch and the tiny models' own layers."""

import json
import math

import pytest
import torch
from transformers import OPTConfig, OPTForCausalLM

from curriculum import shapesworld
from curriculum.checks import record
from curriculum.cli import UserError
from stage2_fundamentals import attention, attention_lab
from stage2_fundamentals.attention import KVCache, MultiHeadAttention, causal_mask, scaled_dot_product_attention
from stage2_fundamentals.decoder import Decoder, blip2_decoder_inputs
from stage2_fundamentals.transformer import EncoderLayer, sinusoidal_positions

pytestmark = pytest.mark.week4


@pytest.fixture(scope="module")
def checks():
    return {c["name"]: c for c in attention_lab.run_checks()["checks"]}


@pytest.mark.parametrize(
    "part",
    [
        "vs torch SDPA",
        "torch.nn.MultiheadAttention",
        "CLIP vision CLIPAttention",
        "CLIP text CLIPAttention",
        "OPTAttention",
        "from-scratch Decoder",
        "TransformerEncoderLayer (post-norm",
        "TransformerDecoderLayer (post-norm",
        "TransformerEncoderLayer (pre-norm",
        "TransformerDecoderLayer (pre-norm",
        "sinusoidal_positions",
    ],
)
def test_each_check_within_tolerance(checks, part):
    matching = [c for name, c in checks.items() if part in name]
    assert matching, f"no check named {part!r}"
    for c in matching:
        assert c["ok"] and c["max_abs_diff"] <= 1e-5, c


def test_the_check_notices_a_wrong_scale():
    """A check that cannot fail proves nothing: forgetting the 1/√d must show."""
    q, k, v = (torch.randn(1, 2, 5, 16) for _ in range(3))
    ours = scaled_dot_product_attention(q * 4, k, v)[0]  # scores 4x too large, as without / √16
    theirs = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert not record("wrong scale", ours, theirs)["ok"]


def test_masks_hide_what_they_should():
    q, k, v = (torch.randn(1, 1, 4, 8) for _ in range(3))
    _, weights = scaled_dot_product_attention(q, k, v, causal=True)
    assert torch.all(weights[0, 0].triu(1) == 0)  # no query sees a later key
    assert torch.allclose(weights.sum(-1), torch.ones(1, 1, 4))
    _, weights = scaled_dot_product_attention(q, k, v, mask=attention.padding_mask([2], 4))
    assert torch.all(weights[..., 2:] == 0)
    # a query with nothing to see gets uniform weights, not NaN that would leak into other rows
    out, _ = scaled_dot_product_attention(q, k, v, mask=torch.zeros(1, 1, 4, 4, dtype=torch.bool))
    assert torch.isfinite(out).all()


def test_causal_mask_is_aligned_to_the_newest_tokens():
    assert causal_mask(1, 4).tolist() == [[True, True, True, True]]  # one new token with a cache of 3
    assert causal_mask(2, 3).tolist() == [[True, True, False], [True, True, True]]


def test_kv_cache_gives_the_same_logits_as_the_whole_sequence(blip2_model):
    model, processor = blip2_model
    decoder = Decoder.from_opt(model.float().language_model)
    image = shapesworld.sample("test", 3).image
    embeds, _, _ = blip2_decoder_inputs(model, processor, [image], ["a photo of"])
    with torch.no_grad():
        full = decoder(embeds).logits
        cache = KVCache(len(decoder.layers))
        first = decoder(embeds[:, :-3], cache=cache).logits
        rest = [decoder(embeds[:, i : i + 1], cache=cache).logits for i in range(embeds.shape[1] - 3, embeds.shape[1])]
    assert cache.length == embeds.shape[1]
    stepped = torch.cat([first] + rest, dim=1)
    assert (stepped - full).abs().max() <= 1e-5


@pytest.mark.parametrize("embed_dim", [32, 16])
def test_decoder_loads_any_pre_layernorm_opt(embed_dim):
    """OPT's layout with random weights, including a word-embedding width that differs from the
    blocks' (project_in / project_out, as in OPT-350m)."""
    torch.manual_seed(0)
    config = OPTConfig(
        vocab_size=100,
        hidden_size=32,
        word_embed_proj_dim=embed_dim,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=40,
    )
    lm = OPTForCausalLM(config).eval()
    ids = torch.randint(4, 100, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    with torch.no_grad():
        ours = Decoder.from_opt(lm)(lm.get_input_embeddings()(ids), mask).logits
        theirs = lm(input_ids=ids, attention_mask=mask).logits
    assert (ours - theirs)[mask.bool()].abs().max() <= 1e-5


def test_post_layernorm_opt_is_refused_with_advice():
    lm = OPTForCausalLM(
        OPTConfig(
            vocab_size=50,
            hidden_size=16,
            ffn_dim=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            do_layer_norm_before=False,
        )
    )
    with pytest.raises(UserError, match="pre-LayerNorm"):
        Decoder.from_opt(lm)


def test_from_torch_and_hf_copy_weights():
    mha = torch.nn.MultiheadAttention(16, 2, batch_first=True)
    ours = MultiHeadAttention.from_torch(mha)
    assert torch.equal(ours.k_proj.weight, mha.in_proj_weight[16:32])
    assert ours.heads == 2 and ours.head_dim == 8


def test_from_torch_copies_a_layer_without_biases():
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(16, 2, bias=False, batch_first=True).eval()
    ours = MultiHeadAttention.from_torch(mha)
    assert ours.q_proj.bias is None and ours.out_proj.bias is None
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], mha(x, x, x)[0], atol=1e-6, rtol=0)


def test_check_json_shape(cli_runner):
    code, out, _ = cli_runner(attention_lab.main, ["check", "--json"])
    result = json.loads(out)
    assert code == 0 and len(result["checks"]) == 17
    assert all(set(c) == {"name", "max_abs_diff", "ok"} for c in result["checks"])


def test_show_draws_cls_and_decoder_attention(tmp_path, cli_runner):
    image = tmp_path / "in.png"
    shapesworld.sample("test", 1).image.save(image)
    code, out, _ = cli_runner(
        attention_lab.main, ["show", "--image", str(image), "--out", str(tmp_path / "a.png"), "--json"]
    )
    result = json.loads(out)
    assert code == 0 and (tmp_path / "a.png").stat().st_size > 10_000
    assert result["out"] == str(tmp_path / "a.png")  # the file it names is the file it wrote
    assert "circle" in result["caption"] and len(result["cls_peak_patch"]) == 4


def test_missing_image_is_a_clear_error(tmp_path, cli_runner):
    code, _, err = cli_runner(attention_lab.main, ["show", "--image", str(tmp_path / "nope.png")])
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: argument --image: no file at")


def test_show_refuses_what_it_would_write_elsewhere_or_cannot_fit(tmp_path, cli_runner):
    """`--out X` once wrote X.png and printed X; a prompt past the decoder's 64 positions was an
    IndexError after the models loaded. Both are one line now, and nothing is written."""
    image = tmp_path / "in.png"
    shapesworld.sample("test", 1).image.save(image)
    code, _, err = cli_runner(attention_lab.main, ["show", "--image", str(image), "--out", str(tmp_path / "X")])
    assert code == 2 and "should end in .png" in err
    long_prompt = "a red circle " * 20
    argv = ["show", "--image", str(image), "--prompt", long_prompt, "--out", str(tmp_path / "a.png")]
    code, _, err = cli_runner(attention_lab.main, argv)
    assert code == 2 and err.count("\n") == 1 and "the prompt is 62 tokens and this model reads 64 positions" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


def test_layer_order_matters():
    """The encoder check can fail: the pre-norm order on the post-norm layer's weights is far off."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True).eval()
    x = torch.randn(2, 5, 32)
    ours = EncoderLayer.from_torch(layer)
    with torch.no_grad():
        assert record("post", ours(x), layer(x))["ok"]
        ours.attn_block.norm_first = ours.ff_block.norm_first = True
        assert not record("pre on post", ours(x), layer(x))["ok"]


def test_positions_follow_the_paper():
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(same), at a few hand-picked entries."""
    pe = sinusoidal_positions(100, 16)
    assert pe[0, 0::2].abs().max() == 0 and (pe[0, 1::2] == 1).all()
    assert pe[7, 2].item() == pytest.approx(math.sin(7 / 10000 ** (2 / 16)), abs=1e-6)
    assert pe[7, 3].item() == pytest.approx(math.cos(7 / 10000 ** (2 / 16)), abs=1e-6)

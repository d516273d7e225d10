"""Week 5 milestone: the from-scratch decoding loops give generate()'s tokens on the tiny BLIP-2."""

import json

import pytest
import torch
from transformers import OPTConfig, OPTForCausalLM

from curriculum import shapesworld
from interview import star
from stage2_fundamentals import decoding, decoding_lab
from stage2_fundamentals.decoder import Decoder
from stage2_fundamentals.decoding import Settings, decode
from stage2_fundamentals.decoding_lab import repeated_ngram_rate

pytestmark = pytest.mark.week5


@pytest.fixture(scope="module")
def checks():
    return decoding_lab.run_checks()["checks"]


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "test_00001.png"
    shapesworld.sample("test", 1).image.save(path)
    return path


@pytest.mark.parametrize("processor", ["temperature", "top-k", "top-p", "repetition penalty", "no-repeat-ngram"])
def test_each_processor_equals_transformers(checks, processor):
    (c,) = [c for c in checks if c["name"].startswith(processor)]
    assert c["ok"] and c["max_abs_diff"] <= 1e-6, c


@pytest.mark.parametrize("search", [name for name, _ in decoding_lab.SEARCH_CHECKS])
def test_each_search_is_token_identical_to_generate(checks, search):
    (c,) = [c for c in checks if c["name"].startswith(search + " vs")]
    assert c["ok"] and c["max_abs_diff"] == 0 and c["cases"] == 20, c


def test_the_search_checks_can_fail(checks):
    """Beam search, length penalty and sampling must change some outputs, or matching generate()
    would prove nothing beyond greedy."""
    changed = {c["name"].split(" vs")[0]: c["differs_from_greedy"] for c in checks if "cases" in c}
    assert changed["greedy"] == 0
    assert changed["beam search, 3 beams"] > 0
    assert changed["beam search, 4 beams, length_penalty 2"] > 0
    assert changed["sampling (T 1.3, top-k 20, top-p 0.9), same seed"] > 0


def test_each_beam_search_mistake_fails_a_check():
    """The checks can fail: each mistake of decoding_lab.MISTAKES, put into the beam search, makes at
    least one of `check`'s beam-search checks differ from generate() on the first 12 of its 20 cases
    (the reference run over all 20, results/week5/mistakes.json, first catches them on cases 3, 1
    and 9; 12 cases instead of 20 save `make test` about 10 s)."""
    result = decoding_lab.run_mistakes(cases=decoding_lab.check_cases()[:12])
    assert [row["mistake"] for row in result["mistakes"]] == list(decoding_lab.MISTAKES)
    assert result["cases"] == 12 and result["checks"] == [name for name, _ in decoding_lab.BEAM_CHECKS]
    for row in result["mistakes"]:
        assert row["failed"] and row["failures"] >= len(row["failed"]) and row["caught_on"], row


def test_searches_on_a_random_opt_with_its_own_generate():
    """Any pre-LayerNorm OPT, not just the tiny one: greedy and beam search on random weights."""
    torch.manual_seed(0)
    lm = OPTForCausalLM(
        OPTConfig(
            vocab_size=60,
            hidden_size=32,
            word_embed_proj_dim=16,
            ffn_dim=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
            bos_token_id=2,
            eos_token_id=2,
            pad_token_id=1,
        )
    ).eval()
    decoder = Decoder.from_opt(lm)
    ids = torch.tensor([[2, 10, 20, 30]])
    for s in [Settings(max_new_tokens=12), Settings(max_new_tokens=12, num_beams=3, length_penalty=0.0)]:
        ours = decode(decoder, decoder.embed_tokens(ids), ids, s, eos=2)
        theirs = lm.generate(ids, attention_mask=torch.ones_like(ids), **s.generate_kwargs())[0, 4:].tolist()
        assert ours == theirs[: len(ours)] and len(ours) == len(theirs)


def test_processors_by_hand():
    scores = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    assert decoding.apply_top_k(scores, 2).isinf().tolist() == [[False, False, True, True]]
    # probabilities ≈ 0.64, 0.24, 0.09, 0.03: top-p 0.7 keeps the first two
    assert decoding.apply_top_p(scores, 0.7).isinf().tolist() == [[False, False, True, True]]
    penalised = decoding.apply_repetition_penalty(scores, torch.tensor([[0, 3]]), 2.0)
    assert penalised.tolist() == [[1.0, 1.0, 0.0, -2.0]]
    banned = decoding.apply_no_repeat_ngram(scores, torch.tensor([[1, 2, 1]]), 2)  # "1 2" seen, now after 1
    assert banned.isinf().tolist() == [[False, False, True, False]]


def test_repeated_ngram_rate():
    assert repeated_ngram_rate([1, 2, 3, 4, 5]) == 0
    assert repeated_ngram_rate([1, 2, 3, 1, 2, 3]) == 0.25  # 4 trigrams, "1 2 3" seen again
    assert repeated_ngram_rate([7, 7, 7, 7, 7], n=2) == 0.75


def test_repetition_search_and_fix_measured(cli_runner, tmp_path):
    """The small budget of `make week5`'s measurement: no greedy setting of the bundled model
    repeats by itself; asked for a longer caption, most captions repeat; no-repeat-n-gram removes
    it by construction; the chosen fix removes it and keeps the captions as right as free decoding
    (docs/week05.md)."""
    argv = ["repetition", "--n", "8", "--quick", "--early-steps", "0", "--json", "--out", str(tmp_path / "r.json")]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batch-1 decoding of a 128-wide model: threads only wait on each other on 2 busy cores
    try:
        code, out, _ = cli_runner(decoding_lab.main, argv)
    finally:
        torch.set_num_threads(threads)
    result = json.loads(out)
    assert code == 0 and json.loads((tmp_path / "r.json").read_text()) == result
    assert [r["setting"] for r in result["search"]] == ["greedy"] * len(decoding_lab.QUICK_SEARCH)
    assert result["natural"] == [] and not result["problems"]["natural"]["repeats"]  # the bundled model stops
    forced = result["problems"]["forced"]
    rows = {r["setting"]: r for r in forced["rows"]}
    problem, free = rows[forced["problem"]], rows[forced["free"]]
    assert forced["repeats"] and problem["repeating"] >= 0.75 and problem["repeated_ngram_rate"] > 0.1
    assert rows["+ no_repeat_ngram_size 3"]["repeated_ngram_rate"] == 0
    fix = rows[forced["fix"]["setting"]]
    assert fix["repeating"] <= decoding_lab.REMOVED < problem["repeating"]
    assert fix["repeated_ngram_rate"] < problem["repeated_ngram_rate"]
    assert fix["exact"] >= free["exact"] - decoding_lab.KEPT and forced["fix"]["keeps_caption"]
    assert fix["exact"] > problem["exact"]  # the loop names objects the image lacks: the fix must undo that
    story = star.repetition_story(result)
    assert f"{problem['repeating']:.2f} of captions repeat" in story and forced["fix"]["setting"] in story


def test_choose_fix_needs_the_repetition_removed():
    row = {"color": 1, "shape": 1, "size": 1, "position": 1, "repeated_ngram_rate": 0.3}
    rows = [
        row | {"setting": "a", "repeating": 0.5, "exact": 0.9},
        row | {"setting": "b", "repeating": 0, "exact": 0.4},
    ]
    assert decoding_lab.choose_fix(rows, {"exact": 0.9}) == {"setting": "b", "keeps_caption": False}
    assert decoding_lab.choose_fix(rows[:1], {"exact": 0.9}) == {"setting": None, "keeps_caption": False}


def test_sweep_table(cli_runner, image_file):
    code, out, _ = cli_runner(decoding_lab.main, ["sweep", "--image", str(image_file), "--json"])
    rows = {r["setting"]: r for r in json.loads(out)["rows"]}
    assert code == 0 and len(rows) == len(decoding_lab.SWEEP)
    assert rows["greedy, max_new_tokens 5"]["tokens"] == 5
    assert "green cross" in rows["greedy"]["text"] and "red circle" in rows["greedy"]["text"]  # test image 1's two
    assert rows["sampling, temperature 3"]["text"] != rows["greedy"]["text"]


def test_generate_json(cli_runner, image_file):
    code, out, _ = cli_runner(decoding_lab.main, ["generate", "--image", str(image_file), "--num-beams", "3", "--json"])
    result = json.loads(out)
    assert code == 0 and set(result) == {"image", "prompt", "settings", "text", "tokens", "seconds"}
    assert result["settings"]["num_beams"] == 3 and "green cross" in result["text"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--image", "missing.png"], "argument --image: no file at 'missing.png'"),
        (["--temperature", "-1", "--sample"], "argument --temperature: expected a finite number from 0.01 to 100"),
        (["--temperature", "1e-300", "--sample"], "argument --temperature: expected a finite number from 0.01"),
        (["--top-p", "0", "--sample"], "argument --top-p: expected a finite number above 0 to 1"),
        (["--top-p", "1.5", "--sample"], "argument --top-p: expected a finite number above 0 to 1"),
        (["--num-beams", "0"], "argument --num-beams: expected a whole number from 1 to 32"),
        (["--num-beams", "1000000000"], "argument --num-beams: expected a whole number from 1 to 32"),
        (["--repetition-penalty", "nan"], "argument --repetition-penalty: expected a finite number"),
        (["--length-penalty", "nan"], "argument --length-penalty: expected a finite number"),
        (["--num-beams", "3", "--sample"], "beam search here is deterministic"),
        # the image's 8 queries + the prompt (62 tokens) leave none of the tiny decoder's 64 positions
        (["--prompt", "a red circle " * 20], "the prompt is 62 tokens and this model reads 64 positions"),
    ],
)
def test_bad_input_is_a_clear_error(cli_runner, image_file, argv, message):
    argv = ["generate"] + (argv if "--image" in argv else ["--image", str(image_file)] + argv)
    code, _, err = cli_runner(decoding_lab.main, argv)
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_more_new_tokens_than_fit_are_lowered_with_a_warning(cli_runner, image_file):
    """Past the decoder's 64 positions OPT has no position embedding: an IndexError mid-caption.
    The 8 image queries and the start token leave 55 for new tokens."""
    argv = ["generate", "--image", str(image_file), "--max-new-tokens", "60", "--json"]
    code, out, err = cli_runner(decoding_lab.main, argv)
    result = json.loads(out)
    assert code == 0 and err.count("\n") == 1 and "warning: only 55 new tokens fit" in err
    assert result["settings"]["max_new_tokens"] == 55

"""Week 6: the learning-rate sweep of the BLIP-2 compliance fine-tune, on a tiny budget."""

import json
import math

import pytest

from curriculum import tiny_blip2_compliance as compliance
from curriculum import training
from stage3_moderation import blip2_lr_sweep

pytestmark = pytest.mark.week6
QUIET = training.Options(progress=False)


def test_the_sweep_runs_the_compliance_fine_tune_step_for_step(tmp_path):
    """The probe (eval mode, no random draws) leaves the run as tiny_blip2_compliance.train's."""
    config = compliance.Config(steps=3, batch_size=4, pool=8, lr=1e-3)
    probe = blip2_lr_sweep.probe_set(8)
    _, _, probed = blip2_lr_sweep.fine_tune(config, probe, every=1, options=QUIET)
    plain = compliance.train(tmp_path / "model", config, QUIET)
    assert probed.progress.losses == plain.progress.losses
    assert [step for step, _ in probed.probed] == [0, 1, 2, 3]


def test_a_too_large_rate_ends_worse_than_a_moderate_one(cli_runner, tmp_path, monkeypatch):
    """12 steps × 8 through the command: at 1e-2 the held-out answer loss jumps above where it started
    and the run ends worse, in training and held-out loss, than at 1e-4 (measured; the full sweep is
    docs/week06.md's). The JSON and its picture are written together."""
    few = blip2_lr_sweep.probe_set(32)
    monkeypatch.setattr(blip2_lr_sweep, "probe_set", lambda n: few)  # the test's time: a smaller probe
    out = tmp_path / "lr.json"
    argv = ["--steps", "12", "--rates", "1e-2", "1e-4", "--batch-size", "8", "--pool", "16", "--n", "40"]
    code, stdout, _ = cli_runner(blip2_lr_sweep.main, [*argv, "--warmup", "on", "--json", "--out", str(out)])
    assert code == 0
    result = json.loads(stdout)
    assert json.loads(out.read_text()) == result and out.with_suffix(".png").stat().st_size > 0
    assert [(row["lr"], row["warmup"]) for row in result["rows"]] == [(1e-4, True), (1e-2, True)]
    for row in result["rows"]:
        assert [step for step, _ in row["heldout_loss"]] == [0, 3, 6, 9, 12]
        assert all(math.isfinite(x) for _, x in row["heldout_loss"]) and len(row["train_loss_by_window"]) == 4
        assert set(row["categories"]) == set(blip2_lr_sweep.QUESTIONS)
        assert all(0 <= c["auc"] <= 1 for c in row["categories"].values() if c["auc"] is not None)
    slow, fast = result["rows"]
    assert slow["heldout_first"] == fast["heldout_first"]  # the same bundled model, the same questions
    assert max(x for _, x in fast["heldout_loss"]) > fast["heldout_first"]
    assert fast["heldout_final"] > slow["heldout_final"] and fast["final_loss"] > slow["final_loss"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch-size", "16", "--pool", "8"], "make the pool at least as large as the batch"),
        (["--rates", "0"], "expected a finite number from 1e-07 to 1.0"),
        (["--steps", "2"], "expected a whole number from 4"),
        (["--out", "x.png"], ".json"),
    ],
)
def test_bad_input_is_one_line(cli_runner, tmp_path, argv, message):
    code, _, err = cli_runner(blip2_lr_sweep.main, ["--out", str(tmp_path / "lr.json"), *argv])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # nothing written

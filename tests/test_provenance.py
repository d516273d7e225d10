"""Provenance of the bundled checkpoints: each is what today's code makes with the command `make
tiny-models` runs, and the check notices every way it could stop being so."""

import json
import shutil
import subprocess
import sys

import pytest

from curriculum import MODELS_DIR, REPO_ROOT, provenance

pytestmark = pytest.mark.week1


def test_every_bundled_checkpoint_is_what_todays_code_makes():
    assert provenance.problems() == [], "remake them (make tiny-models) or declare the change unaffecting them"


def test_every_bundled_checkpoint_is_made_by_make_tiny_models():
    assert sorted(provenance.make_commands()) == sorted(provenance.bundled())


@pytest.fixture
def copy(tmp_path):
    """tiny-clip-zh (the smallest) alone in a models folder of its own, with the Makefile and the declarations."""
    models = tmp_path / "models"
    shutil.copytree(MODELS_DIR / "tiny-clip-zh", models / "tiny-clip-zh")
    makefile, declarations = tmp_path / "Makefile", tmp_path / "unaffected.json"
    shutil.copyfile(REPO_ROOT / "Makefile", makefile)
    if provenance.DECLARATIONS.exists():
        shutil.copyfile(provenance.DECLARATIONS, declarations)
    return models, makefile, declarations


def edit_training(models, change):
    path = models / "tiny-clip-zh" / "training.json"
    record = json.loads(path.read_text())
    change(record["provenance"])
    path.write_text(json.dumps(record))


def found(copy):
    models, makefile, declarations = copy
    return provenance.problems(models, makefile, declarations)


def test_the_copy_is_clean(copy):
    assert found(copy) == []


def test_a_changed_module_is_caught_until_remade_or_declared(copy, monkeypatch):
    models, _, declarations = copy
    edit_training(models, lambda p: p["code"].update({"curriculum/viz.py": "0" * 64}))  # trained on another viz.py
    assert any("curriculum/viz.py has changed" in line for line in found(copy))
    monkeypatch.setattr(provenance, "DECLARATIONS", declarations)
    entry = provenance.declare("curriculum/viz.py", "plots only", models_dir=models, declarations=declarations)
    assert entry["checkpoints"] == ["tiny-clip-zh"] and entry["sha256"] == provenance.file_sha256(
        REPO_ROOT / "curriculum/viz.py"
    )
    assert found(copy) == []
    # the declaration names today's file: the next change is caught again
    declared = json.loads(declarations.read_text())
    next(d for d in declared if d["file"] == "curriculum/viz.py")["sha256"] = "1" * 64
    declarations.write_text(json.dumps(declared))
    assert any("curriculum/viz.py has changed" in line for line in found(copy))


def test_changed_weights_a_remade_input_and_another_config_are_caught(copy):
    models, makefile, _ = copy
    edit_training(models, lambda p: p.update(weights="0" * 64))
    assert any("not the ones its training wrote" in line for line in found(copy))
    edit_training(models, lambda p: p.update(weights=provenance.weights_sha256(models / "tiny-clip-zh")))
    edit_training(models, lambda p: p["inputs"].update({"data/models/tiny-clip": "0" * 64}))
    assert any("tiny-clip was remade" in line for line in found(copy))
    edit_training(models, lambda p: p["inputs"].clear())
    makefile.write_text(makefile.read_text().replace("tiny-clip-zh --seed 0", "tiny-clip-zh --seed 1"))
    assert any("now runs" in line for line in found(copy))
    edit_training(models, lambda p: p.update(command=[*p["command"][:-2], "1", "--force"]))
    assert any("config has changed" in line for line in found(copy)), "the record still says seed 0"


def test_compare_tells_identical_from_different(tmp_path):
    shutil.copytree(MODELS_DIR / "tiny-clip-zh", tmp_path / "same")
    assert provenance.compare(MODELS_DIR / "tiny-clip-zh", tmp_path / "same")["identical"]
    from safetensors.torch import load_file, save_file

    weights = load_file(tmp_path / "same" / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1e-3
    save_file(weights, tmp_path / "same" / "model.safetensors")
    result = provenance.compare(MODELS_DIR / "tiny-clip-zh", tmp_path / "same")
    assert not result["identical"] and result["max_abs_diff"] == pytest.approx(1e-3, rel=1e-2)


def test_each_record_names_the_trainer_that_ran_as_main():
    for name, training in provenance.bundled().items():
        made = training["provenance"]
        assert made["command"][0].replace(".", "/") + ".py" in made["code"], name


def test_a_trainer_run_with_python_m_records_its_own_module(tmp_path):
    out = tmp_path / "zh"
    args = ["train", "--out", str(out), "--steps", "1", "--batch-size", "2", "--pool", "4"]
    proc = subprocess.run(
        [sys.executable, "-m", "stage2_fundamentals.crosslingual", *args], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    made = json.loads((out / "training.json").read_text())["provenance"]
    assert made["command"] == ["stage2_fundamentals.crosslingual", *args]
    assert {"stage2_fundamentals/crosslingual.py", "curriculum/training.py"} <= made["code"].keys()
    assert made["inputs"] == {"data/models/tiny-clip": provenance.weights_sha256(MODELS_DIR / "tiny-clip")}
    assert made["weights"] == provenance.weights_sha256(out)

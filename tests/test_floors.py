"""The floors in pyproject.toml are versions an environment here tested: each is the version that
requirements-colab.txt pins, and `make colab-test` runs the weeks' tests and the notebooks on exactly
those pins in .venv-colab (Colab's own library versions). Marked `notebooks` so that it runs there
too, where it also checks that what is installed is what is pinned."""

import importlib.metadata
import site
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from curriculum import REPO_ROOT

pytestmark = pytest.mark.notebooks

PYPROJECT = REPO_ROOT / "pyproject.toml"
PINS = REPO_ROOT / "requirements-colab.txt"
COLAB_VENV = REPO_ROOT / ".venv-colab"  # what `make colab-env` builds


def requirements(pyproject_text):
    """The project's direct requirements: its dependencies and its `test` extra."""
    project = tomllib.loads(pyproject_text)["project"]
    return [Requirement(line) for line in project["dependencies"] + project["optional-dependencies"]["test"]]


def pins(pins_text):
    """name -> (Requirement, Version) of each `name==version` line; anything else is an error."""
    pinned = {}
    for number, line in enumerate(pins_text.splitlines(), 1):
        line = line.split("#")[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==":
            raise ValueError(f"requirements-colab.txt line {number}: {line!r} is not one exact pin name==version")
        pinned[canonicalize_name(req.name)] = (req, Version(specs[0].version))
    return pinned


def floor_problems(pyproject_text, pins_text):
    """One line per requirement whose `>=` floor is missing or is not the version the pins tested."""
    pinned = pins(pins_text)
    problems = []
    for req in requirements(pyproject_text):
        floors = [spec for spec in req.specifier if spec.operator == ">="]
        if len(floors) != 1:
            problems.append(f"{req}: needs one >= floor, the version requirements-colab.txt pins")
            continue
        name = canonicalize_name(req.name)
        if name not in pinned:
            problems.append(f"{req}: not pinned in requirements-colab.txt: its floor {floors[0].version} is untested")
            continue
        pin_req, tested = pinned[name]
        if Version(floors[0].version) != tested:
            problems.append(f"{req}: floor {floors[0].version}, but requirements-colab.txt tests {tested}")
        if not req.specifier.contains(tested, prereleases=True):
            problems.append(f"{req}: excludes {tested}, the version requirements-colab.txt pins")
        if not req.extras <= pin_req.extras:
            problems.append(f"{req}: requirements-colab.txt pins {pin_req}, without the extras {sorted(req.extras)}")
    return problems


def pip_installed_version(name):
    """The version pip installed into this environment's site-packages. Not the first one on sys.path:
    importing ray puts its own copy of psutil (ray/thirdparty_files) ahead of the environment's."""
    for dist in importlib.metadata.distributions(name=name, path=site.getsitepackages()):
        return dist.version
    return None


def install_problems(pins_text, installed_version=pip_installed_version):
    """One line per pinned package whose installed version is another (a local label such as
    +cu128 aside: the same release built for another CUDA)."""
    problems = []
    for name, (_, pinned) in pins(pins_text).items():
        found = installed_version(name)
        if found is None:
            problems.append(f"{name}: pinned {pinned}, not installed")
            continue
        installed = Version(found)
        if Version(installed.public) != pinned:
            problems.append(f"{name}: pinned {pinned}, installed {installed}")
    return problems


def test_every_floor_is_the_version_the_colab_environment_tests():
    assert floor_problems(PYPROJECT.read_text(encoding="utf-8"), PINS.read_text(encoding="utf-8")) == []


def test_every_requirement_of_the_project_has_a_floor_and_a_pin():
    """The check above sees every requirement: a package dropped from the pins would go unseen otherwise."""
    names = {canonicalize_name(req.name) for req in requirements(PYPROJECT.read_text(encoding="utf-8"))}
    assert {"torch", "transformers", "numpy", "pytest"} <= names
    assert names <= set(pins(PINS.read_text(encoding="utf-8")))


@pytest.mark.parametrize(
    "old, new, complaint",
    [
        ('"transformers>=5.15.0,<6"', '"transformers>=5.24,<6"', "floor 5.24, but requirements-colab.txt tests 5.15.0"),
        ('"numpy>=2.1.3"', '"numpy>=2.0"', "floor 2.0, but requirements-colab.txt tests 2.1.3"),
        ('"torch>=2.11.0"', '"torch"', "needs one >= floor"),
        ('"pytest>=9.2"', '"pytest>=9.2", "rich>=13"', "rich>=13: not pinned"),
        ('"transformers>=5.15.0,<6"', '"transformers>=5.15.0,<5.15"', "excludes 5.15.0"),
        ('"ray[serve]>=2.60"', '"ray[serve,tune]>=2.60"', "without the extras"),
    ],
)
def test_the_floor_check_can_fail_on_pyproject(old, new, complaint):
    text = PYPROJECT.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"the test's copy of {old} is out of date"
    problems = floor_problems(text.replace(old, new), PINS.read_text(encoding="utf-8"))
    assert any(complaint in problem for problem in problems), problems


@pytest.mark.parametrize(
    "old, new, complaint",
    [
        ("\ndiffusers==0.39.0\n", "\ndiffusers==0.42.1\n", "floor 0.39.0, but requirements-colab.txt tests 0.42.1"),
        ("\nfaiss-cpu==1.15.0\n", "\n", "faiss-cpu>=1.15: not pinned"),
    ],
)
def test_the_floor_check_can_fail_on_the_pins(old, new, complaint):
    text = PINS.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"the test's copy of {old.strip()} is out of date"
    problems = floor_problems(PYPROJECT.read_text(encoding="utf-8"), text.replace(old, new))
    assert any(complaint in problem for problem in problems), problems


def test_a_pin_must_be_exact():
    with pytest.raises(ValueError, match="not one exact pin"):
        pins("numpy>=2.1.3\n")


def test_the_install_check_can_fail():
    installed = {"torch": "2.11.0+cu128", "numpy": "2.4.6"}

    problems = install_problems("torch==2.11.0\nnumpy==2.1.3\npeft==0.20.0\n", installed.get)
    assert problems == ["numpy: pinned 2.1.3, installed 2.4.6", "peft: pinned 0.20.0, not installed"]


@pytest.mark.skipif(
    Path(sys.prefix).resolve() != COLAB_VENV.resolve(), reason="runs in .venv-colab only (`make colab-test`)"
)
def test_the_colab_environment_has_exactly_the_pinned_versions():
    assert install_problems(PINS.read_text(encoding="utf-8")) == []

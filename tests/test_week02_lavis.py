"""The optional LAVIS backend: a tiny random Blip2OPT built offline in .venv-lavis, end to end."""
import pytest

from curriculum import shapesworld
from curriculum.cli import UserError
from stage1_demos import lavis_backend

pytestmark = pytest.mark.week2
needs_venv = pytest.mark.skipif(not lavis_backend.available(), reason="no .venv-lavis: run `make lavis-venv`")

GREEDY = {"max_new_tokens": 8, "num_beams": 1, "do_sample": False, "temperature": None, "top_p": None,
          "repetition_penalty": 1.0}


@pytest.fixture
def images(tmp_path):
    shapesworld.export("test", 2, tmp_path)
    return [tmp_path / "test_00000.png", tmp_path / "test_00001.png"]


@needs_venv
def test_captions_with_prompt_and_beams(images):
    captions = lavis_backend.caption(images, ["", "a photo of"], {**GREEDY, "num_beams": 3})
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)


@needs_venv
def test_missing_image_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no_such.png"):
        lavis_backend.caption([tmp_path / "no_such.png"], [""], GREEDY)


def test_missing_venv_says_how_to_make_it(tmp_path, monkeypatch):
    monkeypatch.setattr(lavis_backend, "VENV", tmp_path / "no-venv")
    with pytest.raises(UserError, match="make lavis-venv"):
        lavis_backend.caption([tmp_path / "a.png"], [""], GREEDY)

"""Week 7 milestone (contrastive side): the projection heads measured, and Chinese queries on the
English CLIP's index through the distilled tiny-clip-zh."""

import json

import pytest

from curriculum import MODELS_DIR, OUTPUTS_DIR, shapesworld, zoo
from curriculum.cli import UserError
from stage1_demos import clip_retrieval
from stage2_fundamentals import crosslingual, projection

pytestmark = pytest.mark.week7


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    """The gallery `make week7` searches (300 test images), indexed by the English CLIP."""
    root = tmp_path_factory.mktemp("w7")
    shapesworld.export("test", 300, root / "gallery")
    clip_retrieval.build_index(root / "gallery", root / "index", "tiny", "cpu")
    return root / "index"


def test_chinese_recall_is_within_0_05_of_english():
    result = crosslingual.evaluate(n=1000)
    assert result["zh"]["R@1"] >= result["en"]["R@1"] - 0.05, result


def test_chinese_query_is_detected_and_finds_red_circles(cli_runner, index):
    """docs/week07.md: for "左边的红色圆形" (the red circle on the left) all five hits have a red circle
    on the left."""
    code, out, _ = cli_runner(
        clip_retrieval.main, ["search", "--index", str(index), "--text", "左边的红色圆形", "--json"]
    )
    result = json.loads(out)
    assert code == 0 and result["query"]["lang"] == "zh"

    def red_circle_on_the_left(caption):
        return any(
            (o.color, o.shape) == ("red", "circle") and o.position.endswith("left")
            for o in shapesworld.parse_caption(caption)
        )

    assert len(result["results"]) == 5
    assert all(red_circle_on_the_left(r["caption"]) for r in result["results"]), result["results"]
    english = clip_retrieval.search(index, text="a red circle", k=5, device="cpu")
    assert english["query"]["lang"] == "en"
    assert all("red circle" in r["caption"] for r in english["results"][:3])


def test_lang_override_and_language_detection():
    assert clip_retrieval.query_language("红色圆形") == "zh"
    assert clip_retrieval.query_language("a red circle") == "en"
    assert clip_retrieval.query_language("红色圆形", lang="en") == "en"


def test_chinese_query_on_another_models_index_is_a_clear_error(index, tmp_path):
    meta = json.loads((index / "meta.json").read_text())
    (tmp_path / "index.faiss").write_bytes((index / "index.faiss").read_bytes())
    (tmp_path / "meta.json").write_text(json.dumps(meta | {"model": str(zoo.MODELS_DIR / "tiny-clip")}))
    with pytest.raises(UserError, match="Chinese queries need a Chinese text tower"):
        clip_retrieval.search(tmp_path, text="红色圆形", device="cpu")


def test_chinese_partial_descriptions_read_back():
    for s in shapesworld.generate("test", 20):
        for o in s.objects:
            assert shapesworld.parse_caption(shapesworld.describe_zh(o)) == (o,)


def test_removing_the_projection_heads_breaks_retrieval():
    rows = {r["variant"].split(" (")[0]: r["text_to_image_R@1"] for r in projection.inference_ablation(n=500)}
    bundled = rows["bundled model"]
    assert bundled > 0.9
    for variant in ("heads removed", "heads replaced by random matrices", "heads swapped"):
        assert rows[variant] < bundled - 0.3, (variant, rows)


def test_vit_b32_widths_need_the_heads():
    assert projection.vit_b32_shapes() == {"vision_hidden": 768, "text_hidden": 512, "projection_dim": 512}


def test_train_writes_outputs_by_default_and_the_bundled_checkpoint_only_with_force(cli_runner, capsys):
    """The default --out was data/models/tiny-clip-zh, the checkpoint every Chinese query loads,
    replaced silently by whatever a quick run learnt."""
    parser = crosslingual.build_parser()
    assert parser.parse_args(["train"]).out == OUTPUTS_DIR / "train" / "tiny-clip-zh"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    assert "(defaultoutputs/train/tiny-clip-zh)" in "".join(capsys.readouterr().out.split())  # however it wraps
    bundled = MODELS_DIR / "tiny-clip-zh"
    before = {p: p.stat().st_mtime_ns for p in bundled.iterdir()}
    code, _, err = cli_runner(crosslingual.main, ["train", "--out", str(bundled), "--steps", "1"])
    assert code == 2 and err.count("\n") == 1 and "bundled checkpoint" in err and "--force" in err
    assert {p: p.stat().st_mtime_ns for p in bundled.iterdir()} == before
    assert parser.parse_args(["train", "--out", str(bundled), "--force"]).force  # what `make tiny-models` passes

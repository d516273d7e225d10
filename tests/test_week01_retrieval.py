import itertools
import json
import shutil
from pathlib import Path

import hub_models
import numpy as np
import pytest
from PIL import Image

from curriculum import shapesworld as sw
from stage1_demos import clip_retrieval as cr

pytestmark = pytest.mark.week1


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """120 exported test images, plus two re-renders (new jitter) of image 0, indexed."""
    folder = tmp_path_factory.mktemp("gallery")
    sw.export("test", 120, folder)
    original = sw.sample("test", 0)
    with open(folder / "captions.jsonl", "a", encoding="utf-8") as f:
        for n in (1, 2):
            name = f"near_duplicate_{n}.png"
            sw.render(original.objects, 64, np.random.default_rng(1000 + n)).save(folder / name)
            f.write(json.dumps({"path": name, "caption_en": original.caption_en, "labels": original.labels}) + "\n")
    index_dir = folder.parent / (folder.name + "_index")
    cr.build_index(folder, index_dir, "tiny", "cpu")
    return folder, index_dir


def test_colour_shape_queries_return_matching_images_first(gallery):
    """'a red circle' for every seen colour-shape pair: the top hit shows one, and so do nearly
    all of the top 3 (or of all the gallery's matches, when it holds fewer)."""
    folder, index_dir = gallery
    records = sw.read_captions(folder)
    top1, precision = [], []
    for color, shape in itertools.product(sw.COLORS, sw.SHAPES):
        if (color, shape) in sw.HELDOUT_COMBINATIONS:
            continue

        def matches(path):
            objects = records[Path(path).name]["labels"]["objects"]
            return any(o["color"] == color and o["shape"] == shape for o in objects)

        k = min(3, sum(matches(name) for name in records))
        hits = [matches(r["path"]) for r in cr.search(index_dir, text=f"a {color} {shape}", k=k)["results"]]
        top1.append(hits[0])
        precision.append(sum(hits) / k)
    print(f"\ncolour-shape queries: top-1 {np.mean(top1):.3f}, precision@3 {np.mean(precision):.3f}")
    assert all(top1) and np.mean(precision) >= 0.85


def test_image_query_returns_its_near_duplicates_first(gallery):
    folder, index_dir = gallery
    result = cr.search(index_dir, image=folder / "test_00000.png", k=3, device="cpu")
    names = {Path(r["path"]).name for r in result["results"]}
    assert names == {"test_00000.png", "near_duplicate_1.png", "near_duplicate_2.png"}
    scores = [r["score"] for r in result["results"]]
    assert scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(1.0, abs=1e-4)


def test_search_json_and_picture(gallery, tmp_path, cli_runner):
    _, index_dir = gallery
    png = tmp_path / "hits.png"
    code, out, _ = cli_runner(
        cr.main,
        ["search", "--index", str(index_dir), "--text", "a green circle", "-k", "4", "--json", "--out", str(png)],
    )
    assert code == 0
    result = json.loads(out)
    assert set(result) == {"query", "results"} and result["query"] == {"text": "a green circle", "lang": "en"}
    assert len(result["results"]) == 4
    assert all(set(r) == {"path", "score", "caption"} and r["caption"] for r in result["results"])
    assert Image.open(png).size[0] == 5 * 160  # the query tile and four hits


def test_vectors_are_unit_length_so_dot_product_is_cosine(clip_model):
    model, processor = clip_model
    texts = cr.embed_texts(model, processor, ["a red circle", "a large blue square in the top left"])
    images = cr.embed_images(model, processor, [sw.sample("test", i).image for i in range(3)])
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1, atol=1e-5)


def test_eval_meets_the_recall_bar(cli_runner):
    code, out, _ = cli_runner(cr.main, ["eval", "--split", "test", "--json", "--device", "cpu"])
    assert code == 0
    result = json.loads(out)
    assert {"text_to_image", "image_to_text", "n", "heldout_combinations"} <= set(result)
    assert set(result["text_to_image"]) == set(result["image_to_text"]) == {"R@1", "R@5", "R@10"}
    assert result["n"] == 1000
    print("\nweek1 eval:", json.dumps(result))
    assert result["text_to_image"]["R@1"] >= 0.90
    assert result["text_to_image"]["R@5"] >= result["text_to_image"]["R@1"]
    assert 0 <= result["heldout_combinations"]["R@1"] <= 1


def test_recall_counts_any_image_with_the_same_labels():
    key_a, key_b = ("a",), ("b",)
    similarity = np.array([[0.9, 0.8, 0.1], [0.9, 0.1, 0.2]])
    r = cr.recall_at_k(similarity, [key_a, key_b], [key_a, key_a, key_b], ks=(1, 2, 3))
    assert r == {"R@1": 0.5, "R@2": 1.0, "R@3": 1.0}


def test_real_architecture_path(tmp_path):
    """openai/clip-vit-base-patch32's architecture (CLIPConfig() defaults), random weights, by path."""
    from transformers import CLIPConfig

    model_dir = hub_models.clip_vit_b32(tmp_path / "clip-vit-b32-random")
    config = CLIPConfig.from_pretrained(model_dir)
    assert (config.vision_config.patch_size, config.vision_config.hidden_size, config.projection_dim) == (32, 768, 512)
    images = tmp_path / "images"
    sw.export("test", 6, images)
    meta = cr.build_index(images, tmp_path / "index", str(model_dir), "cpu")
    assert meta["dim"] == 512 and len(meta["paths"]) == 6
    result = cr.search(tmp_path / "index", text="a red circle", k=3, device="cpu")
    assert len(result["results"]) == 3
    result = cr.search(tmp_path / "index", image=images / "test_00002.png", k=1, device="cpu")
    assert result["results"][0]["path"].endswith("test_00002.png")


def test_index_skips_unreadable_files_and_counts_them(tmp_path, capsys):
    sw.export("test", 3, tmp_path / "imgs")
    (tmp_path / "imgs" / "broken.png").write_text("not really a png")
    meta = cr.build_index(tmp_path / "imgs", tmp_path / "index", "tiny", "cpu")
    assert len(meta["paths"]) == 3 and len(meta["skipped"]) == 1
    assert "skipping" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["index", "--images", "/no/such/folder", "--out", "/tmp/x"], "no folder"),
        (["search", "--index", "{index}", "--text", "  "], "argument --text: empty text"),
        (["search", "--index", "{index}", "--image", "{textfile}"], "not a readable image"),
        (["search", "--index", "{index}", "--text", "a red circle", "--image", "{image}"], "not allowed with"),
        (["search", "--index", "/no/such/index", "--text", "a red circle"], "no folder"),
        (["search", "--index", "{textfile_dir}", "--text", "a red circle"], "holds no index.faiss, meta.json"),
        (["eval", "--n", "0"], "from 1 to 10000"),
        (["index", "--images", "{index}", "--out", "{textfile_dir}"], "--force"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(gallery, tmp_path, cli_runner, argv, needle):
    folder, index_dir = gallery
    textfile = tmp_path / "notes.txt"
    textfile.write_text("hello")
    names = {"index": index_dir, "textfile": textfile, "textfile_dir": tmp_path, "image": folder / "test_00000.png"}
    argv = [a.format(**names) for a in argv]
    code, out, err = cli_runner(cr.main, argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert textfile.read_text() == "hello"  # a folder of the learner's files is never replaced


def test_index_replaces_an_earlier_index_whole(tmp_path, cli_runner):
    sw.export("test", 3, tmp_path / "imgs")
    index_dir = tmp_path / "index"
    for _ in range(2):
        code, out, err = cli_runner(cr.main, ["index", "--images", str(tmp_path / "imgs"), "--out", str(index_dir)])
        assert code == 0, err
    assert sorted(p.name for p in index_dir.iterdir()) == ["index.faiss", "meta.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "index"]  # nothing staged left beside it


DAMAGES = {  # (file, what it holds after the damage)
    "faiss": ("index.faiss", b"not a faiss index"),
    "json": ("meta.json", b'{"paths": ['),
    "utf8": ("meta.json", b"\xff\xfe not UTF-8"),
    "not-a-dict": ("meta.json", b"[1, 2]"),
    "wrong-count": ("meta.json", json.dumps({"model": "tiny", "paths": ["a.png"], "captions": [""]}).encode()),
    "model-gone": ("meta.json", json.dumps({"model": "/no/such/clip", "paths": [], "captions": []}).encode()),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_index_is_one_line(gallery, tmp_path, cli_runner, damage):
    import faiss

    _, index_dir = gallery
    broken = tmp_path / "index"
    shutil.copytree(index_dir, broken)
    if damage == "model-gone":  # an index of no images, as meta.json says
        faiss.write_index(faiss.IndexFlatIP(4), str(broken / "index.faiss"))
    name, content = DAMAGES[damage]
    (broken / name).write_bytes(content)
    code, out, err = cli_runner(cr.main, ["search", "--index", str(broken), "--text", "a red circle"])
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert str(broken) in err


def test_eval_runs_on_a_tiny_gallery(cli_runner):
    """Two images hold no held-out pair: their recall is n/a, not a crash."""
    code, out, err = cli_runner(cr.main, ["eval", "--n", "2", "--device", "cpu"])
    assert code == 0, err
    assert "2 images (2 seen combinations, 0 held out)" in out and "n/a" in out
    code, out, err = cli_runner(cr.main, ["eval", "--n", "2", "--json", "--device", "cpu"])
    result = json.loads(out)
    assert result["heldout_combinations"] == {"R@1": None} and result["text_to_image"]["R@10"] == 1.0

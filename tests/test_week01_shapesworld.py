import json

import numpy as np
import pytest

from curriculum import shapesworld as sw

pytestmark = pytest.mark.week1


def test_same_arguments_give_same_pixels_and_captions():
    a, b = sw.sample("test", 7), sw.sample("test", 7)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert (a.caption_en, a.caption_zh, a.objects) == (b.caption_en, b.caption_zh, b.objects)
    c = sw.sample("test", 8)
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))
    assert not np.array_equal(np.asarray(a.image), np.asarray(sw.sample("test", 7, seed=1).image))


def test_world_has_the_promised_variety():
    assert len(sw.COLORS) >= 6 and len(sw.SHAPES) >= 4 and len(sw.SIZES) == 2 and len(sw.POSITIONS) >= 4
    samples = sw.generate("val", 400)
    assert {len(s.objects) for s in samples} == {1, 2}
    for s in samples:
        assert len({o.position for o in s.objects}) == len(s.objects), "two objects share a quadrant"
    seen = lambda field: {getattr(o, field) for s in samples for o in s.objects}  # noqa: E731
    assert seen("color") == set(sw.COLORS) and seen("shape") == set(sw.SHAPES)
    assert seen("size") == set(sw.SIZES) and seen("position") == set(sw.POSITIONS)
    assert sw.sample("test", 0, size=128).image.size == (128, 128)


@pytest.mark.parametrize("split", ["train", "test"])
def test_captions_agree_with_labels_in_both_languages(split):
    samples = sw.generate(split, 500)
    for s in samples:
        assert sw.label_key(sw.parse_caption(s.caption_en)) == sw.label_key(s.objects), s.caption_en
        assert sw.label_key(sw.parse_caption(s.caption_zh)) == sw.label_key(s.objects), s.caption_zh
    # more than one template per language is in use
    assert len({s.caption_en.split()[0] for s in samples}) > 1
    assert len({s.caption_zh[0] for s in samples}) > 1
    assert any("\u4e00" <= ch <= "\u9fff" for ch in samples[0].caption_zh)


def test_pixels_agree_with_labels():
    """Each object's colour is at its quadrant's centre; empty quadrants show the background."""
    for s in sw.generate("test", 200):
        image = np.asarray(s.image).astype(int)
        occupied = {o.position: o for o in s.objects}
        for position, ((fx, fy), _) in sw.POSITIONS.items():
            pixel = image[int(fy * 64), int(fx * 64)]
            expected = sw.COLORS[occupied[position].color][0] if position in occupied else sw.BACKGROUND
            assert np.abs(pixel - expected).max() <= 12, (s.caption_en, position, pixel)


def test_heldout_combinations_never_in_train_but_in_test():
    assert not any(s.heldout for s in sw.generate("train", 2000))
    test = sw.generate("test", 500)
    assert 0.1 < np.mean([s.heldout for s in test]) < 0.6


def test_export_writes_pngs_and_caption_lines(tmp_path, cli_runner):
    code, out, _ = cli_runner(sw.main, ["export", "--n", "5", "--split", "test", "--out", str(tmp_path)])
    assert code == 0
    lines = [json.loads(x) for x in (tmp_path / "captions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 5 and len(list(tmp_path.glob("*.png"))) == 5
    for record, s in zip(lines, sw.generate("test", 5)):
        assert set(record) == {"path", "caption_en", "caption_zh", "labels"}
        assert (tmp_path / record["path"]).exists()
        assert record["caption_en"] == s.caption_en and record["caption_zh"] == s.caption_zh
        for obj in record["labels"]["objects"]:
            assert set(obj) == {"color", "shape", "size", "position"}
            assert obj["color"] in sw.COLORS and obj["position"] in sw.POSITIONS


def test_export_never_empties_a_folder_it_did_not_write(tmp_path, cli_runner):
    gallery, notes = tmp_path / "gallery", tmp_path / "notes"
    assert cli_runner(sw.main, ["export", "--n", "3", "--out", str(gallery)])[0] == 0
    captions = (gallery / "captions.jsonl").read_text(encoding="utf-8")
    for bad in (["--seed", "-1"], ["--n", "100000000"], ["--size", "100000000"]):  # refused before any file is touched
        code, _, err = cli_runner(sw.main, ["export", *bad, "--out", str(gallery)])
        assert code == 2 and err.count("\n") == 1
        assert (gallery / "captions.jsonl").read_text(encoding="utf-8") == captions
    notes.mkdir()
    (notes / "week1.md").write_text("my notes")
    for out in (str(notes), "", "."):
        assert cli_runner(sw.main, ["export", "--n", "3", "--out", out])[0] == 2
    assert [p.name for p in notes.iterdir()] == ["week1.md"]
    assert cli_runner(sw.main, ["export", "--n", "2", "--out", str(notes), "--force"])[0] == 0
    assert sorted(p.name for p in notes.iterdir()) == ["captions.jsonl", "test_00000.png", "test_00001.png"]
    assert cli_runner(sw.main, ["export", "--n", "2", "--split", "val", "--out", str(gallery)])[0] == 0  # its own
    assert sorted(p.name for p in gallery.iterdir()) == ["captions.jsonl", "val_00000.png", "val_00001.png"]

"""The docs' prose, outside the blocks `make docs` writes: no measured number typed by hand, and no
comparison far from the generated table or value that shows it (curriculum/prose.py)."""

import pytest

from curriculum import prose

pytestmark = pytest.mark.docs


# ---------------------------------------------------------------- typed numbers
def test_no_measured_number_is_typed_in_the_docs():
    message = prose.failures(prose.typed_numbers)
    assert not message, message


def numbers(text):
    return [(line, number) for line, number, _ in prose.typed_numbers(text)]


def test_a_typed_number_is_caught_with_its_line():
    text = (
        "# A page\n"
        "\n"
        "The image loads in 48 s and needs 1.7 GB; 96% of requests got 503.\n"
        "Batching gives 2.5× the requests/s, 3x faster, 80 requests/s, max difference 5e-5, scores 0.04–0.07,\n"
        "and 6 of 10 got 504.\n"
    )
    assert numbers(text) == [
        (3, "48 s"),
        (3, "1.7 GB"),
        (3, "96%"),
        (4, "2.5×"),
        (4, "3x faster"),
        (4, "80 requests/s"),
        (4, "5e-5"),
        (4, "0.04–0.07"),
        (5, "6 of 10"),
    ]


def test_a_marker_quoted_as_code_hides_nothing():
    assert numbers("Write `<!-- value NAME -->`, not 1.7 GB, then `<!-- /value -->`.\n") == [(1, "1.7 GB")]


def test_a_const_marker_right_after_a_number_exempts_it_and_no_other():
    assert numbers("SD scales latents by 0.18215<!-- const: SD 1.x's scaling factor -->.\n") == []
    assert numbers("The download is 1.7 GB <!-- const: the hub's file size -->.\n") == []
    assert numbers("τ = 0.01 and 0.07<!-- const: CLIP §2.5 -->.\n") == [(1, "0.01")]
    assert numbers("τ = 0.07<!-- const: -->, no reason given.\n") == [(1, "0.07")]


def test_what_a_reader_does_not_read_as_a_measurement_is_not_scanned():
    text = (
        "`--lr 0.001` and <!-- value week1.counts -->0.97 and 48 s<!-- /value --> and [a](img/0.5.png).\n"
        "```\nloss 1.490\n```\n"
        "CLIP §2.3, Python 3.11, transformers < 4.27, torch 2.11.0, OPT-2.7b, Stable Diffusion 1.5.\n"
        "1,500 steps × 32 images, a 64×64 image, 8 × 8 patches, 0 × NaN, seed 0, <img width='400'>.\n"
    )
    assert numbers(text) == []


def test_the_failure_names_page_line_number_and_both_ways_out(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Week 2\n\nLAVIS takes 1.7 GB, about 7 s per call.\n", encoding="utf-8")
    message = prose.failures(prose.typed_numbers, [page])
    assert f"{page}:3: 1.7 GB:" in message and f"{page}:3: 7 s:" in message
    assert "@value renderer" in message and "<!-- const:" in message
    page.write_text("# Week 2\n\nLAVIS takes 1.7 GB<!-- const: its wheel's size on PyPI -->.\n", encoding="utf-8")
    assert prose.failures(prose.typed_numbers, [page]) == ""


# ---------------------------------------------------------------- comparisons
def test_every_comparison_sits_beside_the_numbers_that_show_it():
    message = prose.failures(prose.unbacked_comparisons)
    assert not message, message


TABLE = "<!-- table week3.compare -->\n| scheduler | 5 steps |\n|---|---|\n| ddpm | 1.00 |\n<!-- /table -->"


def comparisons(*paragraphs):
    return [phrase for _, phrase, _ in prose.unbacked_comparisons("\n\n".join(paragraphs) + "\n")]


def test_a_comparison_far_from_a_generated_block_is_caught():
    claim = "DPM-Solver needs fewer steps than DDPM."
    assert comparisons(claim, "Another paragraph.", TABLE) == ["needs fewer"]
    assert comparisons(TABLE, "Another paragraph.", "A third.", "The projector captions best here.") == [
        "captions best"
    ]
    assert comparisons("Chinese and English prompts give the same answers.") == ["the same answers"]


def test_a_comparison_beside_its_numbers_or_reasoned_passes():
    claim = "DPM-Solver needs fewer steps than DDPM."
    assert comparisons(claim, TABLE) == []  # the paragraph before the table
    assert comparisons(TABLE, claim) == []  # the paragraph after it
    assert comparisons(f"At 5 steps <!-- value week3.n -->x<!-- /value -->, so {claim}") == []
    assert comparisons("A bounded queue beats unbounded memory.<!-- reasoned -->", "Far.", "Farther.", TABLE) == []
    assert comparisons("## Why do Transformers suit images better than CNNs?") == []  # a question claims nothing
    tested = "A resumed run ends bit for bit where a whole one does ([a test](../tests/test_week01_training.py))."
    assert comparisons(tested, "Far.", "Farther.", TABLE) == []
    assert comparisons(tested.replace("tests/test_week01_training.py", "docs/week01.md"), "Far.", "Farther.", TABLE)
    assert comparisons("`a beats b` in code, and a `<!-- value x -->` quoted, claim nothing.") == []


def test_the_comparison_failure_names_page_line_and_the_ways_out(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Week 3\n\nFirst.\n\nDPM-Solver needs fewer steps than DDPM.\n", encoding="utf-8")
    message = prose.failures(prose.unbacked_comparisons, [page])
    assert f"{page}:5: needs fewer: DPM-Solver needs fewer steps than DDPM." in message
    assert "generated value" in message and "<!-- reasoned -->" in message

"""Week 10: the text rules read text as a reader sees it (stage3_moderation/normalize.py): each
evasion of issue 27 is caught, and ordinary text, in any script, stays unflagged."""

import pytest

from curriculum import shapesworld
from curriculum.cli import UserError
from stage3_moderation import normalize, policy

pytestmark = pytest.mark.week10


@pytest.fixture(scope="module")
def demo_policy():
    return policy.load()


def flagged(demo_policy, text):
    return [name for name, hit in policy.decide(demo_policy, text=text)["categories"].items() if hit]


def styled(text, capital_a, small_a):
    """text in another alphabet of Latin letters (mathematical bold, circled, ...)."""
    table = {ord("A") + i: capital_a + i for i in range(26)} | {ord("a") + i: small_a + i for i in range(26)}
    return text.translate(table)


@pytest.mark.parametrize(
    "text, category",
    [
        ("ｒｅｄ ｃｒｏｓｓ", "red_cross"),  # fullwidth
        (styled("Red Cross", 0x1D400, 0x1D41A), "red_cross"),  # mathematical bold
        (styled("red cross", 0x24B6, 0x24D0), "red_cross"),  # circled
        ("a red cr\u200boss", "red_cross"),  # zero-width space
        ("a red cro\u00adss", "red_cross"),  # soft hyphen
        ("a r\u2060ed cross", "red_cross"),  # word joiner
        ("a r\u0435d \u0441r\u043e\u0455\u0455", "red_cross"),  # Cyrillic е, с, о, ѕ
        ("\u0392U\u03a5 \u039d\u039fW", "spam"),  # Greek capitals beta, upsilon, nu, omicron
        ("a red-cross", "red_cross"),
        ("a purple\u2013cross", "purple_cross"),  # en dash
        ("ｆｒｅｅ ｍｏｎｅｙ", "spam"),
        ("ｈｔｔｐｓ://spam.example", "spam"),
        ("https\uff1a//spam.example", "spam"),  # fullwidth colon
        ("www\u3002example\u3002com", "spam"),  # ideographic full stops, which IDNA reads as dots
    ],
    ids=[
        "fullwidth",
        "math-bold",
        "circled",
        "zero-width-space",
        "soft-hyphen",
        "word-joiner",
        "cyrillic",
        "greek",
        "hyphen",
        "en-dash",
        "fullwidth-free-money",
        "fullwidth-https",
        "fullwidth-colon",
        "ideographic-full-stop",
    ],
)
def test_text_rule_evasions_are_flagged(demo_policy, text, category):
    assert flagged(demo_policy, text) == [category]


def test_the_answer_keeps_the_text_as_sent(demo_policy):
    """Only the rules read the normalised text: the caption in the answer is the model's own."""
    caption = "ａ ｒｅｄ ｃｒｏ\u200bｓｓ"
    result = policy.decide(demo_policy, concept_scores={c: 0.0 for c in demo_policy.concepts}, caption=caption)
    assert result["categories"]["red_cross"] and result["caption"] == caption


@pytest.mark.parametrize(
    "text",
    [
        "credit crossing, a shredded crossword, redcross",  # the rule words' letters, not its words
        "freedom of money; buyer nowhere; the car is red, cross the street",
        "Красный крест на белом фоне, и синий круг",  # Russian: a red cross on white, and a blue circle
        "Ένας κόκκινος σταυρός και ένας μπλε κύκλος",  # Greek: the same
        "un café crème à côté du naïve résumé",
        "🎉👍❤️ 👨\u200d👩\u200d👧 🏳️\u200d🌈",
    ],
)
def test_ordinary_text_stays_unflagged(demo_policy, text):
    assert flagged(demo_policy, text) == []


def test_shapesworld_captions_are_judged_as_before(demo_policy):
    """English captions are flagged exactly when the scene has the category (the terms name it);
    Chinese ones never are (the terms are English)."""
    for s in shapesworld.generate("test", 300, seed=3):
        truth = policy.truth(demo_policy.name, s.objects)
        assert {c: policy.decide(demo_policy, text=s.caption_en)["categories"][c] for c in truth} == truth
        assert not policy.decide(demo_policy, text=s.caption_zh)["flagged"]


def test_rules_in_other_scripts_keep_working(tmp_path):
    """Terms are compared by skeleton on both sides and patterns see the text as written, so a
    Russian rule still catches Russian text, and its Latin look-alike spelling too."""
    path = tmp_path / "ru.yaml"
    path.write_text("categories: {x: {terms: ['красный крест']}, y: {patterns: ['\\bкрест\\b']}}", encoding="utf-8")
    ru = policy.load(path)
    assert policy.decide(ru, text="Красный крест")["categories"] == {"x": True, "y": True}
    assert policy.decide(ru, text="кpacный кpecт")["categories"]["x"]  # Latin p, a, c, e


def test_a_term_of_invisible_characters_is_blank(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text('categories: {x: {terms: ["\\u200b\\u2060"]}}', encoding="utf-8")  # YAML reads the escapes
    with pytest.raises(UserError, match=r"terms.0 = .*is blank"):
        policy.load(path)


def test_normalising_cannot_multiply_the_work_of_the_rules():
    """NFKC makes one Arabic ligature 18 letters: such long forms stay as sent (at most 3 per character)."""
    sent = "\ufdfa\u3307\u247d" * 1000  # the ligature, a squared katakana word, a parenthesised 10
    assert max(len(r) for r in normalize.readings(sent)) <= 3 * len(sent)

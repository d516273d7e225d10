"""Week 10: the text that the policy's text rules read, so that what a reader sees as a banned word is one.

`readings(text)` gives the text as a reader sees it and, where it differs, its confusable skeleton;
each rule reads both (policy.Category.hits). What the service answers (the caption, the scores) is unchanged:
only the rules read these.

    NFKC          fullwidth ｒｅｄ and ：, mathematical 𝐫𝐞𝐝, circled ⓡⓔⓓ, ligatures become plain characters
    invisibles    format characters (category Cf: zero-width space, soft hyphen, word joiner, bidi
                  controls, tags) and the other default-ignorable code points are dropped
    punctuation   every dash (category Pd) and the minus sign become '-'; the ideographic full stop
                  becomes '.', as IDNA (UTS #46) reads it in a domain name: www。example。com
    skeleton      Cyrillic and Greek look-alikes of Latin letters become those letters (Unicode TR39's
                  confusables.txt, restricted to letters whose prototype is ASCII)

The skeleton maps only non-ASCII letters to ASCII ones (TR39's full skeleton also maps ASCII: m to rn,
0 to O), so an ASCII text is its own skeleton and the policy's regular expressions read it as written.
Like TR39 it depends on case: Cyrillic К looks like K and is mapped, к is not; the rules ignore case.
"""

import re
import unicodedata

# Default-ignorable code points that are not Cf: combining grapheme joiner, Hangul fillers, Khmer
# inherent vowels, Mongolian and other variation selectors.
IGNORABLE = {0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, *range(0x180B, 0x1810), 0x3164, 0xFFA0, *range(0xFE00, 0xFE10)}
IGNORABLE |= set(range(0xE0100, 0xE01F0))
LONGEST = 3  # characters that one sent character may become for the rules (NFKC's longest is 18)


def _plain(c):
    """What the rules read for the character c (a code point): its NFKC form, so that one translate and
    NFC do NFKC, apart from the 72 characters NFKC makes longer than LONGEST (Roman numerals from VIII,
    parenthesised numbers from 10, squared katakana words, Arabic ligatures of up to 18 letters), which
    would multiply the work of the rules. Invisible characters go before NFC, so that they cannot keep
    it from composing their neighbours; dashes and full stops are recognised by their NFKC form."""
    if c in IGNORABLE or unicodedata.category(chr(c)) == "Cf":
        return None
    nfkc = unicodedata.normalize("NFKC", chr(c))
    if nfkc == "\N{MINUS SIGN}" or (len(nfkc) == 1 and unicodedata.category(nfkc) == "Pd"):
        return "-"
    if nfkc == "\N{IDEOGRAPHIC FULL STOP}":
        return "."
    return nfkc if len(nfkc) <= LONGEST else chr(c)


# Outside planes 0, 1 and 14 only canonical forms differ (CJK compatibility ideographs): NFC does those.
PLAIN = {c: new for c in (*range(0x20000), *range(0xE0000, 0xE1000)) if (new := _plain(c)) != chr(c)}


# TR39 prototypes (confusables.txt) of Cyrillic and Greek letters, by the Unicode names of the
# look-alikes; plus three Latin letters outside ASCII often used the same way. The capital I look-alikes
# map to I (TR39 maps I and l alike, to l).
LOOKALIKES = {
    "A": "CYRILLIC CAPITAL LETTER A, GREEK CAPITAL LETTER ALPHA",
    "B": "CYRILLIC CAPITAL LETTER VE, GREEK CAPITAL LETTER BETA",
    "C": "CYRILLIC CAPITAL LETTER ES, GREEK CAPITAL LUNATE SIGMA SYMBOL",
    "E": "CYRILLIC CAPITAL LETTER IE, GREEK CAPITAL LETTER EPSILON",
    "G": "CYRILLIC CAPITAL LETTER KOMI SJE",
    "H": "CYRILLIC CAPITAL LETTER EN, GREEK CAPITAL LETTER ETA",
    "I": "CYRILLIC CAPITAL LETTER BYELORUSSIAN-UKRAINIAN I, CYRILLIC LETTER PALOCHKA, GREEK CAPITAL LETTER IOTA",
    "J": "CYRILLIC CAPITAL LETTER JE, GREEK CAPITAL LETTER YOT",
    "K": "CYRILLIC CAPITAL LETTER KA, GREEK CAPITAL LETTER KAPPA",
    "M": "CYRILLIC CAPITAL LETTER EM, GREEK CAPITAL LETTER MU",
    "N": "GREEK CAPITAL LETTER NU",
    "O": "CYRILLIC CAPITAL LETTER O, GREEK CAPITAL LETTER OMICRON",
    "P": "CYRILLIC CAPITAL LETTER ER, GREEK CAPITAL LETTER RHO",
    "S": "CYRILLIC CAPITAL LETTER DZE",
    "T": "CYRILLIC CAPITAL LETTER TE, GREEK CAPITAL LETTER TAU",
    "V": "CYRILLIC CAPITAL LETTER IZHITSA",
    "W": "CYRILLIC CAPITAL LETTER WE",
    "X": "CYRILLIC CAPITAL LETTER HA, GREEK CAPITAL LETTER CHI",
    "Y": "CYRILLIC CAPITAL LETTER U, CYRILLIC CAPITAL LETTER STRAIGHT U, GREEK CAPITAL LETTER UPSILON",
    "Z": "GREEK CAPITAL LETTER ZETA",
    "a": "CYRILLIC SMALL LETTER A, GREEK SMALL LETTER ALPHA, LATIN SMALL LETTER ALPHA",
    "b": "CYRILLIC CAPITAL LETTER SOFT SIGN",
    "c": "CYRILLIC SMALL LETTER ES, GREEK LUNATE SIGMA SYMBOL",
    "d": "CYRILLIC SMALL LETTER KOMI DE",
    "e": "CYRILLIC SMALL LETTER IE, CYRILLIC SMALL LETTER ABKHASIAN CHE",
    "g": "LATIN SMALL LETTER SCRIPT G",
    "h": "CYRILLIC SMALL LETTER SHHA",
    "i": "CYRILLIC SMALL LETTER BYELORUSSIAN-UKRAINIAN I, GREEK SMALL LETTER IOTA, LATIN SMALL LETTER DOTLESS I",
    "j": "CYRILLIC SMALL LETTER JE, GREEK LETTER YOT",
    "l": "CYRILLIC SMALL LETTER PALOCHKA",
    "o": "CYRILLIC SMALL LETTER O, GREEK SMALL LETTER OMICRON, GREEK SMALL LETTER SIGMA",
    "p": "CYRILLIC SMALL LETTER ER, GREEK SMALL LETTER RHO, GREEK RHO SYMBOL",
    "q": "CYRILLIC SMALL LETTER QA",
    "r": "CYRILLIC SMALL LETTER GHE",
    "s": "CYRILLIC SMALL LETTER DZE",
    "u": "GREEK SMALL LETTER UPSILON",
    "v": "CYRILLIC SMALL LETTER IZHITSA, GREEK SMALL LETTER NU",
    "w": "CYRILLIC SMALL LETTER WE, CYRILLIC SMALL LETTER OMEGA",
    "x": "CYRILLIC SMALL LETTER HA",
    "y": "CYRILLIC SMALL LETTER U, CYRILLIC SMALL LETTER STRAIGHT U, GREEK SMALL LETTER GAMMA",
}
SKELETON = {ord(unicodedata.lookup(name)): latin for latin, names in LOOKALIKES.items() for name in names.split(", ")}
ANY_LOOKALIKE = re.compile("[" + "".join(map(chr, SKELETON)) + "]")  # a scan: 20 times cheaper than translate


def readings(text):
    """(the text as a reader sees it,) or (that, its skeleton): NFKC, without invisible characters, with
    plain dashes and full stops; then each look-alike letter as the Latin letter it looks like."""
    if text.isascii():  # the common case: no table and no NFKC changes an ASCII character
        return (text,)
    text = unicodedata.normalize("NFC", text.translate(PLAIN))
    return (text, text.translate(SKELETON)) if ANY_LOOKALIKE.search(text) else (text,)

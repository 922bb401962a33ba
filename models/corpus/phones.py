"""The project's phone sets and their visemes: the vocabulary every engine's output is mapped to.

English uses the 39 ARPAbet phones (upper case, no stress digits), as festival and flite report
them. Mandarin uses pinyin-based units (lower case): the 21 initials, the nasal coda ``ng`` and
the vowels of the finals, so that a syllable like ``zhuang`` becomes ``zh u a ng``. ``sil`` is
silence or a pause in either language. Upper and lower case keep the two sets apart, so a
recogniser's errors can be scored per language.

Each phone belongs to one viseme class (the 15 Oculus/Meta visemes, which most rigs understand);
`models.corpus.visemes` turns viseme tracks into ARKit blendshape targets.
"""

from __future__ import annotations

from typing import Final, Literal

Language = Literal["en", "zh"]
LANGUAGES: Final[tuple[Language, ...]] = ("en", "zh")

SILENCE: Final = "sil"

# The Oculus/Meta viseme set, in its usual order.
VISEMES: Final[tuple[str, ...]] = (
    "sil",  # neutral, mouth closed
    "PP",  # p b m: lips pressed
    "FF",  # f v: lower lip under the upper teeth
    "TH",  # th dh: tongue between the teeth
    "DD",  # t d: tongue on the ridge, jaw slightly open
    "kk",  # k g: back of the tongue, jaw slightly open
    "CH",  # ch jh sh zh: lips forward, teeth close
    "SS",  # s z: teeth close, lips spread slightly
    "nn",  # n l ng: tongue tip, jaw slightly open
    "RR",  # r: lips slightly rounded
    "aa",  # open vowels
    "E",  # mid front vowels
    "ih",  # close front vowels, lips spread
    "oh",  # mid back rounded vowels
    "ou",  # close back rounded vowels and w
)

ENGLISH_VISEMES: Final[dict[str, str]] = {
    # vowels
    "AA": "aa",
    "AE": "aa",
    "AH": "aa",
    "AO": "oh",
    "AW": "aa",
    "AY": "aa",
    "EH": "E",
    "ER": "RR",
    "EY": "E",
    "IH": "ih",
    "IY": "ih",
    "OW": "oh",
    "OY": "oh",
    "UH": "ou",
    "UW": "ou",
    # consonants
    "B": "PP",
    "CH": "CH",
    "D": "DD",
    "DH": "TH",
    "F": "FF",
    "G": "kk",
    "HH": "kk",
    "JH": "CH",
    "K": "kk",
    "L": "nn",
    "M": "PP",
    "N": "nn",
    "NG": "nn",
    "P": "PP",
    "R": "RR",
    "S": "SS",
    "SH": "CH",
    "T": "DD",
    "TH": "TH",
    "V": "FF",
    "W": "ou",
    "Y": "ih",
    "Z": "SS",
    "ZH": "CH",
}

MANDARIN_VISEMES: Final[dict[str, str]] = {
    # initials
    "b": "PP",
    "p": "PP",
    "m": "PP",
    "f": "FF",
    "d": "DD",
    "t": "DD",
    "n": "nn",
    "l": "nn",
    "g": "kk",
    "k": "kk",
    "h": "kk",
    "j": "CH",
    "q": "CH",
    "x": "CH",
    "zh": "CH",
    "ch": "CH",
    "sh": "CH",
    "r": "RR",
    "z": "SS",
    "c": "SS",
    "s": "SS",
    # coda
    "ng": "nn",
    # vowels of the finals
    "a": "aa",
    "o": "oh",
    "e": "E",  # the mid unrounded vowel of "ge", "hen"
    "ee": "E",  # the front mid vowel of "xie", "yue"
    "er": "RR",
    "i": "ih",
    "ir": "SS",  # the apical vowel after z c s zh ch sh r: teeth stay close
    "u": "ou",
    "v": "ou",  # ü: rounded like u
}

PHONES: Final[dict[Language, tuple[str, ...]]] = {
    "en": tuple(ENGLISH_VISEMES),
    "zh": tuple(MANDARIN_VISEMES),
}

# Vowel openness in [0, 1] (close to open), used for the jaw.
OPENNESS: Final[dict[str, float]] = {
    "AA": 1.0,
    "AE": 0.85,
    "AH": 0.7,
    "AO": 0.75,
    "AW": 0.9,
    "AY": 0.9,
    "EH": 0.55,
    "ER": 0.35,
    "EY": 0.45,
    "IH": 0.25,
    "IY": 0.15,
    "OW": 0.5,
    "OY": 0.6,
    "UH": 0.3,
    "UW": 0.2,
    "a": 1.0,
    "o": 0.55,
    "e": 0.5,
    "ee": 0.45,
    "er": 0.35,
    "i": 0.15,
    "ir": 0.12,
    "u": 0.2,
    "v": 0.15,
}

VOWELS: Final[frozenset[str]] = frozenset(OPENNESS)

# CTC vocabulary: index 0 is the blank, 1 silence, then English and Mandarin phones.
BLANK: Final = "<blank>"
VOCABULARY: Final[tuple[str, ...]] = (BLANK, SILENCE, *PHONES["en"], *PHONES["zh"])
PHONE_INDEX: Final[dict[str, int]] = {phone: i for i, phone in enumerate(VOCABULARY)}


def viseme(phone: str) -> str:
    """The viseme class of a project phone (``sil`` for silence)."""
    if phone == SILENCE:
        return "sil"
    found = ENGLISH_VISEMES.get(phone) or MANDARIN_VISEMES.get(phone)
    if found is None:
        raise KeyError(f"unknown phone {phone!r}; see models.corpus.phones.VOCABULARY")
    return found


def language_of(phone: str) -> Language | None:
    """``en`` or ``zh`` for a phone, None for silence."""
    if phone == SILENCE:
        return None
    if phone in ENGLISH_VISEMES:
        return "en"
    if phone in MANDARIN_VISEMES:
        return "zh"
    raise KeyError(f"unknown phone {phone!r}; see models.corpus.phones.VOCABULARY")

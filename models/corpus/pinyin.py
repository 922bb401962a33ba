"""Chinese text to numbered pinyin, and pinyin syllables to the project's Mandarin phone units.

`hanzi_to_pinyin` reads characters with `pypinyin` (its phrase dictionary picks the reading of a
polyphonic character from the word around it: 银行 yin2 hang2, 行走 xing2 zou3) and writes
numbered syllables, the neutral tone as 5, which is what espeak-ng's ``cmn-latn-pinyin`` voice
reads. `syllable_units` splits one syllable into the units of `models.corpus.phones`: the initial,
then the vowels and coda of the final as spelled once the spelling conventions are undone::

    zhuang4 -> zh u a ng      yue4 -> v ee      xian1 -> x i a n      si4 -> s ir
    wei4    -> u ee i         you3 -> i o u     jiong3 -> j i o ng    er4 -> er

The y/w glides become i/u/v, ``u`` after j q x (and the y- syllables yu, yue, yuan, yun) is ü
(``v``), and ``i`` after z c s zh ch sh r is the apical vowel ``ir``.
"""

from __future__ import annotations

import logging
import re
from typing import Final

logger = logging.getLogger(__name__)

NEUTRAL_TONE: Final = 5

INITIALS: Final[tuple[str, ...]] = (
    # two-letter initials first, so that "zh" is never read as "z" + "h..."
    "zh",
    "ch",
    "sh",
    "b",
    "p",
    "m",
    "f",
    "d",
    "t",
    "n",
    "l",
    "g",
    "k",
    "h",
    "j",
    "q",
    "x",
    "r",
    "z",
    "c",
    "s",
)

# Finals in their underlying spelling (ü as v, the full forms iou/uei/uen), as project units.
# "ian" keeps its spelled "a" and "ei" uses the front "ee" of "ie": the units describe the mouth
# shape of the spelled vowel, which is what the viseme tables are written for.
FINALS: Final[dict[str, tuple[str, ...]]] = {
    "a": ("a",),
    "o": ("o",),
    "e": ("e",),
    "ê": ("ee",),
    "er": ("er",),
    "ai": ("a", "i"),
    "ei": ("ee", "i"),
    "ao": ("a", "o"),
    "ou": ("o", "u"),
    "an": ("a", "n"),
    "en": ("e", "n"),
    "ang": ("a", "ng"),
    "eng": ("e", "ng"),
    "ong": ("o", "ng"),
    "i": ("i",),
    "ia": ("i", "a"),
    "io": ("i", "o"),
    "ie": ("i", "ee"),
    "iao": ("i", "a", "o"),
    "iou": ("i", "o", "u"),
    "ian": ("i", "a", "n"),
    "in": ("i", "n"),
    "iang": ("i", "a", "ng"),
    "ing": ("i", "ng"),
    "iong": ("i", "o", "ng"),
    "u": ("u",),
    "ua": ("u", "a"),
    "uo": ("u", "o"),
    "uai": ("u", "a", "i"),
    "uei": ("u", "ee", "i"),
    "uan": ("u", "a", "n"),
    "uen": ("u", "e", "n"),
    "uang": ("u", "a", "ng"),
    "ueng": ("u", "e", "ng"),
    "uong": ("u", "o", "ng"),
    "v": ("v",),
    "ve": ("v", "ee"),
    "van": ("v", "a", "n"),
    "vn": ("v", "n"),
}

# Syllables without a vowel (interjections such as 嗯 n, 呣 m, 哼 hng).
_NASAL_SYLLABLES: Final[dict[str, tuple[str, ...]]] = {
    "m": ("m",),
    "n": ("n",),
    "ng": ("ng",),
    "hm": ("h", "m"),
    "hng": ("h", "ng"),
}

# Written abbreviations of the full finals after an initial (gui = g + uei).
_CONTRACTED: Final[dict[str, str]] = {"iu": "iou", "ui": "uei", "un": "uen"}

_APICAL_INITIALS: Final = frozenset({"z", "c", "s", "zh", "ch", "sh", "r"})
_PALATAL_INITIALS: Final = frozenset({"j", "q", "x"})
_U_UMLAUT_INITIALS: Final = frozenset({"", "n", "l", "j", "q", "x"})

_SYLLABLE = re.compile(r"^([a-zêü]+)([1-5])?$")
_READING = re.compile(r"^[a-zêü]+[1-5]$")  # what pypinyin writes for one character

# Chinese punctuation to the ASCII marks espeak-ng pauses on.
_PUNCTUATION: Final[dict[str, str]] = {
    "\uff0c": ",",  # full-width comma
    "\u3001": ",",  # enumeration comma
    "\u3002": ".",  # full stop
    "\uff1f": "?",
    "\uff01": "!",
    "\uff1b": ";",
    "\uff1a": ":",
    ",": ",",
    ".": ".",
    "?": "?",
    "!": "!",
    ";": ";",
    ":": ":",
}


class PinyinError(ValueError):
    """A syllable or character that cannot be read as Mandarin pinyin."""


def split_syllable(syllable: str) -> tuple[str, str, int | None]:
    """``(initial, final, tone)`` of a pinyin syllable, the final in its underlying spelling.

    ``syllable`` is lower-case pinyin with an optional tone digit 1-5 (``"zhuang4"``, ``"lv3"``,
    ``"lü3"``, ``"er"``). The initial is ``""`` for zero-initial syllables; glides are undone
    (``"yue4"`` -> ``("", "ve", 4)``, ``"wei4"`` -> ``("", "uei", 4)``) and contractions
    expanded (``"gui4"`` -> ``("g", "uei", 4)``). Raises `PinyinError` for anything else.
    """
    match = _SYLLABLE.match(syllable.strip().lower())
    if match is None:
        raise PinyinError(
            f"{syllable!r} is not a pinyin syllable; expected lower-case letters with an "
            "optional tone digit 1-5, e.g. 'zhong1' or 'lv4'"
        )
    body = match.group(1).replace("ü", "v")
    tone = int(match.group(2)) if match.group(2) else None
    if body in _NASAL_SYLLABLES:
        return "", body, tone
    initial = next((i for i in INITIALS if body.startswith(i) and len(body) > len(i)), "")
    final = body[len(initial) :]
    if initial == "":
        final = _undo_glide(final, syllable)
    elif initial in _PALATAL_INITIALS and final.startswith("u"):
        # j q x never take u, so a written u after them is ü.
        final = "v" + final[1:]
    final = _CONTRACTED.get(final, final) if initial else final
    if final not in FINALS and not _is_erhua(final):
        raise PinyinError(f"{syllable!r}: {final!r} is not a pinyin final")
    if final.startswith("v") and initial not in _U_UMLAUT_INITIALS:
        raise PinyinError(f"{syllable!r}: ü never follows the initial {initial!r}")
    return initial, final, tone


def _undo_glide(final: str, syllable: str) -> str:
    """The final of a zero-initial syllable: yue -> ve, you -> iou, wei -> uei, wu -> u."""
    if final.startswith("yu"):
        return "v" + final[2:]
    if final.startswith("yi"):
        return final[1:]
    if final.startswith("y"):
        rest = final[1:]
        return {"ou": "iou"}.get(rest, "i" + rest)
    if final.startswith("wu"):
        return final[1:]
    if final.startswith("w"):
        rest = final[1:]
        return {"ei": "uei", "en": "uen", "eng": "ueng"}.get(rest, "u" + rest)
    if final in FINALS or _is_erhua(final):
        return final
    raise PinyinError(f"{syllable!r} is not a pinyin syllable")


def _is_erhua(final: str) -> bool:
    """A final with the rhotacised suffix -r (hua + r = huar), which reads as final + er."""
    return final != "er" and final.endswith("r") and _base_final(final[:-1]) in FINALS


def _base_final(final: str) -> str:
    return _CONTRACTED.get(final, final)


def syllable_units(syllable: str) -> tuple[str, ...]:
    """The project units of one pinyin syllable, tone ignored: ``"zhuang4"`` -> zh u a ng."""
    initial, final, _ = split_syllable(syllable)
    if not initial and final in _NASAL_SYLLABLES:
        return _NASAL_SYLLABLES[final]
    suffix: tuple[str, ...] = ()
    if _is_erhua(final):
        final, suffix = _base_final(final[:-1]), ("er",)
    units = FINALS[final]
    if final == "i" and initial in _APICAL_INITIALS:
        units = ("ir",)
    return ((initial,) if initial else ()) + units + suffix


def hanzi_to_pinyin(text: str) -> str:
    """Chinese characters to numbered pinyin: ``"你好。"`` -> ``"ni3 hao3."``.

    Syllables are separated by spaces, tones written as digits 1-5 (5 for the neutral tone) and
    Chinese punctuation replaced by its ASCII counterpart. Raises `PinyinError` for characters
    that are neither Chinese nor punctuation (Latin words, digits): write them out in
    characters first.
    """
    from pypinyin import Style, lazy_pinyin

    pieces: list[str] = []
    # pypinyin passes runs of non-Chinese characters through unchanged ("default" errors).
    for item in lazy_pinyin(text, style=Style.TONE3, neutral_tone_with_five=True):
        if _READING.match(item) is not None:
            split_syllable(item)
            pieces.append(item)
            continue
        for char in item:
            if char.isspace():
                continue
            if char not in _PUNCTUATION:
                raise PinyinError(
                    f"{char!r} in {text!r} is neither a Chinese character nor punctuation; "
                    "write numbers and foreign words in characters"
                )
            # A pause mark joins the syllable before it; a repeated or leading mark adds
            # nothing espeak-ng would read differently.
            if pieces and pieces[-1][-1].isdigit():
                pieces[-1] += _PUNCTUATION[char]
    if not pieces:
        raise PinyinError(f"no Chinese syllables in {text!r}")
    return " ".join(pieces)


def pinyin_syllables(pinyin: str) -> list[str]:
    """The syllables of numbered pinyin text, punctuation dropped: ``"ni3 hao3."`` -> 2 items."""
    return [word for word in re.split(r"[\s,.?!;:]+", pinyin) if word]

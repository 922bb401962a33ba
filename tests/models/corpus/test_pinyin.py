"""Pinyin reading of characters and the syllable -> project unit splitter."""

from __future__ import annotations

import pytest

from models.corpus.phones import PHONES
from models.corpus.pinyin import (
    FINALS,
    PinyinError,
    hanzi_to_pinyin,
    pinyin_syllables,
    split_syllable,
    syllable_units,
)


@pytest.mark.parametrize(
    ("syllable", "units"),
    [
        ("zhuang4", ("zh", "u", "a", "ng")),
        ("chuan2", ("ch", "u", "a", "n")),
        ("shui3", ("sh", "u", "ee", "i")),  # ui is uei
        ("gui4", ("g", "u", "ee", "i")),
        ("liu2", ("l", "i", "o", "u")),  # iu is iou
        ("dun4", ("d", "u", "e", "n")),  # un is uen after d
        ("jun1", ("j", "v", "n")),  # but ün after j
        ("qu4", ("q", "v")),  # u after q is ü
        ("xue2", ("x", "v", "ee")),
        ("lv4", ("l", "v")),
        ("lü4", ("l", "v")),
        ("nve4", ("n", "v", "ee")),
        ("yu2", ("v",)),  # y glide before ü
        ("yue4", ("v", "ee")),
        ("yuan2", ("v", "a", "n")),
        ("yun2", ("v", "n")),
        ("yi1", ("i",)),
        ("ying1", ("i", "ng")),
        ("you3", ("i", "o", "u")),
        ("yan4", ("i", "a", "n")),
        ("yong3", ("i", "o", "ng")),
        ("jiong3", ("j", "i", "o", "ng")),
        ("wu3", ("u",)),  # w glide before u
        ("wei4", ("u", "ee", "i")),
        ("wen2", ("u", "e", "n")),
        ("weng1", ("u", "e", "ng")),
        ("wo3", ("u", "o")),
        ("zi4", ("z", "ir")),  # apical vowels
        ("ci2", ("c", "ir")),
        ("si1", ("s", "ir")),
        ("zhi1", ("zh", "ir")),
        ("chi1", ("ch", "ir")),
        ("shi4", ("sh", "ir")),
        ("ri4", ("r", "ir")),
        ("ji1", ("j", "i")),  # but not after j q x
        ("xian1", ("x", "i", "a", "n")),
        ("er4", ("er",)),
        ("e4", ("e",)),
        ("ai4", ("a", "i")),
        ("ang2", ("a", "ng")),
        ("ng2", ("ng",)),
        ("hm", ("h", "m")),
        ("huar1", ("h", "u", "a", "er")),  # erhua
        ("bo1", ("b", "o")),
    ],
)
def test_tricky_syllables_split_into_project_units(syllable: str, units: tuple[str, ...]) -> None:
    assert syllable_units(syllable) == units


def test_every_final_uses_only_project_units() -> None:
    mandarin = set(PHONES["zh"])
    for final, units in FINALS.items():
        assert set(units) <= mandarin, final


def test_split_syllable_undoes_spelling_rules_and_keeps_the_tone() -> None:
    assert split_syllable("wei4") == ("", "uei", 4)
    assert split_syllable("gui4") == ("g", "uei", 4)
    assert split_syllable("ju2") == ("j", "v", 2)
    assert split_syllable("ma") == ("m", "a", None)


@pytest.mark.parametrize("bad", ["", "xyz3", "zhv1", "ma6", "Hello", "3", "bue2"])
def test_invalid_syllables_raise(bad: str) -> None:
    with pytest.raises(PinyinError):
        syllable_units(bad)


@pytest.mark.parametrize(
    ("text", "pinyin"),
    [
        ("我去银行取钱。", "wo3 qu4 yin2 hang2 qu3 qian2."),
        ("他在路上行走。", "ta1 zai4 lu4 shang4 xing2 zou3."),
        ("音乐让人快乐。", "yin1 yue4 rang4 ren2 kuai4 le4."),
        (
            "这很重要\uff0c我们重新开始吧\uff01",
            "zhe4 hen3 zhong4 yao4, wo3 men5 chong2 xin1 kai1 shi3 ba5!",
        ),
        ("我觉得要睡觉了。", "wo3 jue2 de5 yao4 shui4 jiao4 le5."),
        ("还有\uff0c把书还给我。", "hai2 you3, ba3 shu1 huan2 gei3 wo3."),
        ("首都的朋友都来了。", "shou3 du1 de5 peng2 you3 dou1 lai2 le5."),
    ],
)
def test_polyphonic_characters_read_from_their_word(text: str, pinyin: str) -> None:
    assert hanzi_to_pinyin(text) == pinyin


def test_neutral_tone_is_five_and_v_stands_for_u_umlaut() -> None:
    assert hanzi_to_pinyin("绿色的") == "lv4 se4 de5"


def test_non_chinese_text_raises_with_the_offending_character() -> None:
    with pytest.raises(PinyinError, match="'3'"):
        hanzi_to_pinyin("我有3个苹果")
    with pytest.raises(PinyinError, match="no Chinese"):
        hanzi_to_pinyin("。")


def test_pinyin_syllables_drop_punctuation() -> None:
    assert pinyin_syllables("ni3 hao3, shi4 jie4.") == ["ni3", "hao3", "shi4", "jie4"]

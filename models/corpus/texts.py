"""Sentences for the synthetic corpus: template grammars for English and Mandarin.

Each language has a few dozen sentence templates and word lists chosen for phonetic coverage:
every ARPAbet phone, plenty of bilabials (p b m), labiodentals (f v), rounded and spread vowels
in English; all initials, the ü and apical finals and the nasal codas in Mandarin (written in
characters, read with `models.corpus.pinyin`). Filling the slots gives millions of distinct
sentences of about 1-8 s when spoken.

The sentence space is split once and for all by a hash of the text: a sentence belongs to the
held-out pool when ``crc32(text) % HELD_OUT_MODULUS == 0``. The training and held-out pools can
therefore never share a sentence, whatever the seeds that drew them.
"""

from __future__ import annotations

import logging
import random
import re
import zlib
from collections.abc import Iterator, Sequence
from typing import Final, Literal

from models.corpus.phones import LANGUAGES, Language

logger = logging.getLogger(__name__)

Pool = Literal["train", "held_out"]
POOLS: Final[tuple[Pool, ...]] = ("train", "held_out")
HELD_OUT_MODULUS: Final = 8  # one sentence in 8 is held out
MAX_ENGLISH_WORDS: Final = 18  # under 7 s at espeak's default 175 words per minute
MIN_MANDARIN_CHARS: Final = 5
MAX_MANDARIN_CHARS: Final = 22  # espeak speaks about 4 syllables per second
_MAX_DRAWS_PER_SENTENCE: Final = 200


def _items(text: str) -> tuple[str, ...]:
    """Word-list literal: ``"a | b c | d"`` -> ``("a", "b c", "d")``."""
    return tuple(item.strip() for item in text.split("|") if item.strip())


def _pairs(text: str) -> tuple[tuple[str, str], ...]:
    """Paired word-list literal: ``"find/found | buy/bought"`` -> ``(("find", "found"), ...)``."""
    pairs = []
    for item in _items(text):
        first, _, second = item.partition("/")
        pairs.append((first.strip(), second.strip()))
    return tuple(pairs)


# --- English ---------------------------------------------------------------------------------

_EN_NAMES: Final = _items(
    "Bob | Maria | Thomas | Judy | Vivian | Oliver | Zoe | George | Hugo | Sophia | "
    "Martha | Joshua | Philip | Yvonne | Charlotte | Owen | Ruth | Peter | Valerie | "
    "Matthew | Aisha | Boris | Fiona | Victor | Moira | Paul | Beth | Joy | Mabel | "
    "Arthur | Heather | Uma | Jasmine | Chloe | Theo | Pablo | Wendy | Freddie"
)
_EN_PEOPLE: Final = _items(
    "my brother | the young teacher | our neighbour | the baker | my mother | "
    "the old fisherman | her cousin | the pilot | his father | the museum guide | "
    "the farmer | my best friend | the shy boy | the tall woman | the police officer | "
    "the nurse | our manager | the chef | your sister | the plumber | the musician | "
    "the journalist | the new driver | a tourist | the shop owner | the gardener"
)
_EN_ADJECTIVES: Final = _items(
    "purple | heavy | smooth | beautiful | yellow | shiny | tiny | enormous | cheap | "
    "quiet | fresh | rough | thick | frozen | golden | wooden | curious | pleasant | "
    "brown | blue | bright | soft | warm | boiling | huge | muddy | noisy | round | "
    "smelly | valuable | plain | vivid | broken | perfect | famous | foolish | awful | "
    "zigzag | leather | velvet | orange | woollen | bumpy | fluffy | modern | lovely | "
    "pink | ugly | older | narrow | loyal | juicy | chilly | measured | usual"
)
_EN_NOUNS: Final = _pairs(
    # singular/plural
    "book/books | violin/violins | bicycle/bicycles | sandwich/sandwiches | "
    "jacket/jackets | mirror/mirrors | treasure map/treasure maps | pillow/pillows | "
    "coin/coins | toy/toys | cheese board/cheese boards | umbrella/umbrellas | "
    "feather/feathers | bottle/bottles | puzzle/puzzles | shoe/shoes | kite/kites | "
    "boat/boats | vase/vases | watch/watches | fish/fish | pumpkin/pumpkins | "
    "basket/baskets | hammer/hammers | phone/phones | envelope/envelopes | "
    "cushion/cushions | bridge model/bridge models | mushroom/mushrooms | "
    "moonstone/moonstones | saucepan/saucepans | oyster/oysters | giraffe/giraffes | "
    "thermometer/thermometers | cowboy hat/cowboy hats | blueberry pie/blueberry pies | "
    "television/televisions | garage door/garage doors | wool scarf/wool scarves | "
    "cookbook/cookbooks | chessboard/chessboards | yoghurt/yoghurts | "
    "bath towel/bath towels | paintbrush/paintbrushes | lamp/lamps | "
    "sugar bowl/sugar bowls | voice message/voice messages | necklace/necklaces"
)
_EN_VERBS: Final = _pairs(
    # base/past
    "find/found | buy/bought | wash/washed | measure/measured | paint/painted | "
    "borrow/borrowed | throw/threw | choose/chose | fix/fixed | push/pushed | "
    "carry/carried | bring/brought | move/moved | polish/polished | watch/watched | "
    "share/shared | open/opened | hide/hid | drop/dropped | sell/sold | fetch/fetched | "
    "grab/grabbed | weigh/weighed | lose/lost | deliver/delivered | examine/examined | "
    "fold/folded | judge/judged | wrap/wrapped | photograph/photographed | "
    "return/returned | leave/left | juggle/juggled | steal/stole | pack/packed"
)
_EN_PLACES: Final = _items(
    "in the kitchen | at the zoo | near the bridge | by the river | "
    "under the old oak tree | on the beach | at the museum | in the garage | "
    "behind the church | at the bus stop | in the garden | on the top shelf | "
    "at the market | in the bathroom | by the window | at the theatre | in the village | "
    "on the boat | at the airport | in the forest | near the playground | at school | "
    "in the basement | on the balcony | at the office | in the library | "
    "at the swimming pool | behind the sofa | in the hallway"
)
_EN_TIMES: Final = _items(
    "this morning | yesterday | every Thursday | after lunch | in the evening | "
    "last November | before the show | on Monday | at midnight | during the summer | "
    "two weeks ago | at noon | every weekend | on her birthday | in the spring | "
    "after the storm | early today | last year | tonight | at half past five"
)
_EN_ADVERBS: Final = _items(
    "quickly | slowly | carefully | happily | quietly | proudly | suddenly | gently | "
    "nervously | eagerly | bravely | calmly | boldly | joyfully | patiently"
)
_EN_ACTIVITIES: Final = _items(
    "swimming | singing | reading | fishing | cooking | painting | jogging | dancing | "
    "playing the violin | baking bread | riding a bike | watching movies | playing chess | "
    "building sandcastles | feeding the ducks | learning French | solving puzzles"
)
_EN_WEATHER: Final = _items(
    "awful | freezing | very windy | too hot | rainy and grey | foggy | beautiful | "
    "surprisingly mild | cloudy | stormy"
)
_EN_EXCLAMATIONS: Final = _items("Oh boy | Wow | Oh no | Look | Goodness me | Hooray | Well")
_EN_FEELINGS: Final = _items(
    "was very happy | felt a little tired | thought it was funny | was quite surprised | "
    "looked worried | smiled proudly | laughed out loud | was thrilled | felt sleepy"
)
_EN_TEMPLATES: Final = (
    "{Subject} {past} {obj} {place}.",
    "{Subject} {past} {obj} {time}.",
    "{Time}, {subject} {past} {obj} {place}.",
    "Did {subject} {base} {obj} {place}?",
    "Why did {subject} {base} {obj} {time}?",
    "Please {base} {obj} {place}.",
    "{Subject} said that {obj} was {adj}.",
    "I think {obj} {place} looks {adj}.",
    "{Subject} {adverb} {past} {obj}, and everybody {feeling}.",
    "How many {plural} did {subject} {base} {time}?",
    "We should {base} {obj} {adverb}.",
    "{Name}, could you {base} {obj} for me?",
    "There were {count} {adj} {plural} {place}.",
    "{Subject} loves {activity} {place} {time}.",
    "The weather was {weather}, so {subject} stayed {place}.",
    "{Exclamation}! {Subject} {past} {obj} again.",
    "Is {obj} {adj} or {adj2}?",
    "{Subject} will {base} {obj} {time}.",
    "{Name} and {name2} {past} {obj} {place}.",
    "When {subject} {past} {obj}, everybody {feeling2}.",
    "{Subject} never {past} {obj} {place}.",
    "Maybe {subject} could {base} the {adj} {plural} {time}.",
    "{Time}, {subject} {past} {obj} {place}, but {name2} {past2} {obj2}.",
    "After {subject} {past} {obj}, {name2} {adverb} {past2} {obj2} {place}.",
)
_EN_COUNTS: Final = _items("two | three | four | five | seven | nine | twelve | many | several")
_EN_DETERMINERS: Final = _items("the | a | my | our | his | her | this | that | your")


def _indefinite(word: str) -> str:
    """English a/an before ``word``: "an" before a vowel sound (approximated by spelling)."""
    yu_sound = word.startswith(("use", "usu", "uni", "eu"))
    return "an" if word[0] in "aeiou" and not yu_sound else "a"


def _english_object(rng: random.Random, plural: bool = False) -> str:
    singular, plural_form = rng.choice(_EN_NOUNS)
    noun = plural_form if plural else singular
    words = [rng.choice(_EN_ADJECTIVES), noun] if rng.random() < 0.6 else [noun]
    determiner = rng.choice(_EN_DETERMINERS)
    if plural:
        determiner = {"a": "some", "this": "these", "that": "those"}.get(determiner, determiner)
    elif determiner == "a":
        determiner = _indefinite(words[0])
    return " ".join([determiner, *words])


def _english_subject(rng: random.Random) -> str:
    return rng.choice(_EN_NAMES) if rng.random() < 0.5 else rng.choice(_EN_PEOPLE)


def _english_sentence(rng: random.Random) -> str:
    template = rng.choice(_EN_TEMPLATES)
    (base, past), (_, past2) = rng.sample(_EN_VERBS, 2)
    subject = _english_subject(rng)
    time = rng.choice(_EN_TIMES)
    adjective, adjective2 = rng.sample(_EN_ADJECTIVES, 2)
    name, name2 = rng.sample(_EN_NAMES, 2)
    slots = {
        "subject": subject,
        "Subject": subject[0].upper() + subject[1:],
        "base": base,
        "past": past,
        "past2": past2,
        "obj": _english_object(rng),
        "obj2": _english_object(rng),
        "plural": rng.choice(_EN_NOUNS)[1],
        "place": rng.choice(_EN_PLACES),
        "time": time,
        "Time": time[0].upper() + time[1:],
        "adj": adjective,
        "adj2": adjective2,
        "adverb": rng.choice(_EN_ADVERBS),
        "feeling": rng.choice(_EN_FEELINGS),
        "feeling2": rng.choice(_EN_FEELINGS),
        "name": name,
        "Name": name,
        "name2": name2,
        "count": rng.choice(_EN_COUNTS),
        "activity": rng.choice(_EN_ACTIVITIES),
        "weather": rng.choice(_EN_WEATHER),
        "Exclamation": rng.choice(_EN_EXCLAMATIONS),
    }
    return template.format(**slots)


# --- Mandarin --------------------------------------------------------------------------------

_ZH_PEOPLE: Final = _items(
    "我 | 你 | 他 | 她 | 我们 | 他们 | 老师 | 妈妈 | 爸爸 | 哥哥 | 姐姐 | 弟弟 | 妹妹 | 爷爷 | "
    "奶奶 | 小明 | 小红 | 王先生 | 李阿姨 | 张医生 | 同学们 | 邻居 | 我的朋友 | 这个学生 | "
    "那位司机 | 周经理 | 陈叔叔 | 小丽 | 他的儿子 | 王奶奶的女儿 | 客人 | 出租车司机"
)
_ZH_TIMES: Final = _items(
    "今天 | 明天 | 昨天 | 早上 | 晚上 | 下午 | 周末 | 星期三 | 去年 | 刚才 | 现在 | "
    "春天的时候 | 中午 | 上个月 | 放学以后 | 吃完饭以后 | 下个星期 | 前天 | 二月 | 日出以前"
)
_ZH_PLACES: Final = _items(
    "学校 | 公园 | 图书馆 | 超市 | 厨房 | 火车站 | 银行 | 医院 | 河边 | 山上 | 家里 | 办公室 | "
    "操场 | 咖啡馆 | 动物园 | 体育馆 | 电影院 | 饭馆 | 书店 | 海边 | 花园 | 宿舍 | 广场 | "
    "菜市场"
)
_ZH_ACTIONS: Final = _items(
    "看书 | 吃饭 | 喝茶 | 买水果 | 写作业 | 听音乐 | 打篮球 | 踢足球 | 唱歌 | 跳舞 | 画画 | "
    "做饭 | 洗衣服 | 骑自行车 | 学习中文 | 取钱 | 种花 | 钓鱼 | 照相 | 看电影 | 打电话 | "
    "休息 | 跑步 | 游泳 | 包饺子 | 准备考试 | 修电脑 | 讨论问题 | 收拾房间 | 扫地 | 弹钢琴 | "
    "喂小狗 | 散步 | 聊天 | 排队 | 复习课文 | 练习书法 | 晒太阳 | 等公共汽车 | 选礼物 | "
    "擦窗户 | 吹泡泡 | 拍照片 | 玩游戏 | 买菜 | 读报纸"
)
_ZH_NOUNS: Final = _items(
    "苹果 | 西瓜 | 面包 | 牛奶 | 衣服 | 书包 | 电脑 | 手机 | 雨伞 | 小狗 | 小猫 | 熊猫 | "
    "月亮 | 房子 | 汽车 | 桌子 | 椅子 | 窗户 | 裙子 | 鞋子 | 帽子 | 眼镜 | 礼物 | 报纸 | "
    "杂志 | 鸡蛋 | 米饭 | 饺子 | 葡萄 | 橘子 | 蛋糕 | 咖啡 | 绿茶 | 鱼 | 自行车 | 钢琴 | "
    "词典 | 照片 | 被子 | 毛衣 | 白菜 | 包子 | 玩具 | 地图 | 铅笔 | 花瓶 | 火锅 | 风筝 | 熊 | "
    "老虎 | 耳机 | 肉包子 | 日记 | 草莓 | 菜单 | 啤酒 | 扑克牌 | 裤子 | 森林公园的门票"
)
_ZH_ADJECTIVES: Final = _items(
    "高兴 | 漂亮 | 干净 | 安静 | 热闹 | 便宜 | 好吃 | 舒服 | 重要 | 困难 | 简单 | 有意思 | "
    "可爱 | 凉快 | 暖和 | 辛苦 | 着急 | 紧张 | 开心 | 奇怪 | 聪明 | 认真 | 快乐 | 远 | 冷 | "
    "热 | 贵 | 忙 | 累 | 新鲜 | 特别 | 普通 | 方便 | 危险 | 软 | 胖 | 瘦 | 旧 | 绿 | 圆"
)
_ZH_ADVERBS: Final = _items("很 | 非常 | 特别 | 真 | 有点 | 比较 | 太 | 挺")
_ZH_LOCATIONS: Final = _items(
    "桌子上 | 椅子下面 | 书包里 | 窗户旁边 | 冰箱里 | 门口 | 床上 | 柜子里 | 车上 | 沙发后面"
)
_ZH_AMOUNTS: Final = _items("一些 | 很多 | 不少 | 两斤 | 三公斤 | 好几个")
_ZH_FEELINGS: Final = _items(
    "高兴 | 着急 | 紧张 | 开心 | 累 | 忙 | 辛苦 | 认真 | 快乐 | 饿 | 渴 | 满意 | 难过 | 害怕"
)
# Written with ASCII punctuation (ruff flags full-width marks in source as look-alikes) and
# turned into Chinese punctuation by `_ZH_PUNCTUATION` when a sentence is drawn.
_ZH_TEMPLATES: Final = (
    "{time}{person}在{place}{action}.",
    "{person}{time}在{place}{action}.",
    "{person}觉得这个{noun}{adverb}{adj}.",
    "你{time}想不想去{place}{action}?",
    "{person}每天都在{place}{action}.",
    "{person}说{noun}{adverb}{adj}.",
    "我们{time}一起去{place}{action}吧!",
    "{person}把{noun}放在{location}了.",
    "为什么{person}{time}不去{place}{action}?",
    "{person}{time}买了{amount}{noun}.",
    "{place}的{noun}{adverb}{adj}.",
    "{person}正在{action},{person2}在{action2}.",
    "如果{time}下雨,{person}就在{place}{action}.",
    "{person}喜欢{action},也喜欢{action2}.",
    "{person}的{noun}是不是在{location}?",
    "{time}的{noun}{adverb}{adj},{person}{adverb2}{feeling}.",
    "{person}要去{place}{action},所以没有时间{action2}.",
    "听说{person}{time}在{place}丢了{noun}.",
)
_ZH_PUNCTUATION: Final = str.maketrans({",": "\uff0c", ".": "\u3002", "?": "\uff1f", "!": "\uff01"})

_ENGLISH_WORD = re.compile(r"[A-Za-z']+")


def _mandarin_sentence(rng: random.Random) -> str:
    template = rng.choice(_ZH_TEMPLATES)
    person, person2 = rng.sample(_ZH_PEOPLE, 2)
    action, action2 = rng.sample(_ZH_ACTIONS, 2)
    adjective, adjective2 = rng.sample(_ZH_ADJECTIVES, 2)
    sentence = template.format(
        time=rng.choice(_ZH_TIMES),
        person=person,
        person2=person2,
        place=rng.choice(_ZH_PLACES),
        action=action,
        action2=action2,
        noun=rng.choice(_ZH_NOUNS),
        adj=adjective,
        adj2=adjective2,
        adverb=rng.choice(_ZH_ADVERBS),
        adverb2=rng.choice(_ZH_ADVERBS),
        location=rng.choice(_ZH_LOCATIONS),
        amount=rng.choice(_ZH_AMOUNTS),
        feeling=rng.choice(_ZH_FEELINGS),
    )
    return sentence.translate(_ZH_PUNCTUATION)


def _spoken_size(language: Language, text: str) -> int:
    """Words (English) or characters without punctuation (Mandarin)."""
    if language == "en":
        return len(_ENGLISH_WORD.findall(text))
    return sum(1 for ch in text if "\u4e00" <= ch <= "\u9fff")


def _fits(language: Language, text: str) -> bool:
    size = _spoken_size(language, text)
    if language == "en":
        return size <= MAX_ENGLISH_WORDS
    return MIN_MANDARIN_CHARS <= size <= MAX_MANDARIN_CHARS


# --- pools -----------------------------------------------------------------------------------


def is_held_out(text: str) -> bool:
    """Whether ``text`` belongs to the held-out pool (a fixed hash of the text decides)."""
    return zlib.crc32(text.encode("utf-8")) % HELD_OUT_MODULUS == 0


def _check_language(language: str) -> Language:
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}; choose from {list(LANGUAGES)}")
    return language


def _check_pool(pool: str) -> Pool:
    if pool not in POOLS:
        raise ValueError(f"unknown sentence pool {pool!r}; choose from {list(POOLS)}")
    return pool


def sentences(language: Language, count: int, seed: int, pool: Pool = "train") -> list[str]:
    """``count`` distinct sentences of ``language`` from ``pool``, the same for the same seed.

    English sentences are plain text; Mandarin ones are in characters with Chinese punctuation
    (convert with `models.corpus.pinyin.hanzi_to_pinyin` for espeak-ng).
    """
    language = _check_language(language)
    pool = _check_pool(pool)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    # A string seed is hashed with SHA-512 by `random`, so streams are stable across runs and
    # Python versions and differ per language and pool.
    rng = random.Random(f"pmmtalk-texts/{seed}/{language}/{pool}")
    draw = _english_sentence if language == "en" else _mandarin_sentence
    held_out = pool == "held_out"
    chosen: list[str] = []
    seen: set[str] = set()
    for _ in range(max(count, 1) * _MAX_DRAWS_PER_SENTENCE):
        if len(chosen) == count:
            break
        text = draw(rng)
        if text in seen or is_held_out(text) != held_out or not _fits(language, text):
            continue
        seen.add(text)
        chosen.append(text)
    if len(chosen) < count:
        raise ValueError(
            f"could only draw {len(chosen)} distinct {language} sentences of the {pool} pool; "
            f"ask for fewer than {count}"
        )
    return chosen


def sentence_pairs(
    count: int,
    seed: int,
    languages: Sequence[Language] = LANGUAGES,
    english_fraction: float = 0.7,
    pool: Pool = "train",
) -> Iterator[tuple[Language, str]]:
    """``count`` ``(language, text)`` pairs, English with probability ``english_fraction``.

    With a single language every pair is in that language. Deterministic in ``seed``.
    """
    chosen = [_check_language(language) for language in dict.fromkeys(languages)]
    if not chosen:
        raise ValueError("give at least one language")
    if not 0.0 <= english_fraction <= 1.0:
        raise ValueError(f"english_fraction must lie in [0, 1], got {english_fraction}")
    rng = random.Random(f"pmmtalk-languages/{seed}/{pool}")
    picks: list[Language]
    if len(chosen) == 1:
        picks = [chosen[0]] * count
    else:
        picks = ["en" if rng.random() < english_fraction else "zh" for _ in range(count)]
    texts = {
        language: iter(sentences(language, picks.count(language), seed, pool))
        for language in chosen
    }
    for language in picks:
        yield language, next(texts[language])

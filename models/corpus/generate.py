"""The synthetic training corpus: TTS speech with phone tables and blendshape targets.

`generate_corpus` draws every utterance's sentence, engine, voice, speaking rate, pitch and
padding from the seed before anything is synthesised (`plan_corpus`), so the corpus does not
depend on the number of workers or the order they finish in: the same seed gives a
byte-identical manifest and targets. Each utterance is then

1. synthesised (`models.corpus.espeak`, `festival`, `flite`; Mandarin through pinyin),
2. padded with 0.1-0.6 s of silence at each end,
3. turned into (T, 32) targets by `models.corpus.visemes.targets_from_phones` with the voice's
   style index, T = `num_frames` of the padded audio,
4. augmented by `models.corpus.augment.augment` (train and val rows only; test stays clean),

and written in the layout of `models.corpus.manifest`.

Splits: ``train`` and ``val`` (about 5 %) use the training voices on training sentences;
``test`` (about 10 %) holds held-out sentences (`models.corpus.texts`), spoken in English half by
the held-out voices (festival ``ked_diphone``, flite ``rms``) and half by training voices, and in
Mandarin by the espeak-ng voices. Every training voice has a fixed style index 0..19 (see
`voice_catalogue`); held-out voices have -1.

An interrupted run resumes: finished utterances are appended to ``manifest.partial.jsonl`` as
they complete and skipped on the next run with the same settings.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import soundfile as sf

from models.blendshapes import SAMPLE_RATE_HZ, num_frames
from models.corpus import espeak, festival, flite, texts
from models.corpus.espeak import EngineUnavailableError, Synthesis, cover_with_silence
from models.corpus.manifest import (
    INFO_NAME,
    MANIFEST_NAME,
    CorpusInfo,
    Split,
    Utterance,
    read_manifest,
    write_info,
    write_manifest,
    write_phone_table,
)
from models.corpus.phones import LANGUAGES, SILENCE, Language
from models.corpus.pinyin import hanzi_to_pinyin

logger = logging.getLogger(__name__)

GENERATOR_VERSION: Final = 1
ENGINES: Final[tuple[str, ...]] = (espeak.ENGINE, festival.ENGINE, flite.ENGINE)
NUM_STYLES: Final = 20  # the decoder's style table; see models.corpus.visemes.NUM_STYLES
VAL_FRACTION: Final = 0.05
TEST_FRACTION: Final = 0.10
ENGLISH_FRACTION: Final = 0.7
HELD_OUT_VOICE_FRACTION: Final = 0.5  # of the English test rows
RATE_RANGE: Final = (0.85, 1.2)  # speaking-rate factor, uniform
PITCH_RANGE: Final = (0.85, 1.2)  # F0 factor, uniform
SILENCE_RANGE_S: Final = (0.1, 0.6)  # padding before and after each utterance, uniform
# How often each engine speaks a training utterance of a language. espeak-ng has many voices
# but the least natural sound, so the other engines get a large share of the English rows.
ENGINE_WEIGHTS: Final[dict[Language, dict[str, float]]] = {
    "en": {espeak.ENGINE: 0.5, festival.ENGINE: 0.2, flite.ENGINE: 0.3},
    "zh": {espeak.ENGINE: 1.0},
}
PARTIAL_MANIFEST_NAME: Final = "manifest.partial.jsonl"
PARTIAL_INFO_NAME: Final = "corpus.partial.json"


@dataclass(frozen=True)
class Voice:
    """One speaker of one engine: an engine voice name with its variant, if any."""

    engine: str
    name: str  # what the engine is given: "en-us+f3", "kal_diphone", "slt"
    language: Language
    style: int  # training subject 0..NUM_STYLES-1; -1 for a held-out voice
    supports_pitch: bool = True

    @property
    def id(self) -> str:
        return f"{self.engine}:{self.name}"

    @property
    def held_out(self) -> bool:
        return self.style < 0


def voice_catalogue() -> tuple[Voice, ...]:
    """Every voice the generator uses, training and held out, with fixed style indices.

    The catalogue is written out in code rather than read from what is installed, so a style
    index always means the same speaker. festival kal and slt and flite kal16, awb and slt are
    subjects 0-4; each espeak-ng speaker variant is one subject (5-19), whatever accent or
    language it speaks, as one person would.
    """
    catalogue = [
        Voice(festival.ENGINE, "kal_diphone", "en", 0),
        Voice(festival.ENGINE, "cmu_us_slt_arctic_hts", "en", 1, supports_pitch=False),
        Voice(flite.ENGINE, "kal16", "en", 2),
        Voice(flite.ENGINE, "awb", "en", 3),
        Voice(flite.ENGINE, "slt", "en", 4),
        Voice(festival.ENGINE, "ked_diphone", "en", -1),
        Voice(flite.ENGINE, "rms", "en", -1, supports_pitch=False),
    ]
    first_variant_style = 5
    for language in LANGUAGES:
        for name in espeak.voices(language):
            variant = name.split("+")[1]
            style = (first_variant_style + espeak.VARIANTS.index(variant)) % NUM_STYLES
            catalogue.append(Voice(espeak.ENGINE, name, language, style))
    return tuple(catalogue)


def training_voices(language: Language, engine: str | None = None) -> list[Voice]:
    """The catalogue's training voices of ``language`` (and ``engine``, if given)."""
    return [
        v
        for v in voice_catalogue()
        if v.language == language and not v.held_out and engine in (None, v.engine)
    ]


def held_out_voices(language: Language) -> list[Voice]:
    """The catalogue's held-out voices of ``language`` (none for Mandarin)."""
    return [v for v in voice_catalogue() if v.language == language and v.held_out]


def voice_ranges() -> dict[str, tuple[float, float]]:
    """The uniform ranges rate and pitch factors are drawn from, and the padding in seconds."""
    return {"rate": RATE_RANGE, "pitch": PITCH_RANGE, "silence_s": SILENCE_RANGE_S}


def check_engines(languages: Sequence[Language]) -> None:
    """Raise `EngineUnavailableError`, naming the apt package, if a needed voice is missing."""
    needed = [
        v
        for v in voice_catalogue()
        if v.language in languages and v.engine in ENGINE_WEIGHTS[v.language]
    ]
    espeak_voices = [v.name for v in needed if v.engine == espeak.ENGINE]
    if espeak_voices:
        if not espeak.is_available():
            raise EngineUnavailableError(
                f"espeak-ng's library {espeak.LIBRARY_NAME} is not installed; install the apt "
                f"packages {espeak.APT_PACKAGES}"
            )
        # Every accent with one variant and every variant once covers all combinations.
        bases = {name.split("+")[0] for name in espeak_voices}
        variants = {name.split("+")[1] for name in espeak_voices}
        for name in sorted(bases) + [f"{min(bases)}+{variant}" for variant in sorted(variants)]:
            espeak.check_voice(name)
    flite_voices = flite.installed_voices()
    for voice in needed:
        if voice.engine == festival.ENGINE:
            festival.check_available(voice.name)
        elif voice.engine == flite.ENGINE and voice.name not in flite_voices:
            flite.check_available(voice.name)


def is_available(languages: Sequence[Language] = LANGUAGES) -> bool:
    """Whether every engine and voice the generator needs for ``languages`` is installed."""
    try:
        check_engines(languages)
    except EngineUnavailableError:
        return False
    return True


# --- the plan --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedUtterance:
    """Everything drawn for one utterance before synthesis."""

    id: str
    split: Split
    language: Language
    text: str
    voice: Voice
    rate: float
    pitch: float  # 1.0 where the voice cannot change its pitch
    lead_s: float  # silence added before the speech
    trail_s: float  # and after it
    augment_seed: int  # seeds the augmentation of train/val rows


def split_sizes(size: int) -> dict[Split, int]:
    """Utterances per split: about 5 % val and 10 % test, at least one each from size 3."""
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    minimum = 1 if size >= 3 else 0
    test = max(minimum, round(size * TEST_FRACTION))
    val = max(minimum, round(size * VAL_FRACTION))
    return {"train": size - test - val, "val": val, "test": test}


def plan_corpus(
    size: int,
    seed: int,
    languages: Sequence[Language] = LANGUAGES,
    english_fraction: float = ENGLISH_FRACTION,
) -> list[PlannedUtterance]:
    """Draw every utterance of a corpus from ``seed``: train rows, then val, then test.

    Ids are ``<split>-<index>`` with the index zero-padded, so they are unique and sort by
    split, then index.
    """
    languages = tuple(dict.fromkeys(languages))
    for language in languages:
        if language not in LANGUAGES:
            raise ValueError(f"unknown language {language!r}; choose from {list(LANGUAGES)}")
    sizes = split_sizes(size)
    rng = np.random.default_rng([seed, GENERATOR_VERSION])
    training = list(
        texts.sentence_pairs(sizes["train"] + sizes["val"], seed, languages, english_fraction)
    )
    held_out = list(
        texts.sentence_pairs(sizes["test"], seed, languages, english_fraction, pool="held_out")
    )
    splits: list[Split] = [split for split, count in sizes.items() for _ in range(count)]
    width = max(6, len(str(size - 1)))
    plan = []
    for index, (split, (language, text)) in enumerate(
        zip(splits, training + held_out, strict=True)
    ):
        # Every draw happens for every row in the same order, so that one row's choices never
        # shift the random stream of the rows after it.
        voice = _draw_voice(rng, language, split)
        rate = float(rng.uniform(*RATE_RANGE))
        pitch = float(rng.uniform(*PITCH_RANGE))
        lead_s, trail_s = (float(x) for x in rng.uniform(*SILENCE_RANGE_S, size=2))
        augment_seed = int(rng.integers(2**63))
        plan.append(
            PlannedUtterance(
                id=f"{split}-{index:0{width}d}",
                split=split,
                language=language,
                text=text,
                voice=voice,
                rate=round(rate, 4),
                pitch=round(pitch, 4) if voice.supports_pitch else 1.0,
                lead_s=round(lead_s, 3),
                trail_s=round(trail_s, 3),
                augment_seed=augment_seed,
            )
        )
    return plan


def _draw_voice(rng: np.random.Generator, language: Language, split: Split) -> Voice:
    coin = rng.random()
    weights = ENGINE_WEIGHTS[language]
    engines = list(weights)
    engine = engines[int(rng.choice(len(engines), p=np.array(list(weights.values()))))]
    pick = rng.random()
    held = held_out_voices(language)
    if split == "test" and held and coin < HELD_OUT_VOICE_FRACTION:
        pool = held
    else:
        pool = training_voices(language, engine)
    return pool[min(int(pick * len(pool)), len(pool) - 1)]


# --- one utterance ---------------------------------------------------------------------------


def synthesize(voice: Voice, text: str, rate: float, pitch: float) -> Synthesis:
    """Speak ``text`` (characters for Mandarin) with ``voice``; 16 kHz audio and phones."""
    if voice.engine == espeak.ENGINE:
        spoken = hanzi_to_pinyin(text) if voice.language == "zh" else text
        return espeak.synthesize(spoken, voice.name, rate, pitch)
    if voice.engine == festival.ENGINE:
        return festival.synthesize(text, voice.name, rate, pitch)
    if voice.engine == flite.ENGINE:
        return flite.synthesize(text, voice.name, rate, pitch)
    raise ValueError(f"unknown engine {voice.engine!r}; choose from {list(ENGINES)}")


def pad_with_silence(synthesis: Synthesis, lead_s: float, trail_s: float) -> Synthesis:
    """Add ``lead_s`` and ``trail_s`` seconds of digital silence, shifting the phone table."""
    lead = round(lead_s * SAMPLE_RATE_HZ)
    trail = round(trail_s * SAMPLE_RATE_HZ)
    wave = np.concatenate([np.zeros(lead, np.float32), synthesis.wave, np.zeros(trail, np.float32)])
    shift_s = lead / SAMPLE_RATE_HZ
    items = [(SILENCE, 0.0, shift_s)]
    items += [(p.phone, p.start_s + shift_s, p.end_s + shift_s) for p in synthesis.phones]
    return Synthesis(wave, cover_with_silence(items, len(wave) / SAMPLE_RATE_HZ))


def render_utterance(job: PlannedUtterance, out_dir: Path) -> Utterance:
    """Synthesise, pad, compute targets, augment (train/val) and write one utterance."""
    from models.corpus.augment import augment
    from models.corpus.visemes import targets_from_phones

    try:
        speech = pad_with_silence(
            synthesize(job.voice, job.text, job.rate, job.pitch), job.lead_s, job.trail_s
        )
    except (RuntimeError, ValueError) as exc:
        raise RuntimeError(
            f"utterance {job.id} ({job.voice.id}, {job.text!r}) failed: {exc}"
        ) from exc
    frames = num_frames(len(speech.wave), SAMPLE_RATE_HZ)
    targets = targets_from_phones(speech.phones, frames, style=job.voice.style)
    wave = speech.wave
    applied: dict[str, Any] = {}
    if job.split != "test":
        wave, applied = augment(wave, SAMPLE_RATE_HZ, np.random.default_rng(job.augment_seed))
    row = Utterance(
        id=job.id,
        split=job.split,
        language=job.language,
        engine=job.voice.engine,
        voice=job.voice.name,
        text=job.text,
        audio=f"wav/{job.id}.wav",
        targets=f"targets/{job.id}.npy",
        phones=f"phones/{job.id}.tsv",
        num_samples=len(wave),
        num_frames=frames,
        style=job.voice.style,
        rate=job.rate,
        pitch=job.pitch,
        augment=applied,
    )
    # Written last, so that an existing WAV means the other two files are complete.
    np.save(out_dir / row.targets, targets.astype(np.float32))
    write_phone_table(out_dir / row.phones, speech.phones)
    # soundfile would wrap around rather than clip samples outside [-1, 1].
    sf.write(out_dir / row.audio, np.clip(wave, -1.0, 1.0), SAMPLE_RATE_HZ, subtype="PCM_16")
    return row


# --- the corpus ------------------------------------------------------------------------------


def corpus_settings(
    languages: Sequence[Language], english_fraction: float = ENGLISH_FRACTION
) -> dict[str, Any]:
    """What besides seed and size decides the corpus's content (corpus.json ``settings``)."""
    return {
        "generator_version": GENERATOR_VERSION,
        "languages": list(dict.fromkeys(languages)),
        "english_fraction": english_fraction,
        "val_fraction": VAL_FRACTION,
        "test_fraction": TEST_FRACTION,
        "held_out_voice_fraction": HELD_OUT_VOICE_FRACTION,
        "rate_range": list(RATE_RANGE),
        "pitch_range": list(PITCH_RANGE),
        "silence_range_s": list(SILENCE_RANGE_S),
        "engine_weights": {k: dict(v) for k, v in ENGINE_WEIGHTS.items()},
        "voices": {v.id: v.style for v in voice_catalogue()},
        "sample_rate_hz": SAMPLE_RATE_HZ,
    }


def _check_resumable(out_dir: Path, expected: dict[str, Any]) -> None:
    for name in (PARTIAL_INFO_NAME, INFO_NAME):
        path = out_dir / name
        if not path.exists():
            continue
        found = json.loads(path.read_text(encoding="utf-8"))
        found_key = {k: found.get(k) for k in ("seed", "size", "settings")}
        if found_key != json.loads(json.dumps(expected)):
            raise ValueError(
                f"{out_dir} already holds a corpus generated with other settings "
                f"(seed {found.get('seed')}, size {found.get('size')}); choose an empty "
                "directory or delete it first"
            )
        return


def _finished_rows(out_dir: Path, plan_ids: set[str]) -> dict[str, Utterance]:
    """Rows of an earlier run whose three files exist (partial log, then a full manifest)."""
    rows: dict[str, Utterance] = {}
    for name in (MANIFEST_NAME, PARTIAL_MANIFEST_NAME):
        path = out_dir / name
        if path.exists():
            try:
                rows.update((row.id, row) for row in read_manifest(path))
            except ValueError:
                logger.warning("%s: ignoring an unreadable progress file", path)
    return {
        key: row
        for key, row in rows.items()
        if key in plan_ids
        and all((out_dir / rel).exists() for rel in (row.audio, row.targets, row.phones))
    }


def generate_corpus(
    out_dir: Path,
    size: int,
    seed: int,
    languages: Sequence[Language] = ("en", "zh"),
    workers: int = 1,
    progress: bool = True,
    english_fraction: float = ENGLISH_FRACTION,
    on_row: Callable[[Utterance], None] | None = None,
) -> CorpusInfo:
    """Generate (or finish) a corpus of ``size`` utterances in ``out_dir``.

    ``workers`` processes synthesise in parallel (1: in this process). ``progress`` shows a
    tqdm bar on stderr; ``on_row`` is called with each newly written row. Utterances already
    written by an interrupted run with the same seed, size and settings are kept. Returns what
    is written to corpus.json. Raises `EngineUnavailableError` (naming the apt package) when an
    engine or voice is missing, and ValueError when ``out_dir`` holds another corpus.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    languages = tuple(dict.fromkeys(languages))
    plan = plan_corpus(size, seed, languages, english_fraction)
    settings = corpus_settings(languages, english_fraction)
    out_dir = Path(out_dir)
    key = {"seed": seed, "size": size, "settings": settings}
    _check_resumable(out_dir, key)
    check_engines(languages)
    for sub in ("wav", "targets", "phones"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    (out_dir / PARTIAL_INFO_NAME).write_text(json.dumps(key, indent=2) + "\n", encoding="utf-8")

    rows = _finished_rows(out_dir, {job.id for job in plan})
    todo = [job for job in plan if job.id not in rows]
    if rows:
        logger.info("resuming: %d of %d utterances already written", len(rows), len(plan))
    with (out_dir / PARTIAL_MANIFEST_NAME).open("a", encoding="utf-8") as log:

        def finished(row: Utterance) -> None:
            rows[row.id] = row
            log.write(json.dumps(asdict(row), ensure_ascii=False) + "\n")
            log.flush()
            if on_row is not None:
                on_row(row)

        _run(todo, out_dir, workers, progress, finished)

    ordered = [rows[job.id] for job in plan]
    write_manifest(out_dir / MANIFEST_NAME, sorted(ordered, key=lambda row: row.id))
    counts = Counter(row.split for row in ordered)
    info = CorpusInfo(
        seed=seed,
        size=size,
        counts={split: counts.get(split, 0) for split in ("train", "val", "test")},
        hours=round(sum(row.num_samples for row in ordered) / SAMPLE_RATE_HZ / 3600, 6),
        settings=settings,
    )
    write_info(out_dir / INFO_NAME, info)
    (out_dir / PARTIAL_MANIFEST_NAME).unlink(missing_ok=True)
    (out_dir / PARTIAL_INFO_NAME).unlink(missing_ok=True)
    return info


def _run(
    todo: list[PlannedUtterance],
    out_dir: Path,
    workers: int,
    progress: bool,
    finished: Callable[[Utterance], None],
) -> None:
    from tqdm import tqdm

    bar = tqdm(total=len(todo), disable=not progress, unit="utt", desc="corpus")
    try:
        if workers == 1:
            for job in todo:
                finished(render_utterance(job, out_dir))
                bar.update()
            return
        # fork where there is one: workers start at once with the modules already imported
        # (spawn would re-import the caller's main module, e.g. the CLI and PyTorch, per
        # worker); each starts its own espeak-ng helper (see models.corpus.espeak).
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            # A bounded window of pending jobs keeps memory flat for very large corpora.
            pending: set[Future[Utterance]] = set()
            queue = iter(todo)
            window = workers * 4
            while True:
                for job in queue:
                    pending.add(pool.submit(render_utterance, job, out_dir))
                    if len(pending) >= window:
                        break
                if not pending:
                    break
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    finished(future.result())
                    bar.update()
    finally:
        bar.close()

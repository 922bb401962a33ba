"""espeak-ng through its C library, with the exact sample position of every phoneme.

The command line can print phonemes but not when they sound; the library reports a phoneme
event (`espeakEVENT_PHONEME`) carrying the output sample at which each phoneme starts. We load
``libespeak-ng.so.1`` with ctypes, synthesise in ``AUDIO_OUTPUT_SYNCHRONOUS`` mode with a callback
that collects the 22.05 kHz samples and the events, map espeak's phoneme mnemonics to the
project phone set (`models.corpus.phones`) and resample to 16 kHz. The library lives in a small
helper process that forks a fresh child per synthesis, because it is not re-entrant and keeps
state between utterances that would make the output depend on what was spoken before.

A phoneme lasts from its event to the next phoneme's event (the last one to the end of the
audio). A mnemonic that stands for several project phones (``@L`` -> AH L, Mandarin ``iou`` ->
i o u) splits its span evenly between them. English mapping depends on the accent: the r-coloured
vowels of the rhotic accents (``A@`` in American "car") gain an R, the same mnemonic in a
non-rhotic accent does not.

This module also holds what every engine returns (`Synthesis`), the error for a missing engine
and the helper that turns an engine's phone times into a gap-free phone table.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import numpy as np

from models.blendshapes import SAMPLE_RATE_HZ
from models.corpus.manifest import PhoneSegment
from models.corpus.phones import SILENCE, Language

logger = logging.getLogger(__name__)

ENGINE: Final = "espeak-ng"
LIBRARY_NAME: Final = "libespeak-ng.so.1"
APT_PACKAGES: Final = "libespeak-ng1 espeak-ng-data"
ESPEAK_SAMPLE_RATE_HZ: Final = 22_050
DEFAULT_RATE_WPM: Final = 175
DEFAULT_PITCH: Final = 50  # espeak's 0-100 pitch scale
MIN_RATE_WPM: Final = 80
MAX_RATE_WPM: Final = 450

ENGLISH_ACCENTS: Final[tuple[str, ...]] = (
    "en-us",
    "en",  # British English; the library knows it by its file name, not as "en-gb"
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
MANDARIN_VOICE: Final = "cmn-latn-pinyin"
# Speaker variants (files in espeak-ng-data/voices/!v): the classic male/female formant sets
# and three Klatt-synthesiser voices, whose different excitation widens the acoustic range.
VARIANTS: Final[tuple[str, ...]] = (
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "klatt",
    "klatt2",
    "klatt4",
)
RHOTIC_ACCENTS: Final = frozenset({"en-us", "en-us-nyc"})
END_TOLERANCE_S: Final = 0.001


class EngineUnavailableError(RuntimeError):
    """A TTS engine (binary, library or voice) is not installed; the message names the package."""


@dataclass(frozen=True)
class Synthesis:
    """One synthesised utterance.

    ``wave`` is (N,) float32 mono at 16 kHz in [-1, 1]. ``phones`` are project phones
    (`models.corpus.phones`, ``sil`` for pauses) covering the audio without gaps or overlaps:
    the first starts at 0 s and the last ends at ``N / 16000`` s.
    """

    wave: np.ndarray
    phones: list[PhoneSegment]

    @property
    def duration_s(self) -> float:
        return len(self.wave) / SAMPLE_RATE_HZ


def cover_with_silence(
    segments: Iterable[tuple[str, float, float]], duration_s: float
) -> list[PhoneSegment]:
    """A gap-free phone table over ``[0, duration_s]`` from ``(phone, start_s, end_s)`` items.

    Items must come in time order. Times are clipped to the audio, gaps (and the stretch before
    the first and after the last phone) become ``sil``, neighbouring silences merge and
    zero-length segments are dropped, so every instant of the audio has exactly one phone. A
    trailing gap under `END_TOLERANCE_S` (resampling rounds lengths to whole samples) extends
    the last phone instead of adding a sliver of silence.
    """
    table: list[PhoneSegment] = []
    reached = 0.0

    def add(phone: str, start: float, end: float) -> None:
        if end <= start:
            return
        if table and table[-1].phone == SILENCE and phone == SILENCE:
            table[-1] = PhoneSegment(SILENCE, table[-1].start_s, end)
        else:
            table.append(PhoneSegment(phone, start, end))

    for phone, start_s, end_s in segments:
        start = min(max(start_s, reached), duration_s)
        end = min(max(end_s, start), duration_s)
        if start > reached:
            add(SILENCE, reached, start)
        add(phone, start, end)
        reached = max(reached, end)
    if table and duration_s - reached < END_TOLERANCE_S:
        last = table[-1]
        table[-1] = PhoneSegment(last.phone, last.start_s, duration_s)
    else:
        add(SILENCE, reached, duration_s)
    return table


def check_request(text: str, rate: float, pitch: float) -> None:
    """The checks every engine's ``synthesize`` makes before starting: some text, and positive
    rate and pitch factors."""
    if not text.strip():
        raise ValueError("nothing to say: the text is empty")
    if rate <= 0 or pitch <= 0:
        raise ValueError(f"rate and pitch are positive factors, got {rate=} {pitch=}")


def resample_to_project_rate(wave: np.ndarray, rate_hz: int) -> np.ndarray:
    """(N,) float wave at ``rate_hz`` -> (M,) float32 at 16 kHz, clipped to [-1, 1]."""
    import soxr

    wave = np.asarray(wave, dtype=np.float32)
    if rate_hz != SAMPLE_RATE_HZ:
        wave = soxr.resample(wave, rate_hz, SAMPLE_RATE_HZ, quality="HQ").astype(np.float32)
    return np.clip(wave, -1.0, 1.0)


def split_spans(
    items: Iterable[tuple[tuple[str, ...], float, float]],
) -> list[tuple[str, float, float]]:
    """Expand ``(phones, start_s, end_s)`` items into one item per phone, sharing the span.

    Several phones from one engine symbol split its span evenly; a phone equal to the one just
    before it (an American ``A@`` -> AA R followed by a linking ``r``) extends that one instead
    of repeating it.
    """
    out: list[tuple[str, float, float]] = []
    for phones, start, end in items:
        step = (end - start) / len(phones)
        for k, phone in enumerate(phones):
            lo, hi = start + k * step, start + (k + 1) * step
            if out and out[-1][0] == phone and out[-1][0] != SILENCE and out[-1][2] == lo:
                out[-1] = (phone, out[-1][1], hi)
            else:
                out.append((phone, lo, hi))
    return out


# --- mnemonic tables -------------------------------------------------------------------------

PAUSES: Final = frozenset({"_", "_:", "_::", "_:::", "_!", "_|", "||", "_^_", "_X1", "_;_"})

_ENGLISH: Final[dict[str, tuple[str, ...]]] = {
    # schwas and central vowels
    "@": ("AH",),
    "@-": ("AH",),
    "@2": ("AH",),
    "@5": ("AH",),
    "@#": ("AH",),
    "@L": ("AH", "L"),  # syllabic l, "bottle"
    "V": ("AH",),
    "a#": ("AH",),
    "a#2": ("AH",),
    "3:": ("ER",),
    "VR": ("AH", "R"),  # Scottish "nurse"
    "IR": ("IH", "R"),  # Scottish "bird"
    # front vowels
    "a": ("AE",),
    "a2": ("AE",),
    "a/": ("AE",),
    "aa": ("AE",),  # the BATH vowel; British accents use A: instead
    "E": ("EH",),
    "E#": ("EH",),
    "E2": ("EH",),
    "e#": ("EH",),
    "e:": ("EY",),
    "eI": ("EY",),
    "I": ("IH",),
    "I#": ("IH",),
    "I2": ("IH",),
    "I2#": ("IH",),
    "i": ("IY",),
    "i:": ("IY",),
    # back vowels
    "A:": ("AA",),
    "A#": ("AA",),
    "A~": ("AA",),
    "0": ("AA",),  # British "lot"; ARPAbet has no separate rounded vowel
    "0#": ("AA",),
    "02": ("AA",),
    "O": ("AO",),
    "O:": ("AO",),
    "O2": ("AO",),
    "O~": ("AO",),
    "o:": ("OW",),
    "oU": ("OW",),
    "oU#": ("OW",),
    "OI": ("OY",),
    "U": ("UH",),
    "u:": ("UW",),
    "aU": ("AW",),
    "aI": ("AY",),
    "aI2": ("AY",),
    # consonants
    "p": ("P",),
    "b": ("B",),
    "t": ("T",),
    "d": ("D",),
    "k": ("K",),
    "g": ("G",),
    "f": ("F",),
    "v": ("V",),
    "T": ("TH",),
    "D": ("DH",),
    "s": ("S",),
    "z": ("Z",),
    "S": ("SH",),
    "Z": ("ZH",),
    "tS": ("CH",),
    "dZ": ("JH",),
    "h": ("HH",),
    "C": ("HH",),  # the palatal h of "huge" in some accents
    "x": ("K",),  # Scottish "loch"; ARPAbet writes it K
    "m": ("M",),
    "n": ("N",),
    "N": ("NG",),
    "m-": ("M",),
    "n-": ("N",),  # syllabic n, "button"
    "N-": ("NG",),
    "l": ("L",),
    "l-": ("L",),
    "l/": ("L",),
    "l/2": ("L",),
    "l/3": ("L",),
    "r": ("R",),
    "r-": ("R",),  # linking r
    "r/": ("R",),
    "w": ("W",),
    "w#": ("W",),
    "j": ("Y",),
    ";": ("Y",),  # the linking glide in "the end"
    "t#": ("T",),  # American flap, "water"
    "t2": ("T",),
    "t[": ("T",),
    "d#": ("D",),
    "d[": ("D",),
    "z#": ("Z",),
    "z/2": ("Z",),
    "?": ("T",),  # glottal stop standing for t, "button"
    "ts": ("T", "S"),
    "dz": ("D", "Z"),
}

# r-coloured vowels: with an R in rhotic accents, plain (or with a schwa glide) elsewhere.
_ENGLISH_RHOTIC: Final[dict[str, tuple[str, ...]]] = {
    "3": ("ER",),
    "A@": ("AA", "R"),
    "O@": ("AO", "R"),
    "o@": ("AO", "R"),
    "e@": ("EH", "R"),
    "i@": ("IH", "R"),
    "i@3": ("IH", "R"),
    "U@": ("UH", "R"),
    "aI@": ("AY", "ER"),
    "aI3": ("AY", "ER"),
    "aU@": ("AW", "ER"),
}
_ENGLISH_NON_RHOTIC: Final[dict[str, tuple[str, ...]]] = {
    "3": ("AH",),
    "A@": ("AA",),
    "O@": ("AO",),
    "o@": ("AO",),
    "e@": ("EH",),
    "i@": ("IH", "AH"),
    "i@3": ("IH", "AH"),
    "U@": ("UH", "AH"),
    "aI@": ("AY", "AH"),
    "aI3": ("AY", "AH"),
    "aU@": ("AW", "AH"),
}

# cmn-latn-pinyin mnemonics -> pinyin units. espeak writes the glides j/w/; as separate
# phonemes and compound vowels (iou, uei) as one; both become the units of `pinyin.FINALS`.
_MANDARIN: Final[dict[str, tuple[str, ...]]] = {
    "p": ("b",),
    "ph": ("p",),
    "m": ("m",),
    "f": ("f",),
    "t": ("d",),
    "th": ("t",),
    "n": ("n",),
    "l": ("l",),
    "k": ("g",),
    "kh": ("k",),
    "X": ("h",),
    "tS;": ("j",),
    "tS;h": ("q",),
    "S;": ("x",),
    "ts.": ("zh",),
    "ts.h": ("ch",),
    "s.": ("sh",),
    "z.": ("r",),
    "ts": ("z",),
    "tsh": ("c",),
    "s": ("s",),
    "N": ("ng",),
    "N-": ("ng",),
    "j": ("i",),
    "w": ("u",),
    ";": ("v",),
    "A": ("a",),
    "a": ("a",),
    "@": ("e",),
    "o-": ("e",),
    "@r": ("er",),
    "E": ("ee",),
    "i": ("i",),
    "i[": ("ir",),
    "i.": ("ir",),
    "o": ("o",),
    "u": ("u",),
    "y": ("v",),
    "ai": ("a", "i"),
    "ei": ("ee", "i"),
    "Au": ("a", "o"),
    "ou": ("o", "u"),
    "ong": ("o", "ng"),
    "iA": ("i", "a"),
    "iAu": ("i", "a", "o"),
    "iE": ("i", "ee"),
    "io": ("i", "o"),
    "iou": ("i", "o", "u"),
    "uA": ("u", "a"),
    "ua": ("u", "a"),
    "uai": ("u", "a", "i"),
    "uei": ("u", "ee", "i"),
    "uo": ("u", "o"),
    "u@": ("u", "e"),
    "yu": ("i", "o"),  # yong = yu + N
    "yE": ("v", "ee"),
    "y&": ("v", "a"),
    "y@": ("v",),
    "yi": ("v",),
}
# Before a coda espeak's vowel is the one heard, the spelling's is the pinyin unit: ian is
# spoken iE n (written i a n) and iong after j x is y N, after q u N (written i o ng). No
# other syllable puts y or u right before the ng coda, as a test over every syllable checks.
_MANDARIN_BEFORE: Final[dict[tuple[str, str], tuple[str, ...]]] = {
    ("iE", "n"): ("i", "a"),
    ("y", "N"): ("i", "o"),
    ("u", "N"): ("i", "o"),
}


class UnknownPhonemeError(ValueError):
    """An espeak-ng mnemonic the project's tables do not map."""


def is_rhotic(voice: str) -> bool:
    """Whether an English espeak-ng voice (``"en-us+f3"``) pronounces r after vowels."""
    return voice.split("+")[0].lower() in RHOTIC_ACCENTS


def voice_language(voice: str) -> Language:
    """``en`` or ``zh`` for an espeak-ng voice name such as ``"en-gb+m2"``."""
    base = voice.split("+")[0].lower()
    if base == MANDARIN_VOICE:
        return "zh"
    if base == "en" or base.startswith("en-"):
        return "en"
    raise ValueError(
        f"espeak-ng voice {voice!r} is neither English (en-...) nor {MANDARIN_VOICE!r}; "
        "the project phone set covers only these"
    )


def map_mnemonics(
    mnemonics: Sequence[str], language: Language, rhotic: bool = True
) -> list[tuple[str, ...]]:
    """Project phones for each espeak-ng mnemonic (``("sil",)`` for pauses).

    Raises `UnknownPhonemeError` naming the first mnemonic without a mapping.
    """
    mapped: list[tuple[str, ...]] = []
    for i, mnemonic in enumerate(mnemonics):
        if mnemonic in PAUSES:
            mapped.append((SILENCE,))
            continue
        following = mnemonics[i + 1] if i + 1 < len(mnemonics) else ""
        if language == "zh":
            phones = _MANDARIN_BEFORE.get((mnemonic, following)) or _MANDARIN.get(mnemonic)
        else:
            extra = _ENGLISH_RHOTIC if rhotic else _ENGLISH_NON_RHOTIC
            phones = extra.get(mnemonic) or _ENGLISH.get(mnemonic)
        if phones is None:
            raise UnknownPhonemeError(
                f"espeak-ng phoneme {mnemonic!r} ({language}) has no project phone; add it to "
                "the tables in models/corpus/espeak.py"
            )
        mapped.append(phones)
    return mapped


def phones_from_events(
    events: Sequence[tuple[str, int]],
    num_samples: int,
    rate_hz: int,
    language: Language,
    rhotic: bool = True,
    duration_s: float | None = None,
) -> list[PhoneSegment]:
    """Phone table from phoneme events ``(mnemonic, start_sample)`` at ``rate_hz``.

    Each phoneme lasts until the next event (the last one until ``num_samples``); the table
    covers ``[0, duration_s]`` seconds, by default ``num_samples / rate_hz``.
    """
    mapped = map_mnemonics([m for m, _ in events], language, rhotic)
    starts = [min(max(sample, 0), num_samples) for _, sample in events]
    ends = [*starts[1:], num_samples]
    spans = [
        (phones, start / rate_hz, max(end, start) / rate_hz)
        for phones, start, end in zip(mapped, starts, ends, strict=True)
    ]
    total_s = num_samples / rate_hz if duration_s is None else duration_s
    return cover_with_silence(split_spans(spans), total_s)


# --- the library -----------------------------------------------------------------------------

_AUDIO_OUTPUT_SYNCHRONOUS: Final = 2
_INITIALIZE_PHONEME_EVENTS: Final = 0x0001
_CHARS_UTF8: Final = 1
_POS_CHARACTER: Final = 1
_EVENT_LIST_TERMINATED: Final = 0
_EVENT_PHONEME: Final = 7
_PARAM_RATE: Final = 1
_PARAM_PITCH: Final = 3
_EE_OK: Final = 0


class _EventId(ctypes.Union):
    _fields_ = (
        ("number", ctypes.c_int),
        ("name", ctypes.c_char_p),
        ("string", ctypes.c_char * 8),  # phoneme mnemonic, NUL-terminated unless 8 bytes long
    )


class _Event(ctypes.Structure):
    """speak_lib.h's espeak_EVENT; ctypes adds the padding before the pointer on 64-bit."""

    _fields_ = (
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms
        ("sample", ctypes.c_int),  # output sample index at the native rate
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    )


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


class _Library:
    """The initialised library (in the helper process), collecting one synthesis at a time."""

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL(LIBRARY_NAME)
        except OSError as exc:
            raise EngineUnavailableError(
                f"espeak-ng's library {LIBRARY_NAME} is not installed; install the apt "
                f"packages {APT_PACKAGES}"
            ) from exc
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INITIALIZE_PHONEME_EVENTS)
        if rate != ESPEAK_SAMPLE_RATE_HZ:
            raise EngineUnavailableError(
                f"espeak-ng failed to initialise (returned {rate}); reinstall the apt packages "
                f"{APT_PACKAGES}"
            )
        lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        lib.espeak_Info.restype = ctypes.c_char_p
        data_dir = ctypes.c_char_p()
        lib.espeak_Info(ctypes.byref(data_dir))
        self._data_dir = Path((data_dir.value or b"").decode("utf-8"))
        self._lib = lib
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[str, int]] = []
        # Keep the C callback object alive as long as the library may call it.
        self._callback = _SynthCallback(self._collect)
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav: Any, count: int, events: Any) -> int:
        if wav and count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            event = events[i]
            if event.type == _EVENT_PHONEME:
                self._events.append((event.id.string.decode("utf-8"), int(event.sample)))
            i += 1
        return 0  # continue synthesis

    def select_voice(self, voice: str) -> None:
        # The library silently ignores an unknown "+variant", so look for its file first.
        _, _, variant = voice.partition("+")
        if variant and not (self._data_dir / "voices" / "!v" / variant).is_file():
            raise EngineUnavailableError(
                f"espeak-ng has no voice variant {variant!r} in {self._data_dir}; see "
                "`espeak-ng --voices=variant`, or install the apt package espeak-ng-data"
            )
        if self._lib.espeak_SetVoiceByName(voice.encode("utf-8")) != _EE_OK:
            raise EngineUnavailableError(
                f"espeak-ng has no voice {voice!r}; see `espeak-ng --voices` and "
                "`espeak-ng --voices=variant` (British English is 'en'), or install the apt "
                "package espeak-ng-data"
            )

    def synthesize(
        self, text: str, voice: str, rate_wpm: int, pitch: int
    ) -> tuple[np.ndarray, list[tuple[str, int]]]:
        """int16 samples at 22.05 kHz and the (mnemonic, start sample) phoneme events."""
        self.select_voice(voice)
        self._lib.espeak_SetParameter(_PARAM_RATE, rate_wpm, 0)
        self._lib.espeak_SetParameter(_PARAM_PITCH, pitch, 0)
        self._chunks, self._events = [], []
        data = text.encode("utf-8") + b"\0"
        status = self._lib.espeak_Synth(
            data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
        )
        self._lib.espeak_Synchronize()
        if status != _EE_OK:
            raise RuntimeError(f"espeak_Synth failed with status {status} on {text!r}")
        samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return samples, self._events


# --- the helper process ---------------------------------------------------------------------
#
# espeak-ng carries state from one synthesis to the next (the same call twice gives a few
# samples more or less and different noise), so a corpus would depend on the order its
# utterances were made in. A small helper process therefore loads and initialises the library
# once and never speaks itself: each request runs in a child forked from that pristine state,
# which makes every synthesis byte-identical to the same synthesis in any other process.
# Forking the small helper rather than the caller (which may hold PyTorch and gigabytes of
# memory) keeps a fork at about a millisecond.

_LENGTH = struct.Struct("<Q")


def _send(stream: IO[bytes], message: object) -> None:
    payload = pickle.dumps(message)
    stream.write(_LENGTH.pack(len(payload)) + payload)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    """The next message, or None at the end of the stream."""
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        return None
    return pickle.loads(payload)


def _run_forked(library: _Library, method: str, args: tuple[Any, ...]) -> tuple[bool, Any]:
    """``library.method(*args)`` in a forked child: ``(True, result)`` or ``(False, error)``."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answer through the pipe and leave without any cleanup
        try:
            os.close(read_end)
            try:
                answer: tuple[bool, Any] = (True, getattr(library, method)(*args))
            except Exception as exc:
                answer = (False, exc)
            with os.fdopen(write_end, "wb") as out:
                out.write(pickle.dumps(answer))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        payload = pipe.read()
    _, status = os.waitpid(pid, 0)
    if not payload:
        return False, RuntimeError(f"the espeak-ng child process died (wait status {status})")
    ok, result = pickle.loads(payload)
    return ok, result


def serve() -> None:
    """The helper process's loop: requests on stdin, answers on stdout, until stdin closes."""
    requests = sys.stdin.buffer
    # Answers go to a private copy of stdout; fd 1 itself now points at stderr, so nothing the
    # library might print can corrupt the protocol.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        library: _Library | None = _Library()
        failure: Exception | None = None
    except EngineUnavailableError as exc:
        library, failure = None, exc
    while (request := _receive(requests)) is not None:
        method, args = request
        if library is None:
            _send(answers, (False, failure))
        elif method == "ping":
            _send(answers, (True, ESPEAK_SAMPLE_RATE_HZ))
        else:
            _send(answers, _run_forked(library, method, args))


class _Helper:
    """The parent's handle on the helper process; one request at a time."""

    def __init__(self) -> None:
        root = Path(__file__).resolve().parents[2]  # so the helper imports this project
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(root), os.environ.get("PYTHONPATH")) if p
            ),
        }
        self._process = subprocess.Popen(
            [sys.executable, "-c", "from models.corpus.espeak import serve; serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        logger.debug("started the espeak-ng helper process %d", self._process.pid)

    def alive(self) -> bool:
        return self._process.poll() is None

    def abandon(self) -> None:
        """Close this process's copies of the pipes (after a fork) without stopping the helper.

        The helper belongs to the parent; once no forked child holds its stdin open, it sees
        the end of input when the parent closes its own end, and exits.
        """
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                os.close(stream.fileno())

    def call(self, method: str, *args: Any) -> Any:
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None and stdout is not None
        _send(stdin, (method, args))
        answer = _receive(stdout)
        if answer is None:
            raise RuntimeError(
                f"the espeak-ng helper process exited (code {self._process.poll()}); see its "
                "messages above"
            )
        ok, result = answer
        if not ok:
            raise result
        return result


# One helper per process, started on first use (never at import), used under a lock because
# it answers one request at a time.
_LOCK = threading.Lock()
_helper: _Helper | None = None


def _reset_after_fork() -> None:
    """A forked child starts its own helper: the parent's pipes would interleave requests."""
    global _LOCK, _helper
    _LOCK = threading.Lock()
    if _helper is not None:
        _helper.abandon()
    _helper = None


os.register_at_fork(after_in_child=_reset_after_fork)


def _call(method: str, *args: Any) -> Any:
    global _helper
    with _LOCK:
        if _helper is None or not _helper.alive():
            _helper = _Helper()
        return _helper.call(method, *args)


def is_available() -> bool:
    """Whether libespeak-ng can be loaded and initialised."""
    try:
        _call("ping")
    except EngineUnavailableError:
        return False
    return True


def check_voice(voice: str) -> None:
    """Raise `EngineUnavailableError` unless the library loads and knows ``voice``."""
    _call("select_voice", voice)


def voices(language: Language) -> tuple[str, ...]:
    """The espeak-ng voices used for ``language``: accents (or Mandarin) x speaker variants."""
    bases = ENGLISH_ACCENTS if language == "en" else (MANDARIN_VOICE,)
    return tuple(f"{base}+{variant}" for base in bases for variant in VARIANTS)


def synthesize(text: str, voice: str = "en-us", rate: float = 1.0, pitch: float = 1.0) -> Synthesis:
    """Speak ``text`` with an espeak-ng voice (``"en-us+f3"``, ``"cmn-latn-pinyin+m2"``).

    English voices read plain text; the Mandarin voice reads numbered pinyin (``"ni3 hao3."``,
    see `models.corpus.pinyin.hanzi_to_pinyin`). ``rate`` scales espeak's default 175 words per
    minute (clamped to its 80-450 range) and ``pitch`` its default base pitch 50 (of 0-100).
    Returns 16 kHz audio and its phone table.
    """
    check_request(text, rate, pitch)
    language = voice_language(voice)
    if language == "zh":
        # cmn-latn-pinyin reads "." inside pinyin as no break at all; a comma gives the pause.
        text = text.replace(".", ",")
    rate_wpm = int(np.clip(round(DEFAULT_RATE_WPM * rate), MIN_RATE_WPM, MAX_RATE_WPM))
    pitch_value = int(np.clip(round(DEFAULT_PITCH * pitch), 0, 100))
    samples, events = _call("synthesize", text, voice, rate_wpm, pitch_value)
    if len(samples) == 0:
        raise RuntimeError(f"espeak-ng produced no audio for {text!r} with voice {voice!r}")
    wave = resample_to_project_rate(samples.astype(np.float32) / 32768.0, ESPEAK_SAMPLE_RATE_HZ)
    table = phones_from_events(
        events,
        len(samples),
        ESPEAK_SAMPLE_RATE_HZ,
        language,
        is_rhotic(voice),
        duration_s=len(wave) / SAMPLE_RATE_HZ,
    )
    return Synthesis(wave, table)

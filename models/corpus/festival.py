"""The festival speech synthesiser, run as a subprocess on a generated Scheme script.

Each call starts ``festival --pipe``, selects a voice, synthesises the text as one utterance and
saves the wave and the Segment relation (each phone with its end time, ``utt.save.segs``) to a
temporary directory. Festival's English voices use the "radio" phone set: ARPAbet in lower case,
``pau`` for pauses and a few extras (``ax`` schwa, ``axr``, syllabic ``el``/``en``/``em``); this
module maps it to the project's upper-case ARPAbet, and `models.corpus.flite` reuses the mapping
for flite's identical set.

Voices (apt packages): ``kal_diphone`` (festvox-kallpc16k), ``ked_diphone`` (festvox-kdlpc16k,
held out from training) and ``cmu_us_slt_arctic_hts`` (festvox-us-slt-hts). Speaking rate works
on all of them (``Duration_Stretch`` for the diphone voices, the HTS engine's ``-r`` for slt);
pitch only on the diphone voices (their linear-regression F0 targets), because festival's HTS
wrapper offers no F0 shift.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Final

import soundfile as sf

from models.blendshapes import SAMPLE_RATE_HZ
from models.corpus.espeak import (
    EngineUnavailableError,
    Synthesis,
    check_request,
    cover_with_silence,
    resample_to_project_rate,
    split_spans,
)
from models.corpus.manifest import PhoneSegment
from models.corpus.phones import ENGLISH_VISEMES, SILENCE

logger = logging.getLogger(__name__)

ENGINE: Final = "festival"
APT_PACKAGE: Final = "festival"
VOICE_PACKAGES: Final[dict[str, str]] = {
    "kal_diphone": "festvox-kallpc16k",
    "ked_diphone": "festvox-kdlpc16k",
    "cmu_us_slt_arctic_hts": "festvox-us-slt-hts",
}
TRAINING_VOICES: Final[tuple[str, ...]] = ("kal_diphone", "cmu_us_slt_arctic_hts")
HELD_OUT_VOICES: Final[tuple[str, ...]] = ("ked_diphone",)
PITCH_VOICES: Final = frozenset({"kal_diphone", "ked_diphone"})
VOICE_DIRS: Final[tuple[Path, ...]] = (
    Path("/usr/share/festival/voices"),
    Path("/usr/lib/festival/voices"),
)
TIMEOUT_S: Final = 120.0

# The radio (and CMU) phone set to project phones; the rest is ARPAbet, upper-cased.
_SPECIAL: Final[dict[str, tuple[str, ...]]] = {
    "pau": (SILENCE,),
    "h#": (SILENCE,),
    "brth": (SILENCE,),
    "ax": ("AH",),
    "axr": ("ER",),
    "ix": ("IH",),
    "dx": ("T",),  # the American flap; CMUdict spells "water" with T
    "el": ("AH", "L"),
    "em": ("AH", "M"),
    "en": ("AH", "N"),
    "hv": ("HH",),
    "nx": ("N",),
}
_ARPABET: Final = frozenset(ENGLISH_VISEMES)


class UnknownPhoneError(ValueError):
    """A festival/flite phone the project's tables do not map."""


def map_radio_phone(phone: str) -> tuple[str, ...]:
    """Project phones for one radio/CMU phone: ``"ax"`` -> ``("AH",)``, ``"pau"`` -> sil."""
    if phone in _SPECIAL:
        return _SPECIAL[phone]
    upper = phone.upper()
    if phone.islower() and upper in _ARPABET:
        return (upper,)
    raise UnknownPhoneError(
        f"phone {phone!r} is not in the radio/CMU phone set; add it to the mapping in "
        "models/corpus/festival.py"
    )


def phones_from_ends(ends: list[tuple[str, float]], duration_s: float) -> list[PhoneSegment]:
    """Phone table from ``(radio_phone, end_s)`` items in time order, covering the audio."""
    items = []
    start = 0.0
    for phone, end in ends:
        items.append((map_radio_phone(phone), start, max(end, start)))
        start = max(end, start)
    return cover_with_silence(split_spans(items), duration_s)


def read_segs(path: Path) -> list[tuple[str, float]]:
    """``(phone, end_s)`` from an xlabel file written by ``utt.save.segs``."""
    rows = path.read_text(encoding="utf-8").splitlines()
    try:
        body = rows[rows.index("#") + 1 :]
    except ValueError as exc:
        raise RuntimeError(f"{path}: festival wrote no segment table (no '#' line)") from exc
    ends = []
    for row in body:
        parts = row.split()
        if len(parts) == 3:
            ends.append((parts[2], float(parts[0])))
    return ends


def is_available(voice: str | None = None) -> bool:
    """Whether the festival binary (and ``voice``, if given) is installed."""
    if shutil.which("festival") is None:
        return False
    return voice is None or _voice_installed(voice)


def _voice_installed(voice: str) -> bool:
    return any((root / group / voice).is_dir() for root in VOICE_DIRS for group in _groups(root))


def _groups(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if p.is_dir()] if root.is_dir() else []


def check_available(voice: str) -> None:
    """Raise `EngineUnavailableError`, naming the apt package, unless ``voice`` can be used."""
    if shutil.which("festival") is None:
        raise EngineUnavailableError(
            f"the festival binary is not installed; install the apt package {APT_PACKAGE}"
        )
    if voice not in VOICE_PACKAGES:
        raise ValueError(
            f"unknown festival voice {voice!r}; choose one of {sorted(VOICE_PACKAGES)}"
        )
    if not _voice_installed(voice):
        raise EngineUnavailableError(
            f"festival voice {voice} is not installed; install the apt package "
            f"{VOICE_PACKAGES[voice]}"
        )


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _script(text: str, voice: str, rate: float, pitch: float, wav: Path, segs: Path) -> str:
    lines = [
        f"(voice_{voice})",
        # Diphone voices stretch durations; the HTS engine ignores that and takes -r instead.
        f"(Parameter.set 'Duration_Stretch (/ (Param.get 'Duration_Stretch) {rate!r}))",
        "(if (boundp 'hts_engine_params) (set! hts_engine_params (append hts_engine_params "
        f'(list (list "-r" {rate!r})))))',
    ]
    if voice in PITCH_VOICES:
        lines.append(
            "(set! int_lr_params (mapcar (lambda (p) (if (string-matches (car p) "
            f'"target_f0_.*") (list (car p) (* {pitch!r} (car (cdr p)))) p)) int_lr_params))'
        )
    lines += [
        f"(set! utt1 (SynthText {_scheme_string(text)}))",
        f"(utt.save.wave utt1 {_scheme_string(str(wav))} 'riff)",
        f"(utt.save.segs utt1 {_scheme_string(str(segs))})",
    ]
    return "\n".join(lines) + "\n"


def synthesize(
    text: str, voice: str = "kal_diphone", rate: float = 1.0, pitch: float = 1.0
) -> Synthesis:
    """Speak English ``text`` with a festival voice; 16 kHz audio and its phone table.

    ``rate`` is a speaking-rate factor (1.2 = 20 % faster than the voice's default) and
    ``pitch`` an F0 factor, ignored by voices outside `PITCH_VOICES`.
    """
    check_request(text, rate, pitch)
    check_available(voice)
    with tempfile.TemporaryDirectory(prefix="festival-") as tmp:
        wav, segs = Path(tmp) / "out.wav", Path(tmp) / "out.segs"
        done = subprocess.run(
            ["festival", "--pipe"],
            input=_script(text, voice, rate, pitch, wav, segs),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
        # festival --pipe reports Scheme errors on its output and carries on, so look for them.
        output = done.stdout + done.stderr
        if done.returncode != 0 or "SIOD ERROR" in output or not wav.exists():
            raise RuntimeError(
                f"festival failed on {text!r} with voice {voice}: {output.strip()[-500:]}"
            )
        samples, rate_hz = sf.read(wav, dtype="float32", always_2d=True)
        ends = read_segs(segs)
    wave = resample_to_project_rate(samples.mean(axis=1), int(rate_hz))
    return Synthesis(wave, phones_from_ends(ends, len(wave) / SAMPLE_RATE_HZ))

"""The flite speech synthesiser (festival's small C sibling), run as a subprocess.

``flite -voice NAME -psdur -o out.wav -t TEXT`` writes the wave and prints every segment with its
end time (``hh:0.255 ax:0.304 ...``). Its phones are the CMU set, identical to festival's radio
set, so the mapping comes from `models.corpus.festival`.

Voices (all in the apt package flite): ``kal16``, ``awb``, ``slt`` for training and ``rms`` held
out. ``kal`` (8 kHz) and ``awb_time`` (a talking clock) are left out. Rate is flite's
``duration_stretch``; pitch its ``f0_shift`` factor, which ``rms`` ignores.
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
    resample_to_project_rate,
)
from models.corpus.festival import phones_from_ends

logger = logging.getLogger(__name__)

ENGINE: Final = "flite"
APT_PACKAGE: Final = "flite"
TRAINING_VOICES: Final[tuple[str, ...]] = ("kal16", "awb", "slt")
HELD_OUT_VOICES: Final[tuple[str, ...]] = ("rms",)
PITCH_VOICES: Final = frozenset({"kal16", "awb", "slt"})
TIMEOUT_S: Final = 120.0


def parse_psdur(output: str) -> list[tuple[str, float]]:
    """``(phone, end_s)`` items from ``-psdur`` output, one utterance per line.

    Should flite split a text into several utterances, each line's times restart at 0 while
    the waves are concatenated, so later lines are offset by the previous line's last end.
    """
    ends: list[tuple[str, float]] = []
    offset = 0.0
    for line in output.splitlines():
        items = [item.rpartition(":") for item in line.split()]
        items = [(phone, sep, time) for phone, sep, time in items if sep and phone]
        if not items:
            continue
        for phone, _, time in items:
            try:
                ends.append((phone, offset + float(time)))
            except ValueError as exc:
                raise RuntimeError(f"unexpected flite -psdur item {phone}:{time}") from exc
        offset = ends[-1][1]
    return ends


def installed_voices() -> tuple[str, ...]:
    """The voices ``flite -lv`` lists (empty when flite is missing)."""
    if shutil.which("flite") is None:
        return ()
    done = subprocess.run(["flite", "-lv"], capture_output=True, text=True, check=False)
    _, _, names = done.stdout.partition(":")
    return tuple(names.split())


def is_available(voice: str | None = None) -> bool:
    """Whether the flite binary (and ``voice``, if given) is installed."""
    voices = installed_voices()
    return bool(voices) and (voice is None or voice in voices)


def check_available(voice: str) -> None:
    """Raise `EngineUnavailableError`, naming the apt package, unless ``voice`` can be used."""
    if shutil.which("flite") is None:
        raise EngineUnavailableError(
            f"the flite binary is not installed; install the apt package {APT_PACKAGE}"
        )
    if voice not in installed_voices():
        raise EngineUnavailableError(
            f"flite has no voice {voice!r} (see `flite -lv`); install the apt package "
            f"{APT_PACKAGE} from Debian, which includes kal16, awb, rms and slt"
        )


def synthesize(text: str, voice: str = "slt", rate: float = 1.0, pitch: float = 1.0) -> Synthesis:
    """Speak English ``text`` with a flite voice; 16 kHz audio and its phone table.

    ``rate`` is a speaking-rate factor (1.2 = 20 % faster than the voice's default) and
    ``pitch`` an F0 factor, ignored by voices outside `PITCH_VOICES`.
    """
    check_request(text, rate, pitch)
    check_available(voice)
    options = ["--setf", f"duration_stretch={1.0 / rate!r}"]
    if voice in PITCH_VOICES:
        options += ["--setf", f"f0_shift={pitch!r}"]
    with tempfile.TemporaryDirectory(prefix="flite-") as tmp:
        wav = Path(tmp) / "out.wav"
        done = subprocess.run(
            ["flite", "-voice", voice, *options, "-psdur", "-o", str(wav), "-t", text],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0 or not wav.exists():
            raise RuntimeError(
                f"flite failed on {text!r} with voice {voice}: {done.stderr.strip()[-500:]}"
            )
        samples, rate_hz = sf.read(wav, dtype="float32", always_2d=True)
    wave = resample_to_project_rate(samples.mean(axis=1), int(rate_hz))
    ends = parse_psdur(done.stdout)
    return Synthesis(wave, phones_from_ends(ends, len(wave) / SAMPLE_RATE_HZ))

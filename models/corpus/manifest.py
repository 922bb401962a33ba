"""The corpus on disk: its layout, the manifest rows and the phone tables.

A corpus directory holds::

    corpus.json          the generator's settings and counts (`CorpusInfo`)
    manifest.jsonl       one `Utterance` per line
    wav/<id>.wav         16 kHz mono 16-bit PCM
    targets/<id>.npy     float32 (T, 32) blendshape targets at 30 fps, T = num_frames(samples)
    phones/<id>.tsv      the phone table: start_s, end_s, phone (tab-separated, with a header)

Paths in the manifest are relative to the corpus directory. Splits: ``train`` and ``val`` use
the training voices and sentences; ``test`` holds voices and sentences never used in training.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

MANIFEST_NAME: Final = "manifest.jsonl"
INFO_NAME: Final = "corpus.json"
FORMAT_VERSION: Final = 1

Split = Literal["train", "val", "test"]
SPLITS: Final[tuple[Split, ...]] = ("train", "val", "test")


@dataclass(frozen=True)
class PhoneSegment:
    """One phone of the project's phone set (`models.corpus.phones`) and when it sounds."""

    phone: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class Utterance:
    """One manifest row."""

    id: str
    split: Split
    language: str  # "en" or "zh"
    engine: str  # "espeak-ng", "festival" or "flite"
    voice: str
    text: str
    audio: str  # relative path of the WAV
    targets: str  # relative path of the (T, 32) .npy
    phones: str  # relative path of the phone table
    num_samples: int
    num_frames: int
    style: int = -1  # training-subject index (the style vector p); -1 for held-out voices
    rate: float = 1.0  # speaking-rate factor relative to the voice's default
    pitch: float = 1.0  # pitch factor relative to the voice's default
    augment: dict[str, Any] = field(default_factory=dict)  # what the augmentation applied

    @property
    def duration_s(self) -> float:
        return self.num_samples / 16_000


@dataclass(frozen=True)
class CorpusInfo:
    """corpus.json: enough to regenerate the same corpus and to describe it in a recipe."""

    seed: int
    size: int
    counts: dict[str, int]  # utterances per split
    hours: float
    settings: dict[str, Any] = field(default_factory=dict)
    version: int = FORMAT_VERSION


def write_phone_table(path: Path, segments: Iterable[PhoneSegment]) -> None:
    lines = ["start_s\tend_s\tphone"]
    lines += [f"{s.start_s:.5f}\t{s.end_s:.5f}\t{s.phone}" for s in segments]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_phone_table(path: Path) -> list[PhoneSegment]:
    rows = path.read_text(encoding="utf-8").splitlines()
    if not rows or rows[0].split("\t") != ["start_s", "end_s", "phone"]:
        raise ValueError(f"{path}: not a phone table (expected a start_s/end_s/phone header)")
    segments = []
    for number, row in enumerate(rows[1:], start=2):
        parts = row.split("\t")
        if len(parts) != 3:
            raise ValueError(f"{path}:{number}: expected 3 tab-separated fields")
        segments.append(PhoneSegment(parts[2], float(parts[0]), float(parts[1])))
    return segments


def write_manifest(path: Path, rows: Iterable[Utterance]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(asdict(row), ensure_ascii=False) + "\n")


def read_manifest(path: Path) -> Iterator[Utterance]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield Utterance(**json.loads(line))
            except (TypeError, json.JSONDecodeError) as exc:
                raise ValueError(f"{path}:{number}: bad manifest row: {exc}") from exc


def write_info(path: Path, info: CorpusInfo) -> None:
    path.write_text(json.dumps(asdict(info), indent=2) + "\n", encoding="utf-8")


def read_info(path: Path) -> CorpusInfo:
    return CorpusInfo(**json.loads(path.read_text(encoding="utf-8")))

"""Live Link Face takes: the iPhone app's blendshape CSV plus the take's audio, as `Clip`s.

Live Link Face writes one CSV per take with the header::

    Timecode,BlendShapeCount,EyeBlinkLeft,EyeLookDownLeft,...,TongueOut,HeadYaw,HeadPitch,
    HeadRoll,LeftEyeYaw,LeftEyePitch,LeftEyeRoll,RightEyeYaw,RightEyePitch,RightEyeRoll

61 value columns: the 52 ARKit blendshapes in PascalCase (``JawOpen``), then head and eye
rotations. Rows come at the capture rate (60 fps by default) and are stamped with a timecode
``HH:MM:SS:FF.sss``: FF counts frames at that rate and ``.sss`` is a fraction of a frame. A row
lost by the phone leaves a gap in the timecodes, so rows are placed by their time, never by
their index, and resampled to the project's 30 fps by linear interpolation.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np
import soundfile as sf
from torch.utils.data import Dataset

from models.blendshapes import BLENDSHAPE_NAMES, FPS, SAMPLE_RATE_HZ, num_frames
from models.data.batch import UNKNOWN_STYLE, Clip, as_clip_language
from pmmtalk.audio import decode_audio

logger = logging.getLogger(__name__)

LIVELINK_FPS: Final = 60.0
"""Live Link Face's default capture rate, frames per second."""

TIMECODE_COLUMN: Final = "Timecode"
# Informational (always 61); not a value column.
COUNT_COLUMN: Final = "BlendShapeCount"

# ARKit's 52 face blendshapes (ARFaceAnchor.BlendShapeLocation raw values) in Live Link Face's
# column order, the names the CSV's PascalCase headers are mapped to. The project's 32 are the
# jaw and mouth block plus the cheek and nose shapes, so they are spliced in from
# `BLENDSHAPE_NAMES` rather than spelled out twice.
_EYES: Final = tuple(
    f"eye{part}{side}"
    for side in ("Left", "Right")
    for part in ("Blink", "LookDown", "LookIn", "LookOut", "LookUp", "Squint", "Wide")
)
_BROWS: Final = (
    "browDownLeft",
    "browDownRight",
    "browInnerUp",
    "browOuterUpLeft",
    "browOuterUpRight",
)
_FIRST_CHEEK: Final = BLENDSHAPE_NAMES.index("cheekPuff")
ARKIT_BLENDSHAPE_NAMES: Final[tuple[str, ...]] = (
    *_EYES,
    *BLENDSHAPE_NAMES[:_FIRST_CHEEK],
    *_BROWS,
    *BLENDSHAPE_NAMES[_FIRST_CHEEK:],
    "tongueOut",
)
_ARKIT_BY_LOWER: Final = {name.lower(): name for name in ARKIT_BLENDSHAPE_NAMES}

# HH:MM:SS:FF or HH:MM:SS:FF.fraction; ';' before FF marks drop-frame timecode in SMPTE notation.
_TIMECODE_RE: Final = re.compile(r"^(\d{1,2}):(\d{2}):(\d{2})[:;](\d+)(\.\d+)?$")
_DAY_S: Final = 86_400.0

# Calibration exports that may sit beside a take's CSV; they carry no performance.
_CALIBRATION_SUFFIX: Final = "_cal"


def canonical_name(column: str) -> str:
    """ARKit camelCase for a blendshape column (``JawOpen`` -> ``jawOpen``), else unchanged."""
    return _ARKIT_BY_LOWER.get(column.strip().lower(), column.strip())


def parse_timecode(text: str, fps_in: float) -> float:
    """``HH:MM:SS:FF[.fraction]`` -> seconds since midnight, with FF counted at ``fps_in``.

    Raises ValueError for text of another shape or a frame field not below ``fps_in``.
    """
    return _parse_timecode(text, fps_in)[0]


def _parse_timecode(text: str, fps_in: float) -> tuple[float, int]:
    """(seconds since midnight, the frame field FF)."""
    match = _TIMECODE_RE.match(text.strip())
    if match is None:
        raise ValueError(f"timecode {text!r} is not HH:MM:SS:FF or HH:MM:SS:FF.fraction")
    hours, minutes, seconds, frame = (int(match[i]) for i in range(1, 5))
    fraction = float(match[5]) if match[5] else 0.0
    if minutes >= 60 or seconds >= 60 or frame >= fps_in:
        raise ValueError(
            f"timecode {text!r} is out of range (frame field must be below fps_in={fps_in:g}; "
            "pass the take's frame rate as fps_in)"
        )
    return hours * 3600.0 + minutes * 60.0 + seconds + (frame + fraction) / fps_in, frame


def read_livelink_csv(
    path: Path, fps_in: float = LIVELINK_FPS
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a Live Link Face CSV.

    Args:
        path: the take's CSV.
        fps_in: the capture rate the timecodes' frame field counts in (60 unless the app was
            set to 30).

    Returns:
        ``times_s`` (N,) float64 seconds since midnight of each row (strictly increasing; a take
        that runs past midnight keeps counting past 86400), ``values`` (N, C) float32 of the value
        columns in file order (C = 61 for a standard take) and ``names`` (C,), blendshapes in ARKit
        camelCase (``jawOpen``) and other columns (``HeadYaw``) as written.

    Raises:
        ValueError: no ``Timecode`` column, repeated columns, an unparseable timecode or value,
            a short row, or a timecode not later than the row before; each names the file line.
    """
    if not fps_in > 0:
        raise ValueError(f"fps_in must be positive, got {fps_in}")
    with Path(path).open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path} is empty; expected a Live Link Face CSV with a header")
        columns = [column.strip() for column in header]
        if TIMECODE_COLUMN.lower() not in (column.lower() for column in columns):
            raise ValueError(
                f"{path}: no {TIMECODE_COLUMN} column in the header; is this a Live Link Face CSV?"
            )
        time_col = [column.lower() for column in columns].index(TIMECODE_COLUMN.lower())
        value_cols = [
            i
            for i, column in enumerate(columns)
            if i != time_col and column.lower() != COUNT_COLUMN.lower()
        ]
        names = [canonical_name(columns[i]) for i in value_cols]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"{path}: columns appear more than once: {', '.join(repeated)}")

        times: list[float] = []
        rows: list[list[float]] = []
        max_frame_field = 0
        day_offset_s = 0.0
        for line, record in enumerate(reader, start=2):
            if not record or all(not cell.strip() for cell in record):
                continue
            if len(record) < len(columns):
                raise ValueError(
                    f"{path}:{line}: {len(record)} fields, the header has {len(columns)}; "
                    "the file may be cut short"
                )
            try:
                time_s, frame_field = _parse_timecode(record[time_col], fps_in)
            except ValueError as e:
                raise ValueError(f"{path}:{line}: {e}") from e
            time_s += day_offset_s
            if times and time_s <= times[-1] - _DAY_S / 2:
                # The clock went past midnight: keep time increasing.
                day_offset_s += _DAY_S
                time_s += _DAY_S
            if times and time_s <= times[-1]:
                raise ValueError(
                    f"{path}:{line}: timecode {record[time_col].strip()} is not later than the "
                    "row before; rows must be in time order (is fps_in right?)"
                )
            try:
                rows.append([float(record[i]) for i in value_cols])
            except ValueError as e:
                raise ValueError(f"{path}:{line}: a value is not a number ({e})") from e
            times.append(time_s)
            max_frame_field = max(max_frame_field, frame_field)
    if not times:
        raise ValueError(f"{path} has a header but no rows")
    if times[-1] - times[0] >= 2.0 and max_frame_field + 1 <= fps_in / 2:
        logger.warning(
            "%s: the timecode frame field never exceeds %d, below half of fps_in=%g; if the take "
            "was captured at a lower rate, pass that rate as fps_in or the times will be wrong",
            path,
            max_frame_field,
            fps_in,
        )
    values = np.asarray(rows, dtype=np.float32).reshape(len(rows), len(value_cols))
    return np.asarray(times, dtype=np.float64), values, names


def to_project_frames(
    times: np.ndarray,
    values: np.ndarray,
    names: Sequence[str],
    num_frames: int,
    fps: int = FPS,
    *,
    start_s: float = 0.0,
) -> np.ndarray:
    """Select the project's 32 blendshapes and resample them by time to ``fps``.

    Frame i takes the value at ``times[0] + start_s + i / fps`` seconds, linearly interpolated
    between the two rows around it, so dropped rows are bridged by their neighbours; before the
    first row or after the last the edge row's value is held.

    Args:
        times: (N,) strictly increasing row times in seconds.
        values: (N, C) row values; ``names`` (C,) their ARKit names (case-insensitive).
        num_frames: frames to produce, >= 0.
        fps: output frame rate.
        start_s: where frame 0 sits on the CSV clock, in seconds after the first row (positive
            when the audio starts after the capture).

    Returns:
        (num_frames, 32) float32 in `models.blendshapes.BLENDSHAPE_NAMES` order.
    """
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1 or times.shape[0] == 0:
        raise ValueError(f"times must be a non-empty 1-D array, got shape {times.shape}")
    if values.shape != (times.shape[0], len(names)):
        raise ValueError(
            f"values must have shape (N, C) = ({times.shape[0]}, {len(names)}) to match times "
            f"and names, got {values.shape}"
        )
    if times.shape[0] > 1 and not bool((np.diff(times) > 0).all()):
        row = int(np.argmax(np.diff(times) <= 0)) + 1
        raise ValueError(
            f"times must be strictly increasing; row {row} is not after the one before"
        )
    if num_frames < 0 or fps <= 0:
        raise ValueError(f"need num_frames >= 0 and fps > 0, got {num_frames=} and {fps=}")
    columns = project_columns(names)
    query = times[0] + start_s + np.arange(num_frames) / fps  # (num_frames,)
    out = np.empty((num_frames, len(columns)), dtype=np.float32)
    for k, column in enumerate(columns):
        out[:, k] = np.interp(query, times, values[:, column].astype(np.float64))
    return out


def project_columns(names: Sequence[str]) -> list[int]:
    """Positions in ``names`` of the project's 32 blendshapes, in `BLENDSHAPE_NAMES` order.

    Names match case-insensitively. Raises ValueError naming every missing blendshape.
    """
    index = {canonical_name(name).lower(): i for i, name in enumerate(names)}
    missing = [name for name in BLENDSHAPE_NAMES if name.lower() not in index]
    if missing:
        raise ValueError(
            f"the capture lacks {len(missing)} of the project's 32 blendshapes: "
            f"{', '.join(missing)}; export the take with all ARKit blendshapes"
        )
    return [index[name.lower()] for name in BLENDSHAPE_NAMES]


class LiveLinkDataset(Dataset[Clip]):
    """Live Link Face takes under ``root``: each ``<take>.csv`` with its ``<take>.wav``.

    CSVs are found recursively (Live Link Face puts each take in its own folder); ones whose
    stem ends in ``_cal`` are calibration exports and skipped. The audio must be a WAV (or any
    file libsndfile reads) with the same stem in the same folder; a take recorded only as .mov
    needs its audio extracted first (``ffmpeg -i take.mov -vn -ac 1 -ar 16000 take.wav``).

    Every CSV is parsed when the dataset opens (errors surface at once); the targets are
    resampled when an item is read, for exactly the frames its decoded audio has.

    Args:
        root: the folder of takes.
        audio_offset_s: seconds from the first CSV row to the first audio sample (positive when
            the audio starts later than the capture), the same for every take.
        fps_in: the capture rate of the CSV timecodes.
        language, style: given to every clip (takes carry neither).
    """

    def __init__(
        self,
        root: Path,
        audio_offset_s: float = 0.0,
        *,
        fps_in: float = LIVELINK_FPS,
        language: str = "unknown",
        style: int = UNKNOWN_STYLE,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"{self.root} is not a directory of Live Link Face takes")
        if not math.isfinite(audio_offset_s):
            raise ValueError(f"audio_offset_s must be a finite number, got {audio_offset_s}")
        self.audio_offset_s = audio_offset_s
        self.language = as_clip_language(language, "LiveLinkDataset")
        self.style = style
        csvs = sorted(
            path
            for path in self.root.rglob("*.csv")
            if not path.stem.lower().endswith(_CALIBRATION_SUFFIX)
        )
        if not csvs:
            raise ValueError(f"{self.root} holds no Live Link Face .csv takes")
        self._takes: list[tuple[str, Path, np.ndarray, np.ndarray]] = []
        counts = []
        for path in csvs:
            audio = path.with_suffix(".wav")
            if not audio.is_file():
                raise ValueError(
                    f"{path} has no paired audio: expected {audio.name} beside it (extract it "
                    f"from the take's video with: ffmpeg -i {path.stem}.mov -vn -ac 1 -ar 16000 "
                    f"{audio.name})"
                )
            times, values, names = read_livelink_csv(path, fps_in)
            try:
                columns = project_columns(names)
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from e
            try:
                info = sf.info(str(audio))
            except sf.LibsndfileError as e:
                raise ValueError(f"{audio} is not a readable audio file: {e.error_string}") from e
            capture_s = float(times[-1] - times[0])
            audio_end_s = audio_offset_s + info.frames / info.samplerate
            if audio_end_s > capture_s + 0.5:
                logger.warning(
                    "%s: audio runs %.2f s past the last CSV row; those frames hold the last pose",
                    path,
                    audio_end_s - capture_s,
                )
            take_id = path.relative_to(self.root).with_suffix("").as_posix()
            self._takes.append((take_id, audio, times, values[:, columns]))
            counts.append(round(info.frames * SAMPLE_RATE_HZ / info.samplerate))
        self._sample_counts = tuple(counts)

    def __len__(self) -> int:
        return len(self._takes)

    @property
    def sample_counts(self) -> tuple[int, ...]:
        """Samples at 16 kHz of each take, for `models.data.batch.LengthBucketSampler`."""
        return self._sample_counts

    def __getitem__(self, index: int) -> Clip:
        take_id, audio, times, values = self._takes[index]
        wave = decode_audio(audio).samples
        targets = to_project_frames(
            times,
            values,
            BLENDSHAPE_NAMES,
            num_frames(wave.shape[0], SAMPLE_RATE_HZ),
            start_s=self.audio_offset_s,
        )
        return Clip(
            id=take_id,
            wave=wave,
            targets=targets,
            language=self.language,
            style=self.style,
            phones=None,
            source="livelink",
        )

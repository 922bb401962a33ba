"""The fixed window the streaming engine runs: left context + new audio (the hop) + lookahead.

PMMTalk's speech encoders attend over the whole input, so a frame's value depends on audio on
both sides of it. A stream therefore runs the network on fixed windows: ``left_context_s`` of
audio already answered, ``hop_s`` of new audio whose frames the window emits, and
``lookahead_s`` of audio after them (frames there are provisional and recomputed by the next
window). Every window has the same length, so a whole batch of sessions' windows goes through one
fixed-shape graph call (`window_forward`, and the ``stream_window.onnx`` export).

All three lengths are multiples of 0.1 s: there 1,600 samples, 3 frames at 30 fps and 5 latents
at 50 Hz start at the same instant, so a window's frames sit exactly on the clip's frame grid.

Most of a window's work is per frame: the talking-head generator and the image encoder's frame
CNN see one frame's 0.2 s mel window each. Those results do not change when the window moves on,
so a stream carries them (`window_step`): each window computes them only for frames from
``carry_frames`` on and takes the earlier ones from its predecessor's ``carry_out``. Frames near
a window's edges have mel windows that reach past its audio; ``CARRY_MARGIN_FRAMES`` keeps those
out of what is carried.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from models.blendshapes import FPS, SAMPLE_RATE_HZ

if TYPE_CHECKING:  # torch stays out of the import: the ONNX serving path reads StreamWindow
    from torch import Tensor

    from models.pmmtalk import PMMTalk

UNIT_S: Final = 0.1
"""Every window length is a whole number of these (see the module docstring)."""
UNIT_SAMPLES: Final = 1_600
UNIT_FRAMES: Final = 3
CARRY_MARGIN_FRAMES: Final = 5
"""Frames at a window's start that are not carried, and the least distance of a carried frame
from a window's end. A frame's mel window spans 0.1 s before it to 0.09 s after it, plus half
the 800-sample STFT: 4 frames at 30 fps; one more for safety."""


def _units(seconds: float, name: str, allow_zero: bool) -> int:
    units = round(seconds / UNIT_S)
    if abs(units * UNIT_S - seconds) > 1e-9 or units < 0 or (units == 0 and not allow_zero):
        least = "0" if allow_zero else "0.1"
        raise ValueError(
            f"{name} must be a multiple of 0.1 s and at least {least} s, got {seconds}"
        )
    return units


@dataclass(frozen=True)
class StreamWindow:
    """Window lengths in seconds, each a multiple of 0.1 s (``hop_s`` at least 0.1 s)."""

    # The server's defaults (server/settings.py), so an export made with no window given is
    # the one `pmmtalk serve` looks for.
    left_context_s: float = 1.0
    hop_s: float = 0.4
    lookahead_s: float = 0.4
    """The bundled model's frames depend on about 0.4 s of later audio (its banded speech and
    image encoders each reach 0.1 s ahead per layer, plus convolutions); at 0.3 s some stream
    frames differed from `/animate` by up to 0.16 (docs/evaluation.md)."""

    def __post_init__(self) -> None:
        _units(self.left_context_s, "left_context_s", allow_zero=True)
        _units(self.hop_s, "hop_s", allow_zero=False)
        _units(self.lookahead_s, "lookahead_s", allow_zero=True)

    @property
    def window_s(self) -> float:
        return round(self.left_context_s + self.hop_s + self.lookahead_s, 6)

    @property
    def window_samples(self) -> int:
        """Samples of one window at 16 kHz (the graph's fixed ``wave`` length)."""
        return self._samples(self.window_s)

    @property
    def window_frames(self) -> int:
        """Frames one window yields (the graph's fixed ``blendshapes`` length)."""
        return self._frames(self.window_s)

    @property
    def left_frames(self) -> int:
        """Frames of left context at the start of each window's output."""
        return self._frames(self.left_context_s)

    @property
    def hop_frames(self) -> int:
        """New frames each window emits: window frames [left_frames, left_frames + hop_frames)."""
        return self._frames(self.hop_s)

    @property
    def carry_frames(self) -> int:
        """Frames at a window's start whose per-frame features come from the stream's previous
        window (`window_step`); 0 when the left context is too short to carry any."""
        return max(0, self.left_frames - CARRY_MARGIN_FRAMES)

    @property
    def hop_samples(self) -> int:
        return self._samples(self.hop_s)

    @property
    def lookahead_frames(self) -> int:
        return self._frames(self.lookahead_s)

    @property
    def lookahead_samples(self) -> int:
        """Audio a stream must have beyond a hop before that hop's frames can be emitted."""
        return self._samples(self.lookahead_s)

    @staticmethod
    def _samples(seconds: float) -> int:
        return round(seconds / UNIT_S) * UNIT_SAMPLES

    @staticmethod
    def _frames(seconds: float) -> int:
        return round(seconds / UNIT_S) * UNIT_FRAMES

    def to_dict(self) -> dict[str, float | int]:
        """Lengths in seconds, samples and frames (what export metadata and /info report)."""
        return {
            "left_context_s": self.left_context_s,
            "hop_s": self.hop_s,
            "lookahead_s": self.lookahead_s,
            "window_samples": self.window_samples,
            "window_frames": self.window_frames,
            "left_frames": self.left_frames,
            "hop_frames": self.hop_frames,
            "lookahead_frames": self.lookahead_frames,
            "carry_frames": self.carry_frames,
            "sample_rate_hz": SAMPLE_RATE_HZ,
            "fps": FPS,
        }


def window_forward(
    model: PMMTalk,
    wave: Tensor,
    identity: list[Tensor],
    style: Tensor,
    frame_offset: Tensor,
) -> Tensor:
    """A batch of same-length windows through the network.

    wave (B, W) float32 at 16 kHz, W a multiple of 1,600 samples; identity the face encoder's
    pyramid with batch B (one face per window); style (B, style_dim) float; frame_offset (B,)
    int64, the absolute index on the stream's frame clock of each window's first frame (it
    places the decoder's periodic positional encoding; it may be negative for a window that
    starts before the stream, in left-padding silence). Returns (B, W * 30 / 16000, 32),
    unclipped.
    """
    samples = int(wave.shape[-1])
    if samples % UNIT_SAMPLES:
        raise ValueError(f"a window must be a multiple of {UNIT_SAMPLES} samples, got {samples}")
    frames = samples // UNIT_SAMPLES * UNIT_FRAMES
    speech = model.encode_speech(wave, frames)
    return model.decode(speech, identity, style, start_index=frame_offset).blendshapes


def window_step(
    model: PMMTalk,
    window: StreamWindow,
    wave: Tensor,
    identity: list[Tensor],
    style: Tensor,
    frame_offset: Tensor,
    carry: Tensor,
    fresh_start: Tensor,
) -> tuple[Tensor, Tensor]:
    """`window_forward` for a stream's next window, with the per-frame work carried over.

    wave, identity, style, frame_offset as in `window_forward`, W = ``window.window_samples``.
    carry (B, C, D) float32, C = ``window.carry_frames``, D = the image encoder's width: the
    previous window's ``carry_out`` for each stream. fresh_start (B,) float32, 1 for a window
    that starts its stream (its left context is the silence before the stream; its carry row is
    ignored), else 0. Returns (blendshapes (B, Tw, 32) unclipped, carry_out (B, C, D)).

    Frames [C, Tw) get fresh per-frame features; frames [0, C) take ``carry``, or for a
    starting window the features of a silent frame, which is what those frames of a starting
    window are. ``carry_out`` holds frames [hop, hop + C): the next window's first C frames.
    """
    import torch

    from models.mel import SILENCE_LEVEL

    carried = window.carry_frames
    if carried < 1:
        raise ValueError(
            "a stream window needs at least 0.2 s of left context to carry per-frame work, got "
            f"{window.left_context_s} s"
        )
    frames = window.window_frames
    if int(wave.shape[-1]) != window.window_samples:
        raise ValueError(
            f"a window must be {window.window_samples} samples, got {int(wave.shape[-1])}"
        )
    speech = model.encode_speech(wave, frames)
    mel = speech.mel_windows[:, carried:]  # (B, Tw - C, 1, m, s): the frames computed afresh
    silent = torch.full_like(mel[:, :1], SILENCE_LEVEL)  # one silent frame's mel window
    computed = model.frame_features(torch.cat([mel, silent], dim=1), identity)
    fresh, quiet = computed[:, :-1], computed[:, -1:]  # (B, Tw - C, D), (B, 1, D)
    starts = (fresh_start > 0.5)[:, None, None]  # (B, 1, 1)
    head = torch.where(starts, quiet.expand(-1, carried, -1), carry)  # (B, C, D)
    features = torch.cat([head, fresh], dim=1)  # (B, Tw, D)
    blendshapes = model.decode_frames(speech, features, style, frame_offset).blendshapes
    hop = window.hop_frames
    return blendshapes, features[:, hop : hop + carried]

"""The output contract: 32 ARKit blendshape names, frame rate and the frame-count rule."""

from __future__ import annotations

from typing import Final

SAMPLE_RATE_HZ: Final = 16_000
"""Speech is fed to the network at this rate (mono)."""

FPS: Final = 30
"""Animation frames per second; frame i sits at i / FPS seconds of the audio clock."""

FEATURE_RATE_HZ: Final = 50
"""wav2vec 2.0's latent frame rate (a 320-sample hop at 16 kHz)."""

STYLE_DIM: Final = 64
"""Size of the personal style vector p."""

# The pronunciation-related ARKit shapes, in Live Link Face column order (see PMMTALK.md).
BLENDSHAPE_NAMES: Final[tuple[str, ...]] = (
    "jawForward",
    "jawRight",
    "jawLeft",
    "jawOpen",
    "mouthClose",
    "mouthFunnel",
    "mouthPucker",
    "mouthRight",
    "mouthLeft",
    "mouthSmileLeft",
    "mouthSmileRight",
    "mouthFrownLeft",
    "mouthFrownRight",
    "mouthDimpleLeft",
    "mouthDimpleRight",
    "mouthStretchLeft",
    "mouthStretchRight",
    "mouthRollLower",
    "mouthRollUpper",
    "mouthShrugLower",
    "mouthShrugUpper",
    "mouthPressLeft",
    "mouthPressRight",
    "mouthLowerDownLeft",
    "mouthLowerDownRight",
    "mouthUpperUpLeft",
    "mouthUpperUpRight",
    "cheekPuff",
    "cheekSquintLeft",
    "cheekSquintRight",
    "noseSneerLeft",
    "noseSneerRight",
)
NUM_BLENDSHAPES: Final = len(BLENDSHAPE_NAMES)


def num_frames(num_samples: int, sample_rate_hz: int, fps: int = FPS) -> int:
    """Frames for a clip: exactly ``ceil(num_samples * fps / sample_rate_hz)``.

    Integer arithmetic, so no float rounding can add or drop a frame on long clips. The ceiling
    is written with non-negative operands only, because ONNX's integer division truncates where
    Python's floors, and the exported graph computes this from a symbolic length.
    """
    if num_samples < 0 or sample_rate_hz <= 0 or fps <= 0:
        raise ValueError(
            f"num_frames needs num_samples >= 0 and positive rates, got "
            f"{num_samples=}, {sample_rate_hz=}, {fps=}"
        )
    return (num_samples * fps + sample_rate_hz - 1) // sample_rate_hz


def frame_time_s(index: int, fps: int = FPS) -> float:
    """Time of frame ``index`` on the audio clock, in seconds."""
    return index / fps

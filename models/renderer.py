"""A procedural frontal face driven by the 32 ARKit coefficients.

Two uses: a stand-in avatar that lets a person judge lip-sync without a game engine, and a source
of varied synthetic reference faces (:meth:`FaceIdentity.random`) framed like a Wav2Lip crop:
the face fills the square, the chin sits near the bottom edge, the eyes and the bridge of the
nose are in the upper half and the mouth is in the lower half (the half Wav2Lip masks).

All geometry is worked out in *frame units* (0 = top/left edge, 1 = bottom/right edge of the
square, y down) and turned into OpenCV fixed-point pixels only when drawing, so one layout
serves every output size. Faces are drawn at least :data:`MIN_DRAW_SIZE_PX` wide and shrunk with
area averaging, which keeps a 24 px face's mouth opening as grey levels instead of aliasing.

Side convention: ARKit's ``Left``/``Right`` are the *subject's* sides. The face looks at the
viewer, so ``mouthSmileLeft`` raises the corner on the image's right, and ``jawLeft`` /
``mouthLeft`` move towards +x.

Every coefficient changes the picture; the smallest effects are ``mouthClose`` on its own (it
only slightly compresses the lips: in ARKit it is meant to be combined with ``jawOpen``, where it
closes the lips over the open jaw) and ``jawForward`` (a frontal view shows protrusion only as a
slightly longer, broader chin and lower lip).

Speed: the parts no coefficient moves (background, hair, ears, neck, forehead, eyes, brows) are
drawn once per identity and size; the geometry of the moving parts is computed for all frames at
once with numpy; each frame is then about twenty anti-aliased OpenCV fill/line calls.
"""

from __future__ import annotations

import colorsys
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import cv2
import numpy as np

from models.blendshapes import BLENDSHAPE_NAMES, NUM_BLENDSHAPES

logger = logging.getLogger(__name__)

RGB = tuple[int, int, int]
"""A colour as (red, green, blue), each 0-255."""

MIN_SIZE_PX: Final = 24
"""Smallest output side: the lite network's reference image size."""
MAX_SIZE_PX: Final = 1024
"""Largest output side accepted."""
MIN_DRAW_SIZE_PX: Final = 96
"""Smaller outputs are drawn at an integer multiple of their size that reaches this, then shrunk
with ``cv2.INTER_AREA``: at 24 px a lip line is a quarter pixel, which only area averaging keeps."""
NUM_HAIR_STYLES: Final = 5
"""Hair styles: 0 shaved, 1 short, 2 side-swept fringe, 3 long, 4 voluminous curls."""

_SHIFT_BITS: Final = 4
"""Fixed-point fraction bits for OpenCV drawing: sub-pixel positions keep slow motion smooth."""
_SHIFT_SCALE: Final = 1 << _SHIFT_BITS
_MOUTH_POINTS: Final = 17
"""Samples across the mouth, corner to corner (odd, so the centre is one of them)."""
_JAW_POINTS: Final = 14
"""Samples down each side of the lower face."""
_MAX_JAW_DROP: Final = 0.115
"""How far the chin and lower lip travel at jawOpen = 1, in frame heights (before head scale)."""
_LIP_LINE_WIDTH: Final = 0.008
"""Line widths, in frame widths; never thinner than one pixel of the drawing canvas."""
_CREASE_WIDTH: Final = 0.007

_IDX: Final = {name: i for i, name in enumerate(BLENDSHAPE_NAMES)}

_SKIN_TONES: Final = np.array(
    [
        (255, 226, 204),
        (243, 205, 178),
        (230, 180, 146),
        (208, 152, 112),
        (176, 118, 84),
        (140, 90, 62),
        (104, 66, 46),
        (74, 48, 36),
    ],
    dtype=np.float64,
)
"""Anchors from very light to very dark; random skins interpolate between neighbours."""
_HAIR_COLOURS: Final = (
    (24, 20, 18),
    (52, 36, 28),
    (96, 64, 42),
    (140, 72, 38),
    (196, 160, 104),
    (226, 204, 150),
    (150, 148, 144),
    (222, 222, 218),
)
_EYE_COLOURS: Final = (
    (58, 38, 26),
    (92, 60, 36),
    (112, 88, 52),
    (84, 110, 70),
    (70, 112, 150),
    (110, 124, 136),
)
_TEETH_UPPER: Final = (236, 232, 220)
_TEETH_LOWER: Final = (212, 206, 194)
_MOUTH_INSIDE: Final = (36, 10, 14)
_SCLERA: Final = (242, 240, 234)


@dataclass(frozen=True)
class FaceIdentity:
    """Everything about a face that the coefficients do not move.

    Lengths are fractions of the frame side (or of the face width where said) before
    ``head_scale``; colours are RGB 0-255.
    """

    skin: RGB = (226, 176, 142)
    lip: RGB = (186, 96, 98)
    hair: RGB = (62, 42, 30)
    background: RGB = (188, 208, 224)
    eye: RGB = (92, 60, 36)
    face_width: float = 0.70
    """Cheek-to-cheek width, in frame widths (0.60-0.78)."""
    face_height: float = 0.88
    """Row of the chin with the jaw closed, in frame heights from the top (0.85-0.93)."""
    eye_spacing: float = 0.45
    """Distance between the eye centres, in face widths (0.38-0.52)."""
    eye_size: float = 1.0
    """Eye opening scale (0.8-1.25)."""
    mouth_width: float = 0.46
    """Corner-to-corner mouth width at rest, in face widths (0.38-0.54)."""
    lip_fullness: float = 1.0
    """Lip thickness scale (0.7-1.4)."""
    nose_size: float = 1.0
    """Nose scale (0.8-1.25)."""
    jaw_shape: float = 0.4
    """0 for a tapered, rounded jaw up to 1 for a square one."""
    brow_weight: float = 1.0
    """Eyebrow thickness scale (0.6-1.5)."""
    head_offset: tuple[float, float] = (0.0, 0.0)
    """(dx, dy) shift of the whole head, in frame units (each within +-0.04)."""
    head_scale: float = 1.0
    """Size of the whole head about the frame centre (0.92-1.06)."""
    hair_style: int = 1
    """Index below :data:`NUM_HAIR_STYLES`."""
    beard: bool = False

    def __post_init__(self) -> None:
        for name in ("skin", "lip", "hair", "background", "eye"):
            colour = getattr(self, name)
            if len(colour) != 3 or not all(0 <= int(c) <= 255 for c in colour):
                raise ValueError(f"FaceIdentity.{name} must be an (r, g, b) tuple of 0-255 ints")
        limits = {
            "face_width": (0.60, 0.78),
            "face_height": (0.85, 0.93),
            "eye_spacing": (0.38, 0.52),
            "eye_size": (0.8, 1.25),
            "mouth_width": (0.38, 0.54),
            "lip_fullness": (0.7, 1.4),
            "nose_size": (0.8, 1.25),
            "jaw_shape": (0.0, 1.0),
            "brow_weight": (0.6, 1.5),
            "head_scale": (0.92, 1.06),
        }
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(
                    f"FaceIdentity.{name}={value} is outside [{low}, {high}]; the layout keeps "
                    "the face framed like a Wav2Lip crop only within that range"
                )
        if len(self.head_offset) != 2 or any(abs(v) > 0.04 for v in self.head_offset):
            raise ValueError(
                f"FaceIdentity.head_offset={self.head_offset} must be (dx, dy) within +-0.04"
            )
        if not 0 <= self.hair_style < NUM_HAIR_STYLES:
            raise ValueError(
                f"FaceIdentity.hair_style={self.hair_style} must be in 0..{NUM_HAIR_STYLES - 1}"
            )

    @classmethod
    def default(cls) -> FaceIdentity:
        """A fixed, neutral-looking face: the one the CLI renders without ``--face-seed``."""
        return cls()

    @classmethod
    def random(cls, rng: np.random.Generator) -> FaceIdentity:
        """Draw a face: skin from very light to very dark, any background hue and brightness,
        varied proportions, hair, eye colour and beard. Reproducible for a seeded ``rng``."""
        tone = rng.uniform(0.0, len(_SKIN_TONES) - 1)
        low = math.floor(tone)
        high = min(low + 1, len(_SKIN_TONES) - 1)
        skin_f = _SKIN_TONES[low] + (tone - low) * (_SKIN_TONES[high] - _SKIN_TONES[low])
        skin_f = skin_f + rng.normal(0.0, 5.0, 3)
        # Lips are the skin, redder and darker; darker skins get browner lips, as in life.
        lip_f = skin_f * np.array([0.82, 0.56, 0.58]) + np.array([22.0, 4.0, 8.0])
        lip_f = lip_f + rng.normal(0.0, 6.0, 3)
        if rng.random() < 0.1:
            hair = _hsv(rng.uniform(0, 1), rng.uniform(0.4, 0.8), rng.uniform(0.3, 0.8))
        else:
            hair = _HAIR_COLOURS[int(rng.integers(len(_HAIR_COLOURS)))]
        background = _hsv(rng.uniform(0, 1), rng.uniform(0.0, 0.75), rng.uniform(0.12, 0.97))
        return cls(
            skin=_to_rgb(skin_f),
            lip=_to_rgb(lip_f),
            hair=hair,
            background=background,
            eye=_EYE_COLOURS[int(rng.integers(len(_EYE_COLOURS)))],
            face_width=float(rng.uniform(0.62, 0.76)),
            face_height=float(rng.uniform(0.86, 0.92)),
            eye_spacing=float(rng.uniform(0.41, 0.49)),
            eye_size=float(rng.uniform(0.85, 1.2)),
            mouth_width=float(rng.uniform(0.40, 0.52)),
            lip_fullness=float(rng.uniform(0.75, 1.35)),
            nose_size=float(rng.uniform(0.82, 1.22)),
            jaw_shape=float(rng.uniform(0.0, 1.0)),
            brow_weight=float(rng.uniform(0.65, 1.4)),
            head_offset=(float(rng.uniform(-0.03, 0.03)), float(rng.uniform(-0.025, 0.025))),
            head_scale=float(rng.uniform(0.93, 1.05)),
            hair_style=int(rng.integers(NUM_HAIR_STYLES)),
            beard=bool(rng.random() < 0.25),
        )


def draw_face(coefficients: np.ndarray, identity: FaceIdentity, size: int) -> np.ndarray:
    """Draw one frame.

    Args:
        coefficients: (32,) ARKit weights in ``BLENDSHAPE_NAMES`` order; clipped to [0, 1].
        identity: the face to draw.
        size: output side in pixels, :data:`MIN_SIZE_PX` to :data:`MAX_SIZE_PX`.

    Returns:
        (size, size, 3) uint8 RGB image.
    """
    weights = np.asarray(coefficients)
    if weights.shape != (NUM_BLENDSHAPES,):
        raise ValueError(
            f"draw_face needs one frame of {NUM_BLENDSHAPES} coefficients, shape "
            f"({NUM_BLENDSHAPES},), got shape {weights.shape}; use draw_faces for (T, 32)"
        )
    return draw_faces(weights[None], identity, size)[0]


def draw_faces(coefficients: np.ndarray, identity: FaceIdentity, size: int) -> np.ndarray:
    """Draw a sequence of frames.

    Args:
        coefficients: (T, 32) ARKit weights in ``BLENDSHAPE_NAMES`` order; clipped to [0, 1].
        identity: the face to draw.
        size: output side in pixels, :data:`MIN_SIZE_PX` to :data:`MAX_SIZE_PX`.

    Returns:
        (T, size, size, 3) uint8 RGB images.
    """
    renderer = FaceRenderer(identity, size)
    weights = _check_coefficients(coefficients)
    frames = np.empty((weights.shape[0], size, size, 3), np.uint8)
    for index, frame in enumerate(renderer.frames(weights)):
        frames[index] = frame
    return frames


class FaceRenderer:
    """Draws one identity at one size; holds the pre-drawn static layer between frames.

    Build one per (identity, size) and call :meth:`frames` for long sequences, so the static
    layer is drawn once and frames can be streamed instead of held in memory.
    """

    def __init__(self, identity: FaceIdentity, size: int) -> None:
        if not isinstance(size, int | np.integer) or not MIN_SIZE_PX <= size <= MAX_SIZE_PX:
            raise ValueError(
                f"face size must be an integer from {MIN_SIZE_PX} to {MAX_SIZE_PX} px, got {size}"
            )
        self.identity = identity
        self.size = int(size)
        factor = max(1, math.ceil(MIN_DRAW_SIZE_PX / self.size))
        self.canvas_px = self.size * factor
        """Side of the drawing canvas, in pixels; a multiple of ``size``."""
        self._layout = _Layout.of(identity)
        self._palette = _Palette.of(identity)
        self._static = self._draw_static()

    def frames(self, coefficients: np.ndarray) -> Iterator[np.ndarray]:
        """Yield one (size, size, 3) uint8 RGB frame per row of ``coefficients`` (T, 32).

        The geometry of all T frames is computed up front; the frames are drawn lazily.
        """
        weights = _check_coefficients(coefficients)
        geometry = _Geometry.of(weights, self._layout, self._palette, self.canvas_px)
        for index in range(weights.shape[0]):
            canvas = self._draw_moving(geometry, index)
            if self.canvas_px != self.size:
                canvas = cv2.resize(canvas, (self.size, self.size), interpolation=cv2.INTER_AREA)
            yield canvas

    def _px(self, width_units: float) -> int:
        """A line width in frame units as whole canvas pixels (OpenCV needs ints, at least 1)."""
        return max(1, round(width_units * self.canvas_px))

    def _pts(self, xy: np.ndarray) -> np.ndarray:
        """Frame units (..., 2) to OpenCV fixed-point pixel coordinates."""
        return _fixed(xy, self.canvas_px)

    def _draw_static(self) -> np.ndarray:
        """Background, hair, ears, neck, forehead, eyes and brows: the parts nothing moves."""
        lay, pal, size = self._layout, self._palette, self.canvas_px
        # A vertical gradient: a flat backdrop reads as a cut-out.
        rows = np.linspace(1.06, 0.84, size)[:, None, None]
        canvas = np.clip(np.array(pal.background)[None, None] * rows, 0, 255)
        img = np.ascontiguousarray(np.broadcast_to(canvas, (size, size, 3)).astype(np.uint8))

        style = self.identity.hair_style
        if style == 3:
            self._fill(img, lay.long_hair_back(), pal.hair)
        elif style == 4:
            self._fill(img, lay.curls_back(), pal.hair)
        self._fill(img, lay.neck(), pal.neck)
        for side in (-1.0, 1.0):
            self._fill(img, lay.ear(side), pal.ear)
            self._line(img, lay.ear_inner(side), pal.crease, _CREASE_WIDTH)
        self._fill(img, lay.hair_cap(), pal.hair_cap)
        self._fill(img, lay.upper_face(), pal.skin)
        self._fill(img, lay.hairline(style), pal.hair_cap)
        for side in (-1.0, 1.0):
            self._draw_eye(img, side)
            self._fill(img, lay.brow(side), pal.brow)
        return img

    def _draw_eye(self, img: np.ndarray, side: float) -> None:
        lay, pal = self._layout, self._palette
        almond = lay.eye_almond(side)
        # The iris is drawn on a copy and pasted through the almond-shaped mask, so the lids
        # cut it the way real lids do.
        layer = img.copy()
        self._fill(layer, almond, _SCLERA)
        ex, ey = lay.eye_centre(side)
        iris_r = lay.eye_h * 0.95
        iris_c = (ex, ey + lay.eye_h * 0.08)
        self._circle(layer, iris_c, iris_r, pal.iris_rim)
        self._circle(layer, iris_c, iris_r * 0.82, pal.iris)
        self._circle(layer, iris_c, iris_r * 0.42, (14, 10, 10))
        glint = (iris_c[0] + iris_r * 0.3, iris_c[1] - iris_r * 0.3)
        self._circle(layer, glint, iris_r * 0.16, (250, 250, 250))
        mask = np.zeros(img.shape[:2], np.uint8)
        cv2.fillPoly(mask, [self._pts(almond)], (255,), cv2.LINE_AA, _SHIFT_BITS)
        alpha = mask.astype(np.float32)[..., None] / 255.0
        img[:] = (layer * alpha + img * (1.0 - alpha) + 0.5).astype(np.uint8)
        self._line(img, lay.eye_upper_lid(side), pal.lash, 0.011)
        self._line(img, lay.eye_crease(side), pal.crease, _CREASE_WIDTH)
        self._line(img, lay.eye_lower_lid(side), pal.crease, 0.005)

    def _draw_moving(self, g: _Geometry, i: int) -> np.ndarray:
        """Everything a coefficient moves, over a copy of the static layer."""
        pal = self._palette
        img = self._static.copy()
        shift = _SHIFT_BITS
        aa = cv2.LINE_AA
        crease = self._px(_CREASE_WIDTH)
        cv2.fillPoly(img, [g.face[i]], pal.skin, aa, shift)
        cv2.polylines(
            img, [g.chin_crease[i]], False, _tuple(g.chin_crease_rgb[i]), crease, aa, shift
        )
        for fold, colour in zip(g.folds[i], g.fold_rgb[i], strict=True):
            cv2.polylines(img, [fold], False, _tuple(colour), crease, aa, shift)
        if self.identity.beard:
            cv2.fillPoly(img, [g.beard[i], g.moustache[i]], pal.beard, aa, shift)
        # Nose: wings and tip outline, nostrils, and sneer wrinkles on the bridge.
        cv2.polylines(img, [g.nose_bridge[i]], False, pal.nose_shade, crease, aa, shift)
        cv2.polylines(img, list(g.nose_wings[i]), False, pal.nose_line, crease, aa, shift)
        cv2.fillPoly(img, list(g.nostrils[i]), pal.nostril, aa, shift)
        for wrinkles, colour in zip(g.sneer_lines[i], g.sneer_rgb[i], strict=True):
            if colour[3] > 0:
                cv2.polylines(img, list(wrinkles), False, _tuple(colour), crease, aa, shift)
        # Cheek squint raises the lower lids over the eyes and creases the cheek.
        for lid, cheek, colour in zip(
            g.squint_lids[i], g.cheek_lines[i], g.squint_rgb[i], strict=True
        ):
            if colour[3] > 0:
                cv2.fillPoly(img, [lid], pal.skin, aa, shift)
                cv2.polylines(img, list(cheek), False, _tuple(colour), crease, aa, shift)
        for mark, colour in zip(g.corner_marks[i], g.corner_rgb[i], strict=True):
            if colour[3] > 0:
                cv2.polylines(img, [mark], False, _tuple(colour), crease, aa, shift)
        # Mouth, back to front: inside, tongue, teeth, then the lips over their edges.
        cv2.fillPoly(img, [g.inside[i]], _MOUTH_INSIDE, aa, shift)
        for band, colour in (
            (g.tongue[i], pal.tongue),
            (g.teeth_lower[i], _tuple(g.teeth_lower_rgb[i])),
            (g.teeth_upper[i], _tuple(g.teeth_upper_rgb[i])),
        ):
            if band is not None:
                cv2.fillPoly(img, [band], colour, aa, shift)
        cv2.fillPoly(img, [g.upper_lip[i]], pal.upper_lip, aa, shift)
        cv2.fillPoly(img, [g.lower_lip[i]], pal.lower_lip, aa, shift)
        cv2.polylines(
            img, [g.lip_line[i]], False, pal.lip_line, self._px(_LIP_LINE_WIDTH), aa, shift
        )
        return img

    def _fill(self, img: np.ndarray, xy: np.ndarray, colour: RGB) -> None:
        cv2.fillPoly(img, [self._pts(xy)], colour, cv2.LINE_AA, _SHIFT_BITS)

    def _line(self, img: np.ndarray, xy: np.ndarray, colour: RGB, width: float) -> None:
        cv2.polylines(
            img, [self._pts(xy)], False, colour, self._px(width), cv2.LINE_AA, _SHIFT_BITS
        )

    def _circle(
        self, img: np.ndarray, centre: tuple[float, float], radius: float, colour: RGB
    ) -> None:
        c = self._pts(np.array(centre))
        r = round(radius * self.canvas_px * _SHIFT_SCALE)
        cv2.circle(img, (int(c[0]), int(c[1])), r, colour, -1, cv2.LINE_AA, _SHIFT_BITS)


def _check_coefficients(coefficients: np.ndarray) -> np.ndarray:
    weights = np.asarray(coefficients)
    if weights.ndim != 2 or weights.shape[1] != NUM_BLENDSHAPES:
        raise ValueError(
            f"coefficients must have shape (T, {NUM_BLENDSHAPES}) in BLENDSHAPE_NAMES order, "
            f"got {weights.shape}"
        )
    if not np.issubdtype(weights.dtype, np.number) or not np.isfinite(weights).all():
        raise ValueError("coefficients must be finite numbers; found NaN, infinity or non-numbers")
    # ARKit weights live in [0, 1]; a network's overshoot would only distort the drawing.
    return np.clip(weights.astype(np.float64), 0.0, 1.0)


def _hsv(hue: float, saturation: float, value: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return _to_rgb(np.array([r, g, b]) * 255.0)


def _to_rgb(values: np.ndarray) -> RGB:
    r, g, b = (int(v) for v in np.clip(np.round(values), 0, 255))
    return (r, g, b)


def _mix(a: RGB, b: RGB, amount: float) -> RGB:
    """``a`` moved ``amount`` (0-1) of the way to ``b``."""
    return _to_rgb(np.array(a) + amount * (np.array(b, dtype=np.float64) - np.array(a)))


def _shade(colour: RGB, factor: float) -> RGB:
    return _to_rgb(np.array(colour) * factor)


def _tuple(rgba: np.ndarray) -> tuple[float, float, float]:
    return (float(rgba[0]), float(rgba[1]), float(rgba[2]))


@dataclass(frozen=True)
class _Palette:
    skin: RGB
    ear: RGB
    neck: RGB
    crease: RGB
    nose_shade: RGB
    nose_line: RGB
    nostril: RGB
    hair: RGB
    hair_cap: RGB
    brow: RGB
    beard: RGB
    lash: RGB
    iris: RGB
    iris_rim: RGB
    upper_lip: RGB
    lower_lip: RGB
    lip_line: RGB
    tongue: RGB
    background: RGB

    @classmethod
    def of(cls, identity: FaceIdentity) -> _Palette:
        skin, hair = identity.skin, identity.hair
        # A shaved head shows as a stubble tint of the skin, not as a hair-coloured cap.
        cap = _mix(skin, hair, 0.4) if identity.hair_style == 0 else hair
        # Light hair makes invisible brows and lashes: darken them towards a brown.
        brow = _mix(hair, (40, 28, 22), 0.45 if sum(hair) > 360 else 0.15)
        return cls(
            skin=skin,
            ear=_shade(skin, 0.93),
            neck=_shade(skin, 0.8),
            crease=_shade(skin, 0.8),
            nose_shade=_shade(skin, 0.9),
            nose_line=_shade(skin, 0.72),
            nostril=_shade(skin, 0.42),
            hair=hair,
            hair_cap=cap,
            brow=brow,
            beard=_mix(hair, skin, 0.3),
            lash=_mix(brow, (10, 8, 8), 0.6),
            iris=identity.eye,
            iris_rim=_shade(identity.eye, 0.6),
            upper_lip=_shade(identity.lip, 0.9),
            lower_lip=identity.lip,
            lip_line=_mix(_MOUTH_INSIDE, identity.lip, 0.25),
            tongue=_mix(_mix(identity.lip, (222, 120, 128), 0.6), _MOUTH_INSIDE, 0.3),
            background=identity.background,
        )


@dataclass(frozen=True)
class _Layout:
    """Where the static features sit, in frame units, for one identity (head offset and scale
    already applied)."""

    cx: float
    scale: float
    half_w: float
    top_y: float
    split_y: float
    chin_y: float
    brow_y: float
    eye_y: float
    nose_tip_y: float
    nostril_y: float
    mouth_y: float
    eye_dx: float
    eye_w: float
    eye_h: float
    mouth_hw: float
    lip_upper: float
    lip_lower: float
    nose: float
    jaw_power: float
    brow_weight: float

    @classmethod
    def of(cls, identity: FaceIdentity) -> _Layout:
        s = identity.head_scale
        dx, dy = identity.head_offset

        def row(v: float) -> float:
            return 0.5 + dy + (v - 0.5) * s

        half_w = identity.face_width / 2 * s
        chin_v = identity.face_height
        nostril_v = 0.54
        # The mouth sits about 40% of the way from the nose to the chin, as in most faces.
        mouth_v = nostril_v + 0.4 * (chin_v - nostril_v)
        return cls(
            cx=0.5 + dx,
            scale=s,
            half_w=half_w,
            top_y=row(0.0),
            split_y=row(0.47),
            chin_y=row(chin_v),
            brow_y=row(0.285),
            eye_y=row(0.37),
            nose_tip_y=row(0.515),
            nostril_y=row(nostril_v),
            mouth_y=row(mouth_v),
            eye_dx=identity.eye_spacing * half_w,
            eye_w=0.064 * identity.eye_size * s,
            eye_h=0.029 * identity.eye_size * s,
            mouth_hw=identity.mouth_width * half_w,
            lip_upper=0.027 * identity.lip_fullness * s,
            lip_lower=0.035 * identity.lip_fullness * s,
            nose=identity.nose_size * s,
            # Superellipse exponent of the jaw: 2 is round, larger is squarer.
            jaw_power=1.8 + 1.1 * identity.jaw_shape,
            brow_weight=identity.brow_weight,
        )

    def eye_centre(self, side: float) -> tuple[float, float]:
        return (self.cx + side * self.eye_dx, self.eye_y)

    def eye_x(self, side: float, u: np.ndarray) -> np.ndarray:
        # u runs from the inner corner (-1) to the outer corner (+1).
        return self.cx + side * (self.eye_dx + u * self.eye_w)

    def eye_upper_y(self, u: np.ndarray) -> np.ndarray:
        # Peak slightly towards the inner corner; the outer corner sits a little higher.
        peak = np.power(np.clip(1 - (u + 0.15) ** 2 / 1.15**2, 0, 1), 0.8)
        return self.eye_y - self.eye_h * peak - 0.15 * self.eye_h * u

    def eye_lower_y(self, u: np.ndarray) -> np.ndarray:
        return self.eye_y + 0.8 * self.eye_h * np.power(1 - u**2, 0.9) - 0.15 * self.eye_h * u

    def eye_almond(self, side: float) -> np.ndarray:
        u = np.linspace(-1, 1, 21)
        upper = np.stack([self.eye_x(side, u), self.eye_upper_y(u)], -1)
        lower = np.stack([self.eye_x(side, u[::-1]), self.eye_lower_y(u[::-1])], -1)
        return np.concatenate([upper, lower])

    def eye_upper_lid(self, side: float) -> np.ndarray:
        u = np.linspace(-0.95, 1.05, 15)
        return np.stack([self.eye_x(side, u), self.eye_upper_y(np.clip(u, -1, 1))], -1)

    def eye_lower_lid(self, side: float) -> np.ndarray:
        u = np.linspace(-0.6, 0.85, 9)
        return np.stack([self.eye_x(side, u), self.eye_lower_y(u) + 0.2 * self.eye_h], -1)

    def eye_crease(self, side: float) -> np.ndarray:
        u = np.linspace(-0.7, 0.95, 9)
        return np.stack([self.eye_x(side, u), self.eye_upper_y(u) - 0.55 * self.eye_h], -1)

    def brow(self, side: float) -> np.ndarray:
        u = np.linspace(-1, 1, 13)  # inner end to outer end
        x = self.cx + side * (self.eye_dx - 0.05 * self.scale + u * 0.072 * self.scale)
        arch = np.sin(np.clip((u + 1) / 1.7, 0, 1) * np.pi / 2) * 0.014 * self.scale
        centre = self.brow_y + 0.004 * self.scale - arch + np.where(u > 0.7, (u - 0.7) * 0.02, 0)
        half = (0.0085 - 0.0045 * (u + 1) / 2) * self.brow_weight * self.scale
        top = np.stack([x, centre - half], -1)
        bottom = np.stack([x[::-1], (centre + half)[::-1]], -1)
        return np.concatenate([top, bottom])

    def upper_face(self) -> np.ndarray:
        """Top half of an ellipse from the crown down to the cheekbone line."""
        angle = np.linspace(np.pi, 2 * np.pi, 41)
        half_h = self.split_y - self.top_y
        x = self.cx + self.half_w * np.cos(angle)
        y = self.split_y + half_h * np.sin(angle)
        # Closed with a strip below the split so the moving lower face always overlaps it.
        tail = np.array([[self.cx + self.half_w, self.split_y + 0.02]])
        head = np.array([[self.cx - self.half_w, self.split_y + 0.02]])
        return np.concatenate([head, np.stack([x, y], -1), tail])

    def _crown_arc(self, bottom_y: float, count: int) -> np.ndarray:
        """The head's outline just outside the face, left to right over the crown, from and to
        ``bottom_y`` (so the polygon it starts has no zero-width slivers for anti-aliasing to
        draw as hairlines)."""
        half_h = self.split_y - self.top_y + 0.035 * self.scale
        dip = math.asin(max(-1.0, (bottom_y - self.split_y) / half_h))  # <= 0
        angle = np.linspace(np.pi - dip, 2 * np.pi + dip, count)
        x = self.cx + (self.half_w + 0.014 * self.scale) * np.cos(angle)
        return np.stack([x, self.split_y + half_h * np.sin(angle)], -1)

    def hair_cap(self) -> np.ndarray:
        # Down to the temples: below them the sides of the head are ears and cheeks.
        return self._crown_arc(self.brow_y + 0.01 * self.scale, 41)

    def hairline(self, style: int) -> np.ndarray:
        """The hair over the forehead: from temple to temple over the crown and back along the
        hairline."""
        s = self.scale
        temple_y = self.brow_y - 0.02 * s
        outer = self._crown_arc(temple_y, 31)
        u = np.linspace(1, -1, 31)  # right temple to left temple
        x = self.cx + u * (outer[-1, 0] - self.cx)
        hair_line_y = self.top_y + 0.13 * s
        if style == 2:
            # A fringe swept from the left temple, low over one brow, up to the right.
            line = hair_line_y + 0.07 * s * np.clip((1 - u) / 2, 0, 1) ** 0.7 - 0.01 * s
        elif style == 4:
            line = hair_line_y - 0.005 * s + 0.012 * s * np.cos(u * 9.0)
        else:
            line = hair_line_y - 0.012 * s * np.exp(-((u / 0.15) ** 2)) * (style != 0)
        y = line + (temple_y - line) * np.abs(u) ** 6
        return np.concatenate([outer, np.stack([x, y], -1)])

    def long_hair_back(self) -> np.ndarray:
        s = self.scale
        w = self.half_w + 0.07 * s
        angle = np.linspace(np.pi, 2 * np.pi, 31)
        top = self.split_y - 0.02 * s
        arc = np.stack(
            [self.cx + w * np.cos(angle), top + (top - self.top_y + 0.05 * s) * np.sin(angle)], -1
        )
        bottom = np.array([[self.cx + w + 0.03 * s, 1.05], [self.cx - w - 0.03 * s, 1.05]])
        return np.concatenate([arc, bottom])

    def curls_back(self) -> np.ndarray:
        s = self.scale
        angle = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        radius = (self.half_w + 0.1 * s) * (1 + 0.035 * np.cos(angle * 18))
        y0 = self.top_y + 0.22 * s
        return np.stack([self.cx + radius * np.cos(angle), y0 + radius * 0.95 * np.sin(angle)], -1)

    def neck(self) -> np.ndarray:
        w = self.half_w * 0.6
        y0 = self.split_y + 0.1 * self.scale
        return np.array(
            [
                [self.cx - w, y0],
                [self.cx + w, y0],
                [self.cx + w * 1.05, 1.02],
                [self.cx - w * 1.05, 1.02],
            ]
        )

    def ear(self, side: float) -> np.ndarray:
        angle = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        x = (
            self.cx
            + side * (self.half_w - 0.005 * self.scale)
            + side * 0.03 * self.scale * (0.2 + np.cos(angle))
        )
        y = self.eye_y + 0.07 * self.scale + 0.068 * self.scale * np.sin(angle)
        return np.stack([x, y], -1)

    def ear_inner(self, side: float) -> np.ndarray:
        angle = np.linspace(-1.3, 1.4, 9)
        x = self.cx + side * (self.half_w + 0.006 * self.scale + 0.016 * self.scale * np.cos(angle))
        y = self.eye_y + 0.065 * self.scale + 0.045 * self.scale * np.sin(angle)
        return np.stack([x, y], -1)


def _fixed(xy: np.ndarray, canvas_px: int) -> np.ndarray:
    return np.ascontiguousarray(np.round(xy * (canvas_px * _SHIFT_SCALE)).astype(np.int32))


def _xy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.stack(np.broadcast_arrays(x, y), -1)


def _band(
    top_x: np.ndarray, top_y: np.ndarray, bottom_x: np.ndarray, bottom_y: np.ndarray
) -> np.ndarray:
    """A closed polygon (T, 2N, 2) along the top edge left to right and back along the bottom."""
    return np.concatenate([_xy(top_x, top_y), _xy(bottom_x, bottom_y)[:, ::-1]], axis=1)


def _visible_band(
    x: np.ndarray, top: np.ndarray, bottom: np.ndarray, canvas_px: int
) -> list[np.ndarray | None]:
    """Per frame, the polygon between ``top`` and ``bottom`` (T, N) trimmed to the stretch where
    it is taller than a tenth of a canvas pixel; None where it is nowhere that tall. Trimming
    keeps zero-height stretches from being drawn as anti-aliased hairlines along the lip line."""
    bands: list[np.ndarray | None] = []
    visible = (bottom - top) * canvas_px > 0.1
    for i in range(x.shape[0]):
        where = np.flatnonzero(visible[i])
        if where.size == 0:
            bands.append(None)
            continue
        lo, hi = max(where[0] - 1, 0), min(where[-1] + 2, x.shape[1])
        edge = np.stack([x[i, lo:hi], top[i, lo:hi]], -1)
        back = np.stack([x[i, lo:hi], bottom[i, lo:hi]], -1)[::-1]
        bands.append(_fixed(np.concatenate([edge, back]), canvas_px))
    return bands


@dataclass(frozen=True)
class _Geometry:
    """Fixed-point polygons and colours of the moving parts for T frames.

    Polygon arrays are int32 (T, N, 2) in OpenCV fixed point; colour arrays are (T, 4) with a
    fourth column that is 0 where the feature is not drawn at all in that frame.
    """

    face: np.ndarray
    beard: np.ndarray
    moustache: np.ndarray
    chin_crease: np.ndarray
    chin_crease_rgb: np.ndarray
    folds: np.ndarray  # (T, 2, N, 2)
    fold_rgb: np.ndarray
    nose_bridge: np.ndarray
    nose_wings: np.ndarray  # (T, 2, N, 2)
    nostrils: np.ndarray  # (T, 2, N, 2)
    sneer_lines: np.ndarray  # (T, 2 sides, 2 lines, N, 2)
    sneer_rgb: np.ndarray  # (T, 2, 4)
    squint_lids: np.ndarray  # (T, 2, N, 2)
    cheek_lines: np.ndarray  # (T, 2, N, 2)
    squint_rgb: np.ndarray  # (T, 2, 4)
    corner_marks: np.ndarray  # (T, 4, N, 2): dimples then frown lines, image-left side first
    corner_rgb: np.ndarray  # (T, 4, 4)
    inside: np.ndarray
    tongue: list[np.ndarray | None]
    teeth_upper: list[np.ndarray | None]
    teeth_lower: list[np.ndarray | None]
    teeth_upper_rgb: np.ndarray  # (T, 3)
    teeth_lower_rgb: np.ndarray  # (T, 3)
    upper_lip: np.ndarray
    lower_lip: np.ndarray
    lip_line: np.ndarray

    @classmethod
    def of(cls, w: np.ndarray, lay: _Layout, pal: _Palette, canvas_px: int) -> _Geometry:
        """Geometry for coefficients ``w`` (T, 32), already clipped to [0, 1]."""
        s = lay.scale

        def col(name: str) -> np.ndarray:
            return w[:, _IDX[name]]

        def pair(stem: str) -> np.ndarray:
            # (T, 2): image-left first, which is the subject's right.
            return np.stack([col(stem + "Right"), col(stem + "Left")], -1)

        def fixed(xy: np.ndarray) -> np.ndarray:
            return _fixed(xy, canvas_px)

        jaw_open, jaw_forward = col("jawOpen"), col("jawForward")
        close, funnel, pucker = col("mouthClose"), col("mouthFunnel"), col("mouthPucker")
        roll_lower, roll_upper = col("mouthRollLower"), col("mouthRollUpper")
        shrug_lower, shrug_upper = col("mouthShrugLower"), col("mouthShrugUpper")
        smile, frown, dimple = pair("mouthSmile"), pair("mouthFrown"), pair("mouthDimple")
        stretch, press = pair("mouthStretch"), pair("mouthPress")
        lower_down, upper_up = pair("mouthLowerDown"), pair("mouthUpperUp")
        squint, sneer = pair("cheekSquint"), pair("noseSneer")
        rounding = np.clip(funnel + pucker, 0.0, 1.0)[:, None]  # (T, 1)

        jaw_drop = _MAX_JAW_DROP * s * jaw_open  # (T,)
        jaw_shift = 0.032 * s * (col("jawLeft") - col("jawRight"))  # (T,), +x is subject left

        # Lower face: a superellipse from the cheekbone line down to the chin, stretched by the
        # jaw, pushed sideways by jawLeft/Right (more towards the chin), widened by cheekPuff.
        v = np.linspace(0.0, 1.0, _JAW_POINTS)  # (K,)
        profile = np.power(np.clip(1 - v**lay.jaw_power, 0, 1), 1 / lay.jaw_power)
        cheek = np.sin(np.pi * np.clip(v * 1.25, 0, 1)) ** 1.5  # puff sits at mouth level
        chin_y = lay.chin_y + jaw_drop + 0.012 * s * jaw_forward  # (T,)
        half = (
            lay.half_w
            * profile[None]
            * (1 + (0.085 * col("cheekPuff") - 0.03 * jaw_open)[:, None] * cheek[None])
        )
        # jawForward also broadens the chin a little: the only cue a frontal view gives.
        half = half + (0.02 * s * jaw_forward)[:, None] * (v**3 * profile)[None]
        face_y = lay.split_y + v[None] * (chin_y - lay.split_y)[:, None]  # (T, K)
        face_x = lay.cx + jaw_shift[:, None] * v[None] ** 1.5
        right = _xy(face_x + half, face_y)
        left = _xy(face_x - half, face_y)
        face = np.concatenate([right, left[:, ::-1]], axis=1)

        # Mouth. t runs across the mouth from the image-left corner (-1) to the right (+1).
        t = np.linspace(-1.0, 1.0, _MOUTH_POINTS)
        side_weight = np.stack([(1 - t) / 2, (1 + t) / 2])  # (2, N)

        def spread(per_side: np.ndarray) -> np.ndarray:
            return per_side @ side_weight  # (T, 2) -> (T, N)

        narrowing = (0.3 * funnel + 0.42 * pucker + 0.06 * jaw_open)[:, None]
        widening = 0.2 * stretch + 0.12 * smile + 0.06 * dimple + 0.04 * press
        mouth_half = lay.mouth_hw * np.clip(1 + widening - narrowing, 0.4, None)  # (T, 2)
        mouth_x = lay.cx + 0.035 * s * (col("mouthLeft") - col("mouthRight")) + 0.35 * jaw_shift
        x = mouth_x[:, None] + t[None] * np.where(t < 0, mouth_half[:, :1], mouth_half[:, 1:])
        # The lower lip rides on the jaw, so it follows jawLeft/Right, corners excepted.
        x_low = x + 0.7 * jaw_shift[:, None] * (1 - t**2)[None]

        corner_y = (
            lay.mouth_y
            + (0.4 * jaw_drop)[:, None]
            + s * (-0.03 * smile + 0.028 * frown + 0.006 * stretch - 0.004 * dimple)
        )  # (T, 2)
        corner_line = spread(corner_y)
        # Where the inner lip edges would sit at mid-mouth. With mouthClose the lips meet over
        # the open jaw, about 40% of the way down.
        upper_c = (
            lay.mouth_y
            + (jaw_drop * (0.4 * close - 0.08 * (1 - close)))[:, None]
            - s * (0.028 * spread(upper_up) + 0.01 * spread(sneer))
            - s * (0.006 * shrug_upper + 0.012 * funnel)[:, None]
        )
        lower_c = (
            lay.mouth_y
            + (jaw_drop * (1 - 0.6 * close))[:, None]
            + s * 0.03 * spread(lower_down)
            + s * (0.02 * funnel + 0.004 * jaw_forward - 0.012 * shrug_lower)[:, None]
            - s * (0.006 * roll_lower)[:, None]
        )
        opening = np.clip(lower_c - upper_c, 0, None)
        squeezed = opening * (1 - 0.75 * spread(press)) * (1 - 0.55 * pucker)[:, None]
        meet = np.where(lower_c < upper_c, (lower_c + upper_c) / 2, upper_c)
        # Pressing closes the gap mostly from below: the lower lip is the mobile one.
        upper_c = meet + 0.3 * (opening - squeezed)
        lower_c = upper_c + squeezed
        exponent = 0.65 - 0.2 * rounding  # rounder opening when funnelled or puckered
        shape = np.power(1 - t[None] ** 2, exponent)  # (T, N), 0 at the corners
        upper_in = corner_line + (upper_c - corner_line) * shape
        lower_in = np.maximum(corner_line + (lower_c - corner_line) * shape**0.9, upper_in)

        thin = 0.4 * spread(press) + 0.15 * spread(stretch) + 0.12 * close[:, None]
        full = (0.35 * funnel + 0.5 * pucker)[:, None] - thin
        upper_thick = lay.lip_upper * np.clip(
            1 + full - 0.7 * roll_upper[:, None] + 0.25 * shrug_upper[:, None], 0.15, None
        )
        lower_thick = lay.lip_lower * np.clip(
            1
            + full
            - 0.75 * roll_lower[:, None]
            + (0.3 * shrug_lower + 0.15 * jaw_forward)[:, None],
            0.15,
            None,
        )
        # Rounded lips keep some thickness at the corners, closing the "O" of a pucker.
        corner_share = 0.12 + 0.18 * rounding
        bow = 1 - 0.3 * (1 - rounding) * np.exp(-((t / 0.14) ** 2))[None]  # cupid's bow dip
        upper_out = (
            upper_in
            - upper_thick
            * (corner_share + (1 - corner_share) * np.power(1 - t**2, 0.45)[None])
            * bow
        )
        lower_out = lower_in + lower_thick * (
            corner_share + (1 - corner_share) * np.power(1 - t**2, 0.6)[None]
        )

        # Teeth are fixed to the skull (upper) and to the jaw (lower); only the part between the
        # lips shows.
        teeth_half = 0.78 * lay.mouth_hw
        across = np.clip(((x - lay.cx) / teeth_half) ** 2, 0, None)
        # The upper incisors end just at the resting lip line, so a slightly dropped jaw shows
        # a dark gap below them rather than a mouthful of teeth.
        bite_y = lay.mouth_y + s * (-0.001 + 0.003 * np.clip(1 - across, 0, 1))
        upper_edge = np.where(across <= 1, np.clip(bite_y, upper_in, lower_in), upper_in)
        across_low = np.clip(((x_low - lay.cx - jaw_shift[:, None]) / teeth_half) ** 2, 0, None)
        lower_tip = (
            lay.mouth_y
            + s * (0.005 - 0.002 * np.clip(1 - across_low, 0, 1))
            + jaw_drop[:, None]
            + (0.004 * s * jaw_forward)[:, None]
        )
        lower_edge = np.where(across_low <= 1, np.clip(lower_tip, upper_in, lower_in), lower_in)
        # The tongue lies low and shows only once the mouth is well open, so the dark of the
        # opening grows steadily with the jaw whatever the skin tone.
        gap = (lower_c - upper_c)[:, _MOUTH_POINTS // 2 : _MOUTH_POINTS // 2 + 1]  # (T, 1)
        tongue_height = 0.35 * np.clip(gap - 0.02 * s, 0, None)
        tongue_shape = np.sqrt(np.clip(1 - (t / 0.7) ** 2, 0, 1))[None]
        tongue_top = np.maximum(lower_in - tongue_height * tongue_shape, upper_in)

        mid = _MOUTH_POINTS // 2
        crease_x = x_low[:, mid : mid + 1] + np.linspace(-1, 1, 7)[None] * 0.42 * lay.mouth_hw
        crease_y = (
            lower_out[:, mid : mid + 1]
            + s * (0.024 - 0.006 * shrug_lower)[:, None]
            + 0.01 * s * np.linspace(-1, 1, 7)[None] ** 2
        )

        # Beard: the lower face below the cheeks up to the moustache, which it joins beside the
        # mouth corners, less a thin margin under the lower lip.
        stache_x = mouth_x[:, None] + 1.12 * (x - mouth_x[:, None])
        stache_top = np.maximum(
            upper_out - s * (0.012 + 0.016 * (1 - t**2))[None], lay.nostril_y + 0.01 * s
        )
        moustache = _band(stache_x, stache_top, x, upper_out - 0.002 * s)
        first = _JAW_POINTS // 10
        beard = np.concatenate(
            [
                right[:, first:],
                left[:, first:][:, ::-1],
                _xy(stache_x[:, :1], stache_top[:, :1]),
                _xy(x[:, :1] - 0.008 * s, corner_y[:, :1]),
                _xy(x_low, lower_out + 0.006 * s),
                _xy(x[:, -1:] + 0.008 * s, corner_y[:, 1:]),
                _xy(stache_x[:, -1:], stache_top[:, -1:]),
            ],
            axis=1,
        )

        # Nasolabial folds: from beside the nose wing to just outside each mouth corner, darker
        # with a smile (and a sneer) on that side.
        sides = np.array([-1.0, 1.0])
        corners_x = np.stack([x[:, 0], x[:, -1]], -1)  # (T, 2)
        start_x = lay.cx + sides * 0.058 * lay.nose  # (2,)
        start_y = lay.nostril_y - 0.018 * lay.nose
        end_x = corners_x + sides * 0.04 * s
        end_y = corner_y + 0.04 * s
        a = np.linspace(0, 1, 7)[None, None, :]  # quadratic Bezier parameter
        ctrl_x = end_x + sides * 0.015 * s
        ctrl_y = start_y + 0.55 * (end_y - start_y)
        fold_x = (1 - a) ** 2 * start_x[None, :, None] + 2 * a * (1 - a) * ctrl_x[..., None]
        fold_x = fold_x + a**2 * end_x[..., None]
        fold_y = (
            (1 - a) ** 2 * start_y + 2 * a * (1 - a) * ctrl_y[..., None] + a**2 * end_y[..., None]
        )
        fold_strength = np.clip(0.12 + 0.88 * np.maximum(smile, 0.8 * sneer), 0, 1)

        # Nose base: each wing lifts and flares with noseSneer on its side.
        ns = lay.nose
        lift = 0.013 * s * sneer  # (T, 2)
        flare = 0.008 * s * sneer
        wing_u = np.array([0.028, 0.046, 0.05, 0.036, 0.016, 0.0]) * ns  # out from the midline
        wing_v = np.array([-0.05, -0.028, -0.01, 0.004, 0.008, 0.0]) * ns  # from nostril row
        wing_lift = np.array([0.3, 0.7, 1.0, 1.0, 0.8, 0.5])
        wing_flare = np.array([0.2, 0.9, 1.0, 0.6, 0.2, 0.0])
        wing_x = lay.cx + sides[None, :, None] * (
            wing_u[None, None] + flare[..., None] * wing_flare[None, None]
        )
        wing_y = lay.nostril_y + wing_v[None, None] - lift[..., None] * wing_lift[None, None]
        nostril_angle = np.linspace(0, 2 * np.pi, 12, endpoint=False)
        nostril_x = lay.cx + sides[None, :, None] * (
            0.018 * ns + 0.5 * flare[..., None] + (0.011 * ns) * np.cos(nostril_angle)[None, None]
        )
        nostril_y = (
            lay.nostril_y
            - 0.002 * ns
            - 0.8 * lift[..., None]
            + 0.0048 * ns * np.sin(nostril_angle)[None, None]
        )
        bridge = np.array(
            [
                [lay.cx - 0.024 * ns, lay.eye_y + 0.01 * s],
                [lay.cx - 0.027 * ns, lay.nose_tip_y - 0.045 * ns],
                [lay.cx - 0.036 * ns, lay.nostril_y - 0.045 * ns],
            ]
        )
        wrinkle_rows = lay.eye_y + s * np.array([0.03, 0.045])  # (2,)
        wrinkle_x = lay.cx + sides[:, None, None] * np.array([0.008, 0.026])[None, None] * s
        wrinkle_y = wrinkle_rows[None, :, None] - np.array([0.0, 0.006])[None, None] * s
        wrinkles = np.broadcast_to(
            np.stack(np.broadcast_arrays(wrinkle_x, wrinkle_y), -1)[None], (len(w), 2, 2, 2, 2)
        )

        # Cheek squint: the lower lid rises over the eye and the cheek below creases.
        u = np.linspace(-1, 1, 9)
        lid_x = np.stack([lay.eye_x(side, u) for side in sides])  # (2, 9)
        lower_lid = lay.eye_lower_y(u)[None]  # (1, 9)
        rise = squint[..., None] * 0.6 * lay.eye_h * np.power(1 - u**2, 0.7)[None, None]
        lid_top = lower_lid[None] - rise  # (T, 2, 9)
        lid_bottom = np.broadcast_to(lower_lid[None] + 0.3 * lay.eye_h, lid_top.shape)
        lids = np.concatenate(
            [
                _xy(np.broadcast_to(lid_x, lid_top.shape), lid_top),
                _xy(np.broadcast_to(lid_x, lid_top.shape), lid_bottom)[:, :, ::-1],
            ],
            axis=2,
        )
        cheek_u = np.linspace(-0.5, 1.2, 9)
        cheek_x = np.stack([lay.eye_x(side, cheek_u) for side in sides])
        cheek_y = (
            lay.eye_y
            + lay.eye_h * (2.6 - 0.7 * squint[..., None])
            + 0.3 * lay.eye_h * cheek_u[None, None] ** 2
        )
        lid_edges = _xy(np.broadcast_to(lid_x, lid_top.shape), lid_top)
        cheek_lines = np.stack(
            [lid_edges, _xy(np.broadcast_to(cheek_x, cheek_y.shape), cheek_y)], axis=2
        )

        # Dimples (short arcs beside the corners) and frown lines (down from the corners).
        dimple_x = corners_x[..., None] + sides[None, :, None] * s * np.array([0.012, 0.02, 0.014])
        dimple_y = corner_y[..., None] + s * np.array([-0.012, 0.002, 0.015])
        frown_x = corners_x[..., None] + sides[None, :, None] * s * np.array([0.004, 0.01, 0.018])
        frown_y = corner_y[..., None] + s * np.array([0.008, 0.03, 0.052])
        corner_marks = np.concatenate([_xy(dimple_x, dimple_y), _xy(frown_x, frown_y)], axis=1)

        # Teeth behind a narrow gap are in the lips' shadow; they brighten as the mouth opens,
        # which keeps a barely open mouth reading darker, not lighter, than a closed one.
        widest = (lower_in - upper_in).max(axis=1, keepdims=True)  # (T, 1)
        teeth_light = np.clip((widest - 0.012 * s) / (0.04 * s), 0.0, 1.0)
        inside = np.array(_MOUTH_INSIDE, dtype=np.float64)
        skin = np.array(pal.skin, dtype=np.float64)
        crease = np.array(pal.crease, dtype=np.float64)
        darker = np.array(_shade(pal.skin, 0.72), dtype=np.float64)

        def tint(amount: np.ndarray, to: np.ndarray = crease) -> np.ndarray:
            """(..., 4): skin moved towards ``to`` by ``amount``; 4th column: drawn at all."""
            rgb = skin + np.clip(amount, 0, 1)[..., None] * (to - skin)
            return np.concatenate([rgb, (amount > 0.02)[..., None]], -1)

        return cls(
            face=fixed(face),
            beard=fixed(beard),
            moustache=fixed(moustache),
            chin_crease=fixed(_xy(crease_x, crease_y)),
            chin_crease_rgb=tint(0.15 + 0.85 * shrug_lower),
            folds=fixed(_xy(fold_x, fold_y)),
            fold_rgb=tint(fold_strength, darker),
            nose_bridge=fixed(np.broadcast_to(bridge, (len(w), *bridge.shape))),
            nose_wings=fixed(_xy(wing_x, wing_y)),
            nostrils=fixed(_xy(nostril_x, nostril_y)),
            sneer_lines=fixed(wrinkles),
            sneer_rgb=tint(sneer, darker),
            squint_lids=fixed(lids),
            cheek_lines=fixed(cheek_lines),
            squint_rgb=tint(squint),
            corner_marks=fixed(corner_marks),
            corner_rgb=tint(np.concatenate([dimple, frown], axis=1), darker),
            inside=fixed(_band(x, upper_in, x_low, lower_in)),
            tongue=_visible_band(x_low, tongue_top, lower_in, canvas_px),
            teeth_upper=_visible_band(x, upper_in, upper_edge, canvas_px),
            teeth_lower=_visible_band(x_low, lower_edge, lower_in, canvas_px),
            teeth_upper_rgb=teeth_light * _TEETH_UPPER + (1 - teeth_light) * inside,
            teeth_lower_rgb=teeth_light * _TEETH_LOWER + (1 - teeth_light) * inside,
            upper_lip=fixed(_band(x, upper_out, x, upper_in)),
            lower_lip=fixed(_band(x_low, lower_in, x_low, lower_out)),
            lip_line=fixed(_xy(x, upper_in)),
        )

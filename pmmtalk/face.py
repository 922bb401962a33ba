"""Reference face input: decode a photo, find the face, crop it to the generator's input.

Decoding and face detection are OpenCV's (``cv2.imdecode`` and the bundled frontal-face Haar
cascade, which needs no download). The crop follows Wav2Lip's habit of reaching below the chin
so the mouth and jaw are whole.

``assets/default_face.png``: scikit-image's ``data.astronaut()`` (NASA portrait of Eileen
Collins, public domain), rows 0-256 and columns 97-353, lightly denoised (OpenCV non-local means,
h=2) to keep the PNG under 100 KB.
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

import cv2
import cv2.data
import numpy as np

from pmmtalk.errors import FaceError

logger = logging.getLogger(__name__)

ImageSource = str | os.PathLike[str] | bytes | BinaryIO
"""A path, the file's bytes, or a binary file object positioned at the start of the file."""

HAAR_CASCADE_FILE: Final = "haarcascade_frontalface_default.xml"
MIN_FACE_PX: Final = 48
"""Smallest face width the detector looks for, in pixels of the (possibly shrunk) search image."""
DETECT_MAX_SIDE_PX: Final = 1024
"""Photos whose long side exceeds this are shrunk to it for detection (speed; boxes scale back)."""
HAAR_SCALE_FACTOR: Final = 1.1
"""Step between detection scales; smaller finds more faces, slower."""
HAAR_MIN_NEIGHBORS: Final = 5
"""Overlapping hits needed to accept a face; higher rejects more false positives."""
DEFAULT_CROP_MARGIN: Final = 0.25
"""Crop border on each side of the detected box, as a fraction of the box side."""
CHIN_SHIFT_FRACTION: Final = 0.1
"""The crop centre sits this fraction of the box height below the box centre: the Haar box ends
near the lower lip, and the generator needs the chin."""
_ALPHA_BACKGROUND_RGB: Final = 255
"""Transparent pixels are composited onto white."""
_JPEG_MAGIC: Final = b"\xff\xd8\xff"


@dataclass(frozen=True)
class FaceBox:
    """A face's bounding box in pixels of the image it was found in; (x, y) is the top-left."""

    x: int
    y: int
    w: int
    h: int

    @property
    def area_px(self) -> int:
        """Box area in square pixels."""
        return self.w * self.h


@dataclass(frozen=True, eq=False)
class _HaarDetector:
    classifier: cv2.CascadeClassifier
    # detectMultiScale keeps per-call scratch state on the classifier, so concurrent calls from
    # the server's worker threads must take turns.
    lock: threading.Lock


@functools.cache
def _haar_detector() -> _HaarDetector:
    """Load the bundled cascade once per process, on first use."""
    path = Path(cv2.data.haarcascades) / HAAR_CASCADE_FILE
    classifier = cv2.CascadeClassifier(str(path))
    if classifier.empty():
        raise RuntimeError(
            f"OpenCV's face cascade {path} is missing or unreadable; reinstall "
            "opencv-python-headless 4.x (5.x dropped the Haar cascades)"
        )
    logger.debug("loaded face cascade %s", path)
    return _HaarDetector(classifier=classifier, lock=threading.Lock())


def load_image(source: ImageSource) -> np.ndarray:
    """Decode a photo (JPEG, PNG, WebP, BMP, TIFF, ...) to RGB.

    Grayscale is expanded to three channels, 16-bit images are scaled to 8 bits, an alpha channel
    is composited onto white, and a JPEG's EXIF orientation is applied, so phone photos come out
    upright.

    Returns:
        uint8 array of shape (H, W, 3), channels RGB.

    Raises:
        FaceError: the input is empty, missing or not a decodable image.
    """
    name, data = _read_source(source)
    if not data:
        raise FaceError(f"{name} is empty (0 bytes); send a JPEG or PNG photo of a face")
    buf = np.frombuffer(data, dtype=np.uint8)
    # IMREAD_COLOR applies EXIF orientation but drops alpha; IMREAD_UNCHANGED keeps alpha but
    # ignores orientation. JPEG has no alpha, and orientation matters mostly for camera JPEGs.
    flags = cv2.IMREAD_COLOR if data.startswith(_JPEG_MAGIC) else cv2.IMREAD_UNCHANGED
    image = cv2.imdecode(buf, flags)
    if image is None:
        raise FaceError(
            f"{name} is not a decodable image; send a JPEG, PNG, WebP or BMP photo of a face"
        )
    return _to_rgb8(name, image)


def detect_faces(rgb: np.ndarray) -> list[FaceBox]:
    """Find frontal faces with OpenCV's Haar cascade.

    Args:
        rgb: uint8 image of shape (H, W, 3), channels RGB.

    Returns:
        Boxes in pixels of ``rgb``, largest first; empty when there is no face. Faces narrower
        than :func:`min_face_px` for this image are not looked for.
    """
    _check_rgb(rgb)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    scale = _detect_scale(rgb)
    if scale > 1:
        height, width = gray.shape
        small_size = (round(width / scale), round(height / scale))
        gray = cv2.resize(gray, small_size, interpolation=cv2.INTER_AREA)
    detector = _haar_detector()
    with detector.lock:
        found = detector.classifier.detectMultiScale(
            gray,
            scaleFactor=HAAR_SCALE_FACTOR,
            minNeighbors=HAAR_MIN_NEIGHBORS,
            minSize=(MIN_FACE_PX, MIN_FACE_PX),
        )
    boxes = [
        _clip_box(
            FaceBox(round(x * scale), round(y * scale), round(w * scale), round(h * scale)), rgb
        )
        for x, y, w, h in np.asarray(found, dtype=np.int64).reshape(-1, 4)
    ]
    boxes.sort(key=lambda box: box.area_px, reverse=True)
    logger.debug("found %d face(s) in a %dx%d image", len(boxes), rgb.shape[1], rgb.shape[0])
    return boxes


def min_face_px(rgb: np.ndarray) -> int:
    """Smallest face width, in pixels of ``rgb`` (shape (H, W, 3)), that detection can find."""
    return math.ceil(MIN_FACE_PX * _detect_scale(rgb))


def largest_face(rgb: np.ndarray) -> FaceBox:
    """The largest face in an RGB uint8 image of shape (H, W, 3), as a box in its pixels.

    Raises:
        FaceError: no face was found.
    """
    boxes = detect_faces(rgb)
    if not boxes:
        height, width = rgb.shape[:2]
        raise FaceError(
            f"no face found in the {width}x{height} px reference image: pass a frontal photo "
            f"with the face at least {min_face_px(rgb)} px wide, or omit the face to use the "
            "default reference face"
        )
    return boxes[0]


def crop_face(
    rgb: np.ndarray, box: FaceBox, size: int, margin: float = DEFAULT_CROP_MARGIN
) -> np.ndarray:
    """Cut a square around a face, reaching below the chin, and resize it.

    The square's side is the box's longer side times (1 + 2 * margin); its centre is the box
    centre moved down by ``CHIN_SHIFT_FRACTION`` of the box height. Parts outside the image are
    filled by repeating the edge pixels.

    Args:
        rgb: uint8 image of shape (H, W, 3).
        box: the face, in pixels of ``rgb``.
        size: output side in pixels.
        margin: border added on each side, as a fraction of the box side (>= 0).

    Returns:
        uint8 array of shape (size, size, 3), same channel order as ``rgb``.
    """
    _check_rgb(rgb)
    if size < 1:
        raise ValueError(f"size must be at least 1 px, got {size}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    height, width = rgb.shape[:2]
    overlaps = box.x < width and box.y < height and box.x + box.w > 0 and box.y + box.h > 0
    if box.w < 1 or box.h < 1 or not overlaps:
        raise ValueError(f"{box} does not overlap the {width}x{height} image")

    side = max(1, round(max(box.w, box.h) * (1 + 2 * margin)))
    centre_x = box.x + box.w / 2
    centre_y = box.y + box.h / 2 + CHIN_SHIFT_FRACTION * box.h
    x0, y0 = round(centre_x - side / 2), round(centre_y - side / 2)
    x1, y1 = x0 + side, y0 + side

    inside = rgb[max(y0, 0) : min(y1, height), max(x0, 0) : min(x1, width)]
    square = cv2.copyMakeBorder(
        inside,
        top=max(-y0, 0),
        bottom=max(y1 - height, 0),
        left=max(-x0, 0),
        right=max(x1 - width, 0),
        borderType=cv2.BORDER_REPLICATE,
    )
    # INTER_AREA averages when shrinking; it degrades to nearest-neighbour when enlarging.
    interpolation = cv2.INTER_AREA if side >= size else cv2.INTER_CUBIC
    return cv2.resize(square, (size, size), interpolation=interpolation)


def default_face_image() -> np.ndarray:
    """The packaged default reference photo, RGB uint8 of shape (256, 256, 3)."""
    asset = importlib.resources.files("pmmtalk").joinpath("assets/default_face.png")
    return load_image(asset.read_bytes())


def reference_face(image: np.ndarray | None, size: int) -> np.ndarray:
    """The generator's reference-face input from a photo, or from the default face.

    Args:
        image: RGB uint8 photo of shape (H, W, 3), or None for the packaged default face.
        size: output side in pixels.

    Returns:
        float32 array of shape (3, size, size), channels RGB, values in [0, 1].

    Raises:
        FaceError: no face was found in ``image``.
    """
    photo = default_face_image() if image is None else image
    crop = crop_face(photo, largest_face(photo), size)
    return np.ascontiguousarray(crop.transpose(2, 0, 1), dtype=np.float32) / np.float32(255)


def _read_source(source: ImageSource) -> tuple[str, bytes]:
    """Return (a name for messages, the file's bytes)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "the image data", bytes(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FaceError(f"image file not found: {path}; check the path")
        return str(path), path.read_bytes()
    return str(getattr(source, "name", "the image stream")), source.read()


def _to_rgb8(name: str, image: np.ndarray) -> np.ndarray:
    """OpenCV's decoded BGR/BGRA/gray array, 8 or 16 bit, to RGB uint8 (H, W, 3)."""
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        raise FaceError(
            f"{name} has {image.dtype} pixels, which are not supported; save it as an 8-bit "
            "JPEG or PNG"
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.shape[2] == 4:
        alpha = image[:, :, 3:].astype(np.float32) / 255
        colour = image[:, :, :3].astype(np.float32)
        composited = colour * alpha + _ALPHA_BACKGROUND_RGB * (1 - alpha)
        return cv2.cvtColor(composited.round().astype(np.uint8), cv2.COLOR_BGR2RGB)
    raise FaceError(f"{name} has {image.shape[2]} colour channels; send an RGB or grayscale photo")


def _check_rgb(rgb: np.ndarray) -> None:
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(
            f"expected an RGB uint8 image of shape (H, W, 3), got {rgb.dtype} {rgb.shape}"
        )


def _detect_scale(rgb: np.ndarray) -> float:
    """How many pixels of ``rgb`` one pixel of the detection image covers (>= 1)."""
    return max(1.0, max(rgb.shape[:2]) / DETECT_MAX_SIDE_PX)


def _clip_box(box: FaceBox, rgb: np.ndarray) -> FaceBox:
    """Keep a box (scaled back from the detection image) inside ``rgb``."""
    height, width = rgb.shape[:2]
    x, y = min(max(box.x, 0), width - 1), min(max(box.y, 0), height - 1)
    return FaceBox(x, y, min(box.w, width - x), min(box.h, height - y))

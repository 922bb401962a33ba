"""Reference faces: photo uploads checked and decoded, and the registry behind ``face_id``.

A face is encoded once (face detection, crop, the model's face encoder) and its identity pyramid
kept under an id derived from its pixels, so the same photo uploaded twice gets the same id. The
registry is bounded; the least recently used face goes first.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict

import numpy as np
from PIL import Image

from export.backends.base import Identity
from pmmtalk.animate import face_key
from pmmtalk.errors import FaceError, TooLargeError
from pmmtalk.face import load_image

FACE_ID_HEX_CHARS = 16


class FaceTooLargeError(FaceError, TooLargeError):
    """The photo is over a size limit (bytes or pixels)."""


def decode_photo(data: bytes, max_pixels: int) -> np.ndarray:
    """Photo bytes -> RGB (H, W, 3) uint8, refusing more than ``max_pixels`` before decoding.

    Raises FaceError for an undecodable photo, FaceTooLargeError for an oversize one.
    """
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
    except Image.DecompressionBombError:
        raise FaceTooLargeError(
            f"the photo claims more pixels than Pillow will open; the limit is {max_pixels}. "
            "Send a smaller photo"
        ) from None
    except Exception:
        # Not a format Pillow can size: refuse it rather than let OpenCV decode an unknown size.
        raise FaceError(
            "the photo is not a readable image; send a JPEG, PNG, WebP or BMP photo of a face"
        ) from None
    if width * height > max_pixels:
        raise FaceTooLargeError(
            f"the photo is {width}x{height} = {width * height} pixels; the limit is {max_pixels}. "
            "Send a smaller photo (the face is resized to a few dozen pixels anyway)"
        )
    return load_image(data)


def face_id_of(rgb: np.ndarray) -> str:
    """A stable id for a decoded photo: the `Animator`'s hash of its shape and pixels."""
    return face_key(rgb)[:FACE_ID_HEX_CHARS]


class UnknownFaceError(FaceError):
    """A face_id that was never registered or has been dropped from the registry."""


class FaceRegistry:
    """face_id -> identity pyramid, at most ``capacity`` entries, least recently used dropped."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._faces: OrderedDict[str, Identity] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._faces)

    def put(self, face_id: str, identity: Identity) -> None:
        with self._lock:
            self._faces[face_id] = identity
            self._faces.move_to_end(face_id)
            while len(self._faces) > self.capacity:
                self._faces.popitem(last=False)

    def get(self, face_id: str) -> Identity:
        """The identity for ``face_id``; FaceError if it is unknown or was dropped."""
        with self._lock:
            identity = self._faces.get(face_id)
            if identity is None:
                raise UnknownFaceError(
                    f"unknown face_id {face_id!r}: it was never uploaded or has been dropped "
                    f"from the cache (it keeps {self.capacity} faces); POST the photo to /faces "
                    "again"
                )
            self._faces.move_to_end(face_id)
            return identity

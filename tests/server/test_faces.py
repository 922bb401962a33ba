"""Reference faces: the bounded registry behind face_id, stable ids, and the pixel limit that
must hold before a photo is decoded."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import server.faces
from pmmtalk.errors import FaceError, TooLargeError
from server.faces import (
    FACE_ID_HEX_CHARS,
    FaceRegistry,
    FaceTooLargeError,
    UnknownFaceError,
    decode_photo,
    face_id_of,
)


def _identity(value: float) -> tuple[np.ndarray, ...]:
    return (np.full((1, 4), value, dtype=np.float32), np.full((1, 2, 2), value, np.float32))


def _png(rgb: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="PNG")
    return out.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A small, real PNG whose header claims width x height pixels (the body does not match)."""
    data = _png(np.zeros((8, 8, 3), dtype=np.uint8))
    # Signature (8 bytes), IHDR length and tag (8), then width and height, then the rest of the
    # 13-byte IHDR body and its CRC over tag + body.
    body = struct.pack(">II", width, height) + data[24:29]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + body))
    return data[:16] + body + crc + data[33:]


# --- FaceRegistry -----------------------------------------------------------------------------


def test_registry_returns_what_was_put() -> None:
    registry = FaceRegistry(capacity=4)
    identity = _identity(0.5)
    registry.put("a", identity)
    assert registry.get("a") is identity
    assert len(registry) == 1


def test_registry_drops_the_least_recently_used_face() -> None:
    registry = FaceRegistry(capacity=2)
    registry.put("a", _identity(1))
    registry.put("b", _identity(2))
    registry.get("a")  # a is now more recent than b
    registry.put("c", _identity(3))
    assert len(registry) == 2
    assert registry.get("a")[0][0, 0] == 1
    assert registry.get("c")[0][0, 0] == 3
    with pytest.raises(UnknownFaceError):
        registry.get("b")


def test_putting_an_id_again_refreshes_it_without_growing() -> None:
    registry = FaceRegistry(capacity=2)
    registry.put("a", _identity(1))
    registry.put("b", _identity(2))
    registry.put("a", _identity(9))
    assert len(registry) == 2
    registry.put("c", _identity(3))  # b is the oldest now
    assert registry.get("a")[0][0, 0] == 9
    with pytest.raises(UnknownFaceError):
        registry.get("b")


def test_an_unknown_face_id_is_a_face_error_that_says_what_to_do() -> None:
    registry = FaceRegistry(capacity=3)
    with pytest.raises(UnknownFaceError) as caught:
        registry.get("0123abcd")
    assert isinstance(caught.value, FaceError)
    message = str(caught.value)
    assert "'0123abcd'" in message
    assert "/faces" in message
    assert "3 faces" in message


@pytest.mark.parametrize("capacity", [0, -1])
def test_registry_needs_room_for_one_face(capacity: int) -> None:
    with pytest.raises(ValueError, match="capacity"):
        FaceRegistry(capacity)


# --- face_id_of -------------------------------------------------------------------------------


def test_face_id_is_stable_for_equal_pixels() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    face_id = face_id_of(rgb)
    assert len(face_id) == FACE_ID_HEX_CHARS
    int(face_id, 16)  # hex
    assert face_id_of(rgb.copy()) == face_id
    # A non-contiguous view with the same pixels is the same photo.
    wide = np.zeros((40, 60, 3), dtype=np.uint8)
    wide[:, ::2] = rgb
    assert face_id_of(wide[:, ::2]) == face_id
    # And the same photo decoded again from its PNG.
    assert face_id_of(decode_photo(_png(rgb), max_pixels=10_000)) == face_id


def test_face_id_differs_for_different_pixels_or_shape() -> None:
    rgb = np.zeros((40, 30, 3), dtype=np.uint8)
    other = rgb.copy()
    other[20, 15, 1] = 1
    assert face_id_of(other) != face_id_of(rgb)
    # Same bytes, another shape: another photo.
    assert face_id_of(rgb.reshape(30, 40, 3)) != face_id_of(rgb)


# --- decode_photo -----------------------------------------------------------------------------


def test_decode_photo_gives_rgb() -> None:
    rgb = np.zeros((12, 10, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # red, to catch a BGR mix-up
    decoded = decode_photo(_png(rgb), max_pixels=120)
    assert decoded.shape == (12, 10, 3) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, rgb)


def test_one_pixel_over_the_limit_is_too_large() -> None:
    photo = _png(np.zeros((12, 10, 3), dtype=np.uint8))
    with pytest.raises(FaceTooLargeError, match="10x12 = 120 pixels; the limit is 119") as caught:
        decode_photo(photo, max_pixels=119)
    assert isinstance(caught.value, TooLargeError)  # the server answers 413
    assert isinstance(caught.value, FaceError)


@pytest.mark.parametrize(
    ("width", "height"),
    [
        (5_000, 5_000),  # 25 M pixels: over a 1 M limit, under PIL's own bomb threshold
        (20_000, 20_000),  # 400 M pixels: over PIL's bomb threshold (2 x 89 M) too
    ],
)
def test_the_pixel_limit_holds_before_decoding(
    width: int, height: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_decode(data: bytes) -> np.ndarray:
        raise AssertionError(f"a {width}x{height} photo was decoded despite the pixel limit")

    monkeypatch.setattr(server.faces, "load_image", must_not_decode)
    with pytest.raises(FaceTooLargeError, match="the limit is 1000000"):
        decode_photo(_png_claiming(width, height), max_pixels=1_000_000)


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20])
def test_undecodable_photos_are_face_errors(data: bytes) -> None:
    with pytest.raises(FaceError) as caught:
        decode_photo(data, max_pixels=1_000_000)
    assert not isinstance(caught.value, TooLargeError)

"""pmmtalk.face: photos in, a face found and cropped to the generator's input, clear errors."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

from pmmtalk.errors import FaceError, InputError
from pmmtalk.face import (
    FaceBox,
    crop_face,
    default_face_image,
    detect_faces,
    largest_face,
    load_image,
    min_face_px,
    reference_face,
)

# The astronaut's face (hairline to chin, cheek to cheek) in the 512x512 image, read off an
# annotated render: x 175-275, y 70-175.
ASTRONAUT_FACE = FaceBox(x=175, y=70, w=100, h=105)
ASSET_PATH = Path(__file__).parents[2] / "pmmtalk" / "assets" / "default_face.png"


def iou(a: FaceBox, b: FaceBox) -> float:
    ix = max(0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    inter = ix * iy
    return inter / (a.area_px + b.area_px - inter)


def png_bytes(image: np.ndarray) -> bytes:
    """Encode an image already in OpenCV's channel order (gray, BGR or BGRA)."""
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


def test_astronaut_face_is_found_where_it_is(astronaut: np.ndarray) -> None:
    box = largest_face(astronaut)

    assert iou(box, ASTRONAUT_FACE) > 0.5
    assert detect_faces(astronaut)[0] == box


def test_large_photo_is_searched_shrunk_and_boxes_come_back_in_its_pixels(
    astronaut: np.ndarray,
) -> None:
    big = cv2.resize(astronaut, (2048, 2048), interpolation=cv2.INTER_CUBIC)
    truth = FaceBox(*(4 * v for v in (175, 70, 100, 105)))

    assert iou(largest_face(big), truth) > 0.5
    assert min_face_px(big) == 96
    assert min_face_px(astronaut) == 48


def test_crop_is_square_uint8_and_still_holds_the_face(astronaut: np.ndarray) -> None:
    crop = crop_face(astronaut, largest_face(astronaut), 192)

    assert crop.shape == (192, 192, 3)
    assert crop.dtype == np.uint8
    # The margin keeps the whole face in view, so the detector finds it again, filling the crop.
    (face,) = detect_faces(crop)
    assert face.w > 192 * 0.5


def test_crop_holds_the_whole_face_down_past_the_chin(astronaut: np.ndarray) -> None:
    box = largest_face(astronaut)
    side = round(box.w * 1.5)  # the output size of the default margin: no resampling
    crop = crop_face(astronaut, box, side)

    # Find where the crop came from; an unresampled crop matches exactly.
    scores = cv2.matchTemplate(astronaut, crop, cv2.TM_SQDIFF)
    _, _, (left, top), _ = cv2.minMaxLoc(scores)
    np.testing.assert_array_equal(astronaut[top : top + side, left : left + side], crop)
    face = ASTRONAUT_FACE
    assert top < face.y and top + side > face.y + face.h + 5
    assert left < face.x and left + side > face.x + face.w


def test_face_at_the_border_is_padded_to_full_size(astronaut: np.ndarray) -> None:
    corner = np.ascontiguousarray(astronaut[70:, 180:])  # face now touches the top-left corner
    box = largest_face(corner)

    crop = crop_face(corner, box, 128)

    assert crop.shape == (128, 128, 3)
    assert crop.dtype == np.uint8


def test_padding_repeats_the_edge_pixels() -> None:
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    image[0, 0] = (200, 100, 50)

    crop = crop_face(image, FaceBox(0, 0, 10, 10), 20, margin=0.5)

    # The 20 px square starts 4 px above and 5 px left of the image (its centre sits below the
    # box's), so its top-left 5x6 block is all copies of pixel (0, 0).
    assert crop.shape == (20, 20, 3)
    assert (crop[:5, :6] == (200, 100, 50)).all()
    assert (crop[5:] == 0).all()
    assert (crop[:, 6:] == 0).all()


def test_reference_face_default_is_generator_input() -> None:
    ref = reference_face(None, 96)

    assert ref.shape == (3, 96, 96)
    assert ref.dtype == np.float32
    assert ref.min() >= 0.0 and ref.max() <= 1.0
    assert ref.std() > 0.1  # a photo, not a blank
    np.testing.assert_array_equal(ref, reference_face(default_face_image(), 96))


def test_reference_face_from_photo_is_rgb_in_unit_range(astronaut: np.ndarray) -> None:
    ref = reference_face(astronaut, 64)
    crop = crop_face(astronaut, largest_face(astronaut), 64)

    assert ref.shape == (3, 64, 64)
    np.testing.assert_allclose(ref, crop.transpose(2, 0, 1) / 255, atol=1e-6)


def test_default_face_asset_is_small_and_detected() -> None:
    assert ASSET_PATH.stat().st_size < 100_000
    image = default_face_image()

    assert image.shape == (256, 256, 3)
    assert image.dtype == np.uint8
    assert largest_face(image).w >= 80


@pytest.mark.parametrize(
    "image",
    [
        np.full((240, 320, 3), 128, dtype=np.uint8),
        np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8),
        data.coffee(),
        data.rocket(),
    ],
    ids=["grey", "noise", "coffee", "rocket"],
)
def test_faceless_image_raises_with_advice(image: np.ndarray) -> None:
    with pytest.raises(FaceError) as info:
        reference_face(image, 96)

    message = str(info.value)
    assert f"no face found in the {image.shape[1]}x{image.shape[0]} px reference image" in message
    assert "at least 48 px wide" in message
    assert "omit the face to use the default reference face" in message


def test_face_errors_are_input_errors() -> None:
    assert issubclass(FaceError, InputError)


@pytest.mark.parametrize("junk", [b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64])
def test_undecodable_bytes_raise(junk: bytes) -> None:
    with pytest.raises(FaceError, match="not a decodable image; send a JPEG, PNG"):
        load_image(junk)


def test_empty_bytes_and_missing_path_raise(tmp_path: Path) -> None:
    with pytest.raises(FaceError, match=r"empty \(0 bytes\)"):
        load_image(b"")
    with pytest.raises(FaceError, match=r"image file not found: .*nobody\.jpg"):
        load_image(tmp_path / "nobody.jpg")


def test_color_png_path_bytes_and_stream_decode_to_rgb(
    astronaut: np.ndarray, tmp_path: Path
) -> None:
    encoded = png_bytes(cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    path = tmp_path / "astronaut.png"
    path.write_bytes(encoded)

    np.testing.assert_array_equal(load_image(encoded), astronaut)
    np.testing.assert_array_equal(load_image(path), astronaut)
    np.testing.assert_array_equal(load_image(str(path)), astronaut)
    with path.open("rb") as f:
        np.testing.assert_array_equal(load_image(f), astronaut)


def test_grayscale_png_becomes_three_equal_channels(astronaut: np.ndarray) -> None:
    gray = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)

    image = load_image(png_bytes(gray))

    assert image.shape == (512, 512, 3)
    np.testing.assert_array_equal(image[..., 0], gray)
    np.testing.assert_array_equal(image[..., 2], gray)
    assert iou(largest_face(image), ASTRONAUT_FACE) > 0.5


def test_rgba_png_is_composited_onto_white(astronaut: np.ndarray) -> None:
    bgra = cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGRA)
    bgra[:, :40, 3] = 0  # a transparent strip on the left

    image = load_image(png_bytes(bgra))

    assert image.shape == (512, 512, 3)
    assert (image[:, :40] == 255).all()
    np.testing.assert_array_equal(image[:, 40:], astronaut[:, 40:])
    assert iou(largest_face(image), ASTRONAUT_FACE) > 0.5


def test_16bit_png_is_scaled_to_8bit(astronaut: np.ndarray) -> None:
    deep = cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257

    np.testing.assert_array_equal(load_image(png_bytes(deep)), astronaut)


def test_jpeg_exif_orientation_is_applied(astronaut: np.ndarray) -> None:
    # A phone held upright stores the pixels sideways and says "rotate 90 degrees clockwise to
    # show" (EXIF orientation 6); a sideways face would not be detected.
    sideways = np.ascontiguousarray(np.rot90(astronaut, 1))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(sideways).save(buf, "JPEG", quality=95, exif=exif.tobytes())

    image = load_image(buf.getvalue())

    assert image.shape == (512, 512, 3)
    assert iou(largest_face(image), ASTRONAUT_FACE) > 0.5


def test_wrong_array_layout_is_a_programming_error(astronaut: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"shape \(H, W, 3\)"):
        detect_faces(astronaut.transpose(2, 0, 1))

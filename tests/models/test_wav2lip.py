"""psi_HG: official checkpoint compatibility, shapes, identity caching and per-item faces."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from models.config import Wav2LipConfig, lite_config
from models.mel import LogMelSpectrogram, mel_windows
from models.wav2lip import Wav2Lip, load_wav2lip_checkpoint

# The official 96x96 generator, written out independently of models/wav2lip.py:
# (kind, cin, cout, kernel) per block; "conv" = Conv2d + BatchNorm2d, "convT" = ConvTranspose2d +
# BatchNorm2d. A nested list is a ModuleList of Sequentials; a flat list is one Sequential.
Row = tuple[str, int, int, int]

LITE_SIZE = lite_config().wav2lip.img_size


def _res(channels: int, count: int) -> list[Row]:
    return [("conv", channels, channels, 3)] * count


OFFICIAL_FACE_ENCODER: list[list[Row]] = [
    [("conv", 6, 16, 7)],
    [("conv", 16, 32, 3), *_res(32, 2)],
    [("conv", 32, 64, 3), *_res(64, 3)],
    [("conv", 64, 128, 3), *_res(128, 2)],
    [("conv", 128, 256, 3), *_res(256, 2)],
    [("conv", 256, 512, 3), *_res(512, 1)],
    [("conv", 512, 512, 3), ("conv", 512, 512, 1)],
]
OFFICIAL_AUDIO_ENCODER: list[Row] = [
    ("conv", 1, 32, 3),
    *_res(32, 2),
    ("conv", 32, 64, 3),
    *_res(64, 2),
    ("conv", 64, 128, 3),
    *_res(128, 2),
    ("conv", 128, 256, 3),
    *_res(256, 1),
    ("conv", 256, 512, 3),
    ("conv", 512, 512, 1),
]
OFFICIAL_FACE_DECODER: list[list[Row]] = [
    [("conv", 512, 512, 1)],
    [("convT", 1024, 512, 3), *_res(512, 1)],
    [("convT", 1024, 512, 3), *_res(512, 2)],
    [("convT", 768, 384, 3), *_res(384, 2)],
    [("convT", 512, 256, 3), *_res(256, 2)],
    [("convT", 320, 128, 3), *_res(128, 2)],
    [("convT", 160, 64, 3), *_res(64, 2)],
]


def _block_shapes(prefix: str, row: Row) -> dict[str, tuple[int, ...]]:
    kind, cin, cout, k = row
    weight = (cin, cout, k, k) if kind == "convT" else (cout, cin, k, k)
    shapes: dict[str, tuple[int, ...]] = {
        f"{prefix}.conv_block.0.weight": weight,
        f"{prefix}.conv_block.0.bias": (cout,),
    }
    for name in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{prefix}.conv_block.1.{name}"] = (cout,)
    shapes[f"{prefix}.conv_block.1.num_batches_tracked"] = ()
    return shapes


def official_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for name, blocks in (
        ("face_encoder_blocks", OFFICIAL_FACE_ENCODER),
        ("face_decoder_blocks", OFFICIAL_FACE_DECODER),
    ):
        for i, block in enumerate(blocks):
            for j, row in enumerate(block):
                shapes.update(_block_shapes(f"{name}.{i}.{j}", row))
    for j, row in enumerate(OFFICIAL_AUDIO_ENCODER):
        shapes.update(_block_shapes(f"audio_encoder.{j}", row))
    shapes.update(_block_shapes("output_block.0", ("conv", 80, 32, 3)))
    shapes["output_block.1.weight"] = (3, 32, 1, 1)
    shapes["output_block.1.bias"] = (3,)
    return shapes


def random_official_state(seed: int = 0) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, Tensor] = {}
    for key, shape in official_shapes().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1234)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.05
    return state


@pytest.fixture(scope="module")
def official_state() -> dict[str, Tensor]:
    return random_official_state()


@pytest.fixture(scope="module")
def paper_model() -> Wav2Lip:
    return Wav2Lip(Wav2LipConfig()).eval()


@pytest.fixture(scope="module")
def lite_model() -> Wav2Lip:
    torch.manual_seed(0)
    return Wav2Lip(lite_config().wav2lip).eval()


def assert_holds(model: Wav2Lip, state: dict[str, Tensor]) -> None:
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    for key, tensor in state.items():
        assert torch.equal(loaded[key], tensor), key


def test_official_training_checkpoint_loads_strictly(
    tmp_path: Path, official_state: dict[str, Tensor]
) -> None:
    path = tmp_path / "wav2lip.pth"
    torch.save(
        {
            "state_dict": {f"module.{k}": v for k, v in official_state.items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
            "global_step": 1,
            "global_epoch": 1,
        },
        path,
    )
    model = Wav2Lip(Wav2LipConfig())

    load_wav2lip_checkpoint(model, path)

    assert_holds(model, official_state)


def test_bare_state_dict_without_prefix_loads(
    tmp_path: Path, official_state: dict[str, Tensor]
) -> None:
    path = tmp_path / "bare.pth"
    torch.save(official_state, path)

    assert_holds(Wav2Lip.load_official(path), official_state)


def test_missing_key_is_a_clear_error(tmp_path: Path, official_state: dict[str, Tensor]) -> None:
    state = {k: v for k, v in official_state.items() if k != "output_block.1.bias"}
    path = tmp_path / "missing.pth"
    torch.save({"state_dict": state}, path)

    with pytest.raises(ValueError, match=r"missing keys \['output_block\.1\.bias'\].*96x96"):
        load_wav2lip_checkpoint(Wav2Lip(Wav2LipConfig()), path)


def test_wrong_shape_and_extra_key_are_a_clear_error(
    tmp_path: Path, official_state: dict[str, Tensor]
) -> None:
    state = dict(official_state)
    state["output_block.1.weight"] = torch.zeros(3, 16, 1, 1)
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "shape.pth"
    torch.save(state, path)

    with pytest.raises(ValueError, match=r"unexpected keys \['extra\.weight'\]") as info:
        load_wav2lip_checkpoint(Wav2Lip(Wav2LipConfig()), path)
    assert "output_block.1.weight (3, 16, 1, 1) (want (3, 32, 1, 1))" in str(info.value)
    assert "wav2lip.pth" in str(info.value)


def test_lite_model_rejects_official_weights(
    tmp_path: Path, official_state: dict[str, Tensor]
) -> None:
    path = tmp_path / "wav2lip.pth"
    torch.save(official_state, path)

    with pytest.raises(ValueError, match="wrong shapes"):
        load_wav2lip_checkpoint(Wav2Lip(lite_config().wav2lip), path)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "wav2lip.pth"
    with pytest.raises(FileNotFoundError, match=str(path)):
        Wav2Lip.load_official(path)


def test_garbage_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a torch checkpoint\x00\xff" * 10)
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        Wav2Lip.load_official(path)


def test_non_tensor_payload_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="no state dict of tensors"):
        Wav2Lip.load_official(path)


@pytest.mark.parametrize(("preset", "size"), [("paper", 96), ("lite", LITE_SIZE)])
def test_shapes_and_range(
    preset: str, size: int, paper_model: Wav2Lip, lite_model: Wav2Lip
) -> None:
    model = paper_model if preset == "paper" else lite_model
    assert model.config.img_size == size
    frames = 3 if preset == "lite" else 1  # the 96x96 network costs ~6 GMAC per frame
    face = torch.rand(2, 3, size, size)
    mel = torch.randn(2, frames, 1, 80, 16)

    identity = model.encode_identity(model.reference_input(face))
    speech = model.encode_audio(mel.flatten(0, 1))
    video = model(mel, face)

    assert [f.shape[-1] for f in identity] == [size // 2**k for k in range(len(identity) - 1)] + [1]
    assert speech.shape == (2 * frames, model.config.embed_dim, 1, 1)
    assert identity[-1].shape == (2, model.config.embed_dim, 1, 1)
    assert video.shape == (2, frames, 3, size, size)
    assert video.min() >= 0.0
    assert video.max() <= 1.0


def test_reference_input_masks_lower_half_first() -> None:
    face = torch.rand(1, 3, 48, 48) + 0.1
    face6 = Wav2Lip.reference_input(face)
    assert face6.shape == (1, 6, 48, 48)
    torch.testing.assert_close(face6[:, :3, :24], face[:, :, :24])
    assert torch.all(face6[:, :3, 24:] == 0)
    torch.testing.assert_close(face6[:, 3:], face)


def test_cached_identity_decode_equals_forward(lite_model: Wav2Lip) -> None:
    generator = torch.Generator().manual_seed(3)
    face = torch.rand(2, 3, LITE_SIZE, LITE_SIZE, generator=generator)
    mel = torch.randn(2, 4, 1, 80, 16, generator=generator)

    identity = lite_model.encode_identity(lite_model.reference_input(face))
    decoded = lite_model.decode(lite_model.encode_audio(mel.flatten(0, 1)), identity, 4)

    torch.testing.assert_close(
        decoded.reshape(2, 4, 3, LITE_SIZE, LITE_SIZE), lite_model(mel, face), rtol=0, atol=0
    )


def test_each_item_decodes_with_its_own_face(lite_model: Wav2Lip) -> None:
    generator = torch.Generator().manual_seed(4)
    faces = torch.rand(2, 3, LITE_SIZE, LITE_SIZE, generator=generator)
    faces[1] = 1.0 - faces[1]
    mel = torch.randn(2, 3, 1, 80, 16, generator=generator)

    together = lite_model(mel, faces)
    alone = [lite_model(mel[i : i + 1], faces[i : i + 1])[0] for i in range(2)]
    swapped = lite_model(mel, faces.flip(0))

    for i in range(2):
        torch.testing.assert_close(together[i], alone[i], rtol=1e-5, atol=1e-5)
    # The test can only catch a mix-up if the face matters to the output.
    assert (together - swapped).abs().max() > 1e-3


def test_decode_rejects_mismatched_frame_count(lite_model: Wav2Lip) -> None:
    identity = lite_model.encode_identity(torch.rand(2, 6, LITE_SIZE, LITE_SIZE))
    with pytest.raises(ValueError, match="5 speech codes for 2 faces x 3 frames"):
        lite_model.decode(torch.randn(5, 128, 1, 1), identity, 3)


def test_speech_to_video_through_the_mel_front_end(lite_model: Wav2Lip) -> None:
    wave = 0.1 * torch.randn(1, 8_000, generator=torch.Generator().manual_seed(5))
    mel = LogMelSpectrogram()(wave)  # (1, 80, 41)
    windows = mel_windows(mel, 15)  # 0.5 s at 30 fps

    video = lite_model(windows, torch.rand(1, 3, LITE_SIZE, LITE_SIZE))

    assert video.shape == (1, 15, 3, LITE_SIZE, LITE_SIZE)

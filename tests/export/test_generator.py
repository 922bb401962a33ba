"""The export stand-in for the generator computes `Wav2Lip.decode`, with its skips split off."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from export.generator import SkipSplitConv, SkipSplitWav2Lip
from models.config import Wav2LipConfig, lite_config
from models.wav2lip import ConvBlock, Wav2Lip

SMALL = Wav2LipConfig(
    img_size=12,
    face_stem_channels=4,
    face_stages=((6, 1), (8, 0)),
    embed_dim=10,
    audio_stages=((4, 0), (6, 1), (8, 0), (10, 0)),
    decoder_stages=((10, 1), (8, 0), (6, 1)),
    output_hidden=5,
)


def trained_looking(config: Wav2LipConfig, seed: int) -> Wav2Lip:
    """A random generator in eval mode whose batch norms are far from the identity, so that a
    wrong fold shows."""
    torch.manual_seed(seed)
    generator = Wav2Lip(config)
    for module in generator.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.3, 3.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return generator.eval()


@pytest.mark.parametrize(
    ("config", "batch", "frames"),
    [(lite_config().wav2lip, 1, 7), (lite_config().wav2lip, 3, 4), (SMALL, 2, 5)],
    ids=["lite-one-face", "lite-three-faces", "small"],
)
def test_decode_matches_the_generator(config: Wav2LipConfig, batch: int, frames: int) -> None:
    generator = trained_looking(config, seed=batch * 10 + frames)
    split = SkipSplitWav2Lip(generator)
    size = config.img_size
    with torch.no_grad():
        faces = torch.rand(batch, 3, size, size)
        identity = generator.encode_identity(generator.reference_input(faces))
        codes = generator.encode_audio(torch.randn(batch * frames, 1, 80, 16))
        expected = generator.decode(codes, identity, frames)
        got = split.decode(codes, identity, frames)
    assert got.shape == expected.shape == (batch * frames, 3, size, size)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # Each item's frames see their own face: swapping the faces changes the frames.
    with torch.no_grad():
        swapped = split.decode(codes, [level.flip(0) for level in identity], frames)
    if batch > 1:
        assert not torch.allclose(swapped, got)


def test_the_split_shares_the_trained_modules_and_leaves_the_generator_alone() -> None:
    generator = trained_looking(SMALL, seed=1)
    before = {name: value.clone() for name, value in generator.state_dict().items()}
    split = SkipSplitWav2Lip(generator)
    assert split.audio_encoder is generator.audio_encoder
    assert split.face_decoder_blocks is generator.face_decoder_blocks
    after = generator.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    # One split layer per upsampling stage, plus the output block's head.
    assert len(split.upsample) == len(SMALL.decoder_stages)


def test_a_generator_in_training_mode_is_refused() -> None:
    generator = Wav2Lip(SMALL).train()
    with pytest.raises(ValueError, match="eval mode"):
        SkipSplitWav2Lip(generator)


def test_split_conv_needs_a_real_split_of_a_concatenation() -> None:
    block = ConvBlock(6, 6, 3, 1, 1).eval()
    with pytest.raises(ValueError, match="x_channels"):
        SkipSplitConv(block, x_channels=6)
    with pytest.raises(ValueError, match="residual"):
        SkipSplitConv(ConvBlock(6, 6, 3, 1, 1, residual=True).eval(), x_channels=3)

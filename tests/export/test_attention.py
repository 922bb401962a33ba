"""The chunked banded attention of the export equals the masked full attention it stands in for."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from export.attention import (
    BandedMultiheadAttention,
    BandedSelfAttention,
    BandedWav2Vec2Attention,
    banded_attention,
    banded_swaps,
)
from models.config import PMMTalkConfig
from models.decoder import alibi_causal_bias, alibi_slopes
from models.local_attention import band_bias
from models.pmmtalk import PMMTalk


def qkv(frames: int, seed: int, heads: int = 3, dim: int = 8) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(2, heads, frames, dim, generator=generator) for _ in range(3)]


@pytest.mark.parametrize("frames", [1, 7, 16, 17, 50, 131])
@pytest.mark.parametrize(
    ("left", "right", "chunk"), [(5, 2, 16), (25, 5, 8), (0, 0, 16), (3, 20, 4)]
)
def test_chunks_equal_the_band_masked_attention(
    frames: int, left: int, right: int, chunk: int
) -> None:
    q, k, v = qkv(frames, seed=frames + 100 * left + right)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=band_bias(frames, left, right, q))
    got = banded_attention(q, k, v, left, right, scale=8**-0.5, chunk=chunk)
    assert got.shape == q.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("frames", [1, 9, 40, 97])
def test_alibi_bias_with_a_causal_band(frames: int) -> None:
    q, k, v = qkv(frames, seed=frames, heads=4)
    slopes = alibi_slopes(4)
    bias = alibi_causal_bias(frames, slopes) + band_bias(frames, 9, frames, q)[0]
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    got = banded_attention(q, k, v, 9, 0, scale=8**-0.5, slopes=slopes, chunk=16)
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-6)


def test_a_wider_band_changes_the_result() -> None:
    """The band is applied: keys outside it must not count."""
    q, k, v = qkv(60, seed=3)
    narrow = banded_attention(q, k, v, 2, 2, scale=1.0)
    wide = banded_attention(q, k, v, 20, 2, scale=1.0)
    assert not torch.allclose(narrow, wide)
    # The first frames see the same keys with either band on their left: no keys before frame 0.
    torch.testing.assert_close(
        narrow[:, :, :1], banded_attention(q, k, v, 0, 2, scale=1.0)[:, :, :1]
    )


def test_bad_bands_are_refused() -> None:
    q, k, v = qkv(10, seed=0, heads=4)
    with pytest.raises(ValueError, match=">= 0"):
        banded_attention(q, k, v, -1, 0, scale=1.0)
    with pytest.raises(ValueError, match="right == 0"):
        banded_attention(q, k, v, 3, 1, scale=1.0, slopes=alibi_slopes(4))


def banded(config: PMMTalkConfig) -> PMMTalkConfig:
    """``config`` with every attention banded, as in the lite preset."""
    return dataclasses.replace(
        config,
        audio=dataclasses.replace(config.audio, attention_span_s=(0.3, 0.1)),
        text=dataclasses.replace(config.text, attention_span_s=(0.2, 0.06)),
        image=dataclasses.replace(config.image, attention_span_s=(0.3, 0.1)),
        decoder=dataclasses.replace(config.decoder, attention_span_s=0.2),
    )


def test_swaps_cover_every_banded_layer_and_keep_the_model_output(
    tiny_config: PMMTalkConfig,
) -> None:
    torch.manual_seed(1)
    model = PMMTalk(banded(tiny_config)).eval()
    swaps = banded_swaps(model)
    kinds = [type(stand_in) for _, _, stand_in in swaps]
    cfg = model.cfg
    assert kinds.count(BandedWav2Vec2Attention) == cfg.audio.num_layers + cfg.text.num_layers
    assert kinds.count(BandedMultiheadAttention) == cfg.image.num_layers
    assert kinds.count(BandedSelfAttention) == 2 * cfg.decoder.num_layers
    # The stand-ins' bands: 0.3 s and 0.1 s are 15 and 5 latent frames, 9 and 3 video frames.
    first = swaps[0][2]
    assert isinstance(first, BandedWav2Vec2Attention) and (first.left, first.right) == (15, 5)
    image = next(s for s in (t for _, _, t in swaps) if isinstance(s, BandedMultiheadAttention))
    assert (image.left, image.right) == (9, 3)

    size = cfg.wav2lip.img_size
    face = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(2))
    wave = 0.3 * torch.randn(1, 72_000, generator=torch.Generator().manual_seed(3))
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in swaps]
    with torch.no_grad():
        expected = model(wave, face).blendshapes
        for owner, name, stand_in in swaps:
            setattr(owner, name, stand_in)
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            got = model(wave, face).blendshapes
        finally:
            torch.backends.mha.set_fastpath_enabled(True)
            for owner, name, original in originals:
                setattr(owner, name, original)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_full_attention_has_no_stand_ins(tiny_model: PMMTalk) -> None:
    """Without a band (the paper preset, and the tiny test model) every key counts: nothing to
    cut, so the export keeps the modules as they are."""
    assert tiny_model.cfg.audio.attention_span_s is None
    assert banded_swaps(tiny_model) == []

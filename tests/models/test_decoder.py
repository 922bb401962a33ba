from __future__ import annotations

import math

import pytest
import torch

from models.config import DecoderConfig
from models.decoder import (
    FusionDecoder,
    alibi_causal_bias,
    alibi_slopes,
    periodic_positional_encoding,
)

DIMS = {"image_dim": 12, "text_dim": 7, "audio_dim": 10}


def make_decoder(**overrides: float) -> FusionDecoder:
    cfg = DecoderConfig(
        modality_dim=8,
        d_model=16,
        num_layers=2,
        num_heads=4,
        intermediate_size=32,
        dropout=0.0,
        num_styles=3,
        **overrides,  # type: ignore[arg-type]
    )
    torch.manual_seed(0)
    return FusionDecoder(cfg, **DIMS).eval()


def features(frames: int, seed: int = 1) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, frames, d, generator=gen) for d in DIMS.values())


def test_output_shape() -> None:
    decoder = make_decoder()
    image, text, audio = features(9)
    out = decoder(image, text, audio, decoder.style_vector(1, 1))
    assert out.shape == (1, 9, 32)


@torch.no_grad()
def with_noise_in(decoder: FusionDecoder, frames: int, region: slice) -> tuple[torch.Tensor, ...]:
    """(outputs, outputs after every input in ``region`` of the frames became loud noise)."""
    image, text, audio = features(frames)
    style = decoder.style_vector(0, 1)
    base = decoder(image, text, audio, style)
    changed = [x.clone() for x in (image, text, audio)]
    for x in changed:
        x[:, region] = torch.randn_like(x[:, region]) * 5
    return base, decoder(*changed, style)


def test_decoder_is_causal() -> None:
    """Changing the inputs after frame t leaves every output up to t unchanged."""
    cut = 11
    base, out = with_noise_in(make_decoder(), 20, slice(cut + 1, None))
    torch.testing.assert_close(out[:, : cut + 1], base[:, : cut + 1], rtol=0, atol=1e-6)
    # The future did change, so the check above is not vacuous.
    assert (out[:, cut + 1 :] - base[:, cut + 1 :]).abs().max() > 1e-3


def test_prefix_run_equals_full_run_prefix() -> None:
    """Causality seen another way: decoding only the first t frames gives the same frames."""
    decoder = make_decoder()
    image, text, audio = features(15)
    style = decoder.style_vector(2, 1)
    with torch.no_grad():
        full = decoder(image, text, audio, style)
        prefix = decoder(image[:, :6], text[:, :6], audio[:, :6], style)
    torch.testing.assert_close(prefix, full[:, :6], rtol=0, atol=1e-6)


@pytest.mark.parametrize("span_s", [None, 0.1])
def test_a_span_bounds_how_far_back_a_frame_reads(span_s: float | None) -> None:
    """With a span of 3 frames, four stacked attentions reach 12 frames back and no further;
    without one, a frame reads the whole past."""
    decoder = make_decoder() if span_s is None else make_decoder(attention_span_s=span_s)
    frame = 25
    base, out = with_noise_in(decoder, 30, slice(None, frame - 12))
    moved = (out[:, frame] - base[:, frame]).abs().max().item()
    if span_s is None:
        assert moved > 1e-4
    else:
        assert moved < 1e-6
        assert (out[:, : frame - 12] - base[:, : frame - 12]).abs().max() > 1e-3


def test_alibi_bias_weights_nearby_frames_more() -> None:
    slopes = alibi_slopes(4)
    assert slopes.tolist() == pytest.approx([2**-2, 2**-4, 2**-6, 2**-8])
    bias = alibi_causal_bias(5, slopes)
    assert bias.shape == (4, 5, 5)
    assert bias[0, 4, 4] == 0
    assert bias[0, 4, 1] == pytest.approx(-0.25 * 3)
    assert torch.isinf(bias[:, 1, 2]).all()  # the future is masked


def test_periodic_encoding_repeats_and_offsets() -> None:
    enc = periodic_positional_encoding(70, 8, period=30)
    torch.testing.assert_close(enc[0], enc[30])
    torch.testing.assert_close(enc[5], enc[65])
    assert not torch.allclose(enc[0], enc[1])
    assert enc[1, 0].item() == pytest.approx(math.sin(1.0))
    shifted = periodic_positional_encoding(10, 8, period=30, start_index=40)
    torch.testing.assert_close(shifted, enc[40:50])


def test_style_sources() -> None:
    decoder = make_decoder()
    table = decoder.style_table.weight
    torch.testing.assert_close(decoder.style_vector(1, 2), table[1].expand(2, -1))
    torch.testing.assert_close(decoder.style_vector(None, 1), table.mean(0, keepdim=True))
    vec = torch.randn(64)
    torch.testing.assert_close(decoder.style_vector(vec, 1), vec[None])
    indices = decoder.style_vector(torch.tensor([2, 0]), 2)
    torch.testing.assert_close(indices, table[[2, 0]])
    with pytest.raises(ValueError, match="out of range"):
        decoder.style_vector(3, 1)
    with pytest.raises(ValueError, match="64 values"):
        decoder.style_vector(torch.randn(5), 1)

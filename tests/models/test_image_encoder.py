"""The image encoder: per-frame features, then a transformer over time, banded when asked."""

from __future__ import annotations

import pytest
import torch

from models.config import ImageEncoderConfig
from models.image_encoder import ImageEncoder


def make_encoder(span_s: tuple[float, float] | None) -> ImageEncoder:
    cfg = ImageEncoderConfig(
        cnn_channels=(4, 8),
        hidden_size=16,
        num_layers=2,
        num_heads=4,
        intermediate_size=32,
        dropout=0.0,
        attention_span_s=span_s,
    )
    torch.manual_seed(0)
    return ImageEncoder(cfg).eval()


def test_forward_is_frame_features_then_sequence() -> None:
    encoder = make_encoder(None)
    video = torch.rand(2, 7, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features = encoder.frame_features(video)
        assert features.shape == (2, 7, 16)
        # Per frame: a frame's features do not depend on the other frames.
        alone = encoder.frame_features(video[:, 3:4])
        torch.testing.assert_close(alone, features[:, 3:4], rtol=0, atol=1e-6)
        torch.testing.assert_close(encoder(video), encoder.sequence(features))


@pytest.mark.parametrize("span_s", [None, (0.1, 0.0)])
def test_a_band_bounds_what_a_frame_reads(span_s: tuple[float, float] | None) -> None:
    """Band (3 frames back, none ahead) over 2 layers after the +-4-frame position convolution:
    a frame reads 10 frames back and 4 ahead at most; without a band, every frame."""
    encoder = make_encoder(span_s)
    frames, frame = 40, 20
    x = torch.randn(1, frames, 16, generator=torch.Generator().manual_seed(2))
    changed = x.clone()
    changed[:, : frame - 10] += 3.0
    changed[:, frame + 5 :] -= 3.0
    with torch.no_grad():
        moved = (encoder.sequence(changed) - encoder.sequence(x))[:, frame].abs().max().item()
    if span_s is None:
        assert moved > 1e-4
    else:
        assert moved < 1e-5

"""The streaming window: its lengths on the 0.1 s grid, and batched windows = separate runs."""

from __future__ import annotations

import pytest
import torch

from models.pmmtalk import PMMTalk
from models.streaming import StreamWindow, window_forward


def test_window_lengths_sit_on_the_frame_grid() -> None:
    window = StreamWindow(left_context_s=1.0, hop_s=0.2, lookahead_s=0.3)
    assert window.window_samples == 24_000
    assert window.window_frames == 45
    assert (window.left_frames, window.hop_frames, window.lookahead_frames) == (30, 6, 9)
    assert window.hop_samples == 3_200 and window.lookahead_samples == 4_800
    assert window.left_frames + window.hop_frames + window.lookahead_frames == 45
    assert window.to_dict()["window_samples"] == 24_000


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"hop_s": 0.0}, "hop_s"),
        ({"hop_s": 0.25}, "hop_s"),
        ({"left_context_s": -0.1}, "left_context_s"),
        ({"lookahead_s": 0.05}, "lookahead_s"),
    ],
)
def test_off_grid_lengths_are_refused(fields: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StreamWindow(**fields)


@torch.no_grad()
def test_a_batch_of_windows_equals_each_window_alone(tiny_model: PMMTalk) -> None:
    model = tiny_model.eval()
    size = model.cfg.wav2lip.img_size
    generator = torch.Generator().manual_seed(3)
    wave = 0.2 * torch.randn(3, 8_000, generator=generator)
    faces = torch.rand(3, 3, size, size, generator=generator)
    identity = model.encode_face(faces)
    style = model.decoder.style_table.weight[:3]
    offsets = torch.tensor([0, 7, -15])
    batched = window_forward(model, wave, identity, style, offsets)
    assert batched.shape == (3, 15, 32)
    for i in range(3):
        speech = model.encode_speech(wave[i : i + 1], 15)
        alone = model.decode(
            speech, [t[i : i + 1] for t in identity], style[i : i + 1], int(offsets[i])
        ).blendshapes
        torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=1e-5)
    # The offset is not ignored: it moves the periodic positional encoding.
    shifted = window_forward(model, wave, identity, style, offsets + 1)
    assert not torch.allclose(shifted, batched)


def test_a_window_off_the_sample_grid_is_refused(tiny_model: PMMTalk) -> None:
    size = tiny_model.cfg.wav2lip.img_size
    identity = tiny_model.encode_face(torch.rand(1, 3, size, size))
    style = tiny_model.decoder.style_table.weight[:1]
    with pytest.raises(ValueError, match="multiple of 1600"):
        window_forward(tiny_model, torch.zeros(1, 2_000), identity, style, torch.zeros(1).long())

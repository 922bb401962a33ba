"""The streaming window: its lengths on the 0.1 s grid, batched windows = separate runs, and the
per-frame features a stream carries from window to window."""

from __future__ import annotations

import pytest
import torch

from models.pmmtalk import PMMTalk
from models.streaming import (
    CARRY_MARGIN_FRAMES,
    UNIT_FRAMES,
    UNIT_SAMPLES,
    StreamWindow,
    window_forward,
    window_step,
)


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


def test_carry_frames_keep_the_margin() -> None:
    assert StreamWindow(1.0, 0.4, 0.3).carry_frames == 30 - CARRY_MARGIN_FRAMES
    assert StreamWindow(0.2, 0.1, 0.0).carry_frames == 1
    assert StreamWindow(0.1, 0.1, 0.0).carry_frames == 0
    assert StreamWindow().to_dict()["carry_frames"] == StreamWindow().carry_frames


def _stream(model: PMMTalk, window: StreamWindow, windows: int) -> dict[str, object]:
    """Speech for ``windows`` consecutive windows of one stream, with its face and style."""
    size = model.cfg.wav2lip.img_size
    generator = torch.Generator().manual_seed(11)
    left = window.left_frames // UNIT_FRAMES * UNIT_SAMPLES
    speech = 0.3 * torch.randn((windows - 1) * window.hop_samples + window.window_samples - left)
    clip = torch.cat([torch.zeros(left), speech])  # the left padding a stream starts with
    waves = [
        clip[k * window.hop_samples : k * window.hop_samples + window.window_samples][None]
        for k in range(windows)
    ]
    identity = model.encode_face(torch.rand(1, 3, size, size, generator=generator))
    return {"waves": waves, "identity": identity, "style": model.decoder.style_table.weight[:1]}


@torch.no_grad()
def test_a_stream_carries_exactly_the_per_frame_features_its_windows_would_compute(
    tiny_model: PMMTalk,
) -> None:
    """Each carry equals the features the next window would compute for those frames itself,
    wherever that window's own computation is exact (its frames CARRY_MARGIN_FRAMES - 1 on);
    and a starting window equals the uncarried `window_forward`."""
    model = tiny_model.eval()
    window = StreamWindow(left_context_s=0.6, hop_s=0.2, lookahead_s=0.3)
    stream = _stream(model, window, windows=4)
    identity, style = stream["identity"], stream["style"]
    assert isinstance(identity, list) and isinstance(style, torch.Tensor)
    carry = torch.zeros(1, *(window.carry_frames, model.cfg.image.hidden_size))
    edge = CARRY_MARGIN_FRAMES - 1
    for k, wave in enumerate(stream["waves"]):  # type: ignore[attr-defined]
        offset = torch.tensor([k * window.hop_frames - window.left_frames])
        start = torch.tensor([1.0 if k == 0 else 0.0])
        frames, carry_out = window_step(model, window, wave, identity, style, offset, carry, start)
        assert frames.shape == (1, window.window_frames, 32)
        assert carry_out.shape == carry.shape
        own = model.frame_features(
            model.encode_speech(wave, window.window_frames).mel_windows, identity
        )
        if k == 0:
            uncarried = window_forward(model, wave, identity, style, offset)
            torch.testing.assert_close(frames, uncarried, atol=1e-5, rtol=0)
        else:
            torch.testing.assert_close(
                carry[:, edge:], own[:, edge : window.carry_frames], atol=1e-5, rtol=0
            )
        carry = carry_out


@torch.no_grad()
def test_the_carry_is_used_unless_the_window_starts_its_stream(tiny_model: PMMTalk) -> None:
    model = tiny_model.eval()
    window = StreamWindow(left_context_s=0.6, hop_s=0.2, lookahead_s=0.3)
    stream = _stream(model, window, windows=2)
    identity, style = stream["identity"], stream["style"]
    assert isinstance(identity, list) and isinstance(style, torch.Tensor)
    wave = stream["waves"][1]  # type: ignore[index]
    offset = torch.tensor([window.hop_frames - window.left_frames])
    shape = (1, window.carry_frames, model.cfg.image.hidden_size)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(2))

    def run(carry: torch.Tensor, start: float) -> torch.Tensor:
        out, _ = window_step(
            model, window, wave, identity, style, offset, carry, torch.tensor([start])
        )
        return out

    assert not torch.allclose(run(noise, 0.0), run(torch.zeros(shape), 0.0))
    torch.testing.assert_close(run(noise, 1.0), run(torch.zeros(shape), 1.0))


def test_a_window_without_room_to_carry_is_refused(tiny_model: PMMTalk) -> None:
    window = StreamWindow(left_context_s=0.1, hop_s=0.1, lookahead_s=0.0)
    size = tiny_model.cfg.wav2lip.img_size
    identity = tiny_model.encode_face(torch.rand(1, 3, size, size))
    style = tiny_model.decoder.style_table.weight[:1]
    with pytest.raises(ValueError, match=r"0\.2 s of left context"):
        window_step(
            tiny_model,
            window,
            torch.zeros(1, window.window_samples),
            identity,
            style,
            torch.zeros(1).long(),
            torch.zeros(1, 0, tiny_model.cfg.image.hidden_size),
            torch.ones(1),
        )

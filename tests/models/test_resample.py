from __future__ import annotations

import torch

from models.audio_encoder import num_latent_frames
from models.resample import features_to_frames, latent_position, samples_for_frames


def test_frame_times_map_to_latent_centres() -> None:
    # Frame 3 is at 0.1 s = 1600 samples; latent j is centred at 320 j + 200 samples.
    assert latent_position(torch.tensor(3)).item() == (1600 - 200) / 320
    assert latent_position(torch.tensor(0)).item() < 0


def test_linear_ramp_is_reproduced() -> None:
    latents = torch.arange(100, dtype=torch.float32)[None, :, None]  # value = latent index
    frames = features_to_frames(latents, 50)
    expected = latent_position(torch.arange(50)).clamp(0, 99).float()
    torch.testing.assert_close(frames[0, :, 0], expected)


def test_frames_do_not_depend_on_clip_length() -> None:
    """A frame's value depends on the latents around its time, never on how many follow."""
    torch.manual_seed(0)
    latents = torch.randn(1, 80, 4)
    full = features_to_frames(latents, 45)
    short = features_to_frames(latents[:, :40], 20)
    torch.testing.assert_close(short, full[:, :20])


def test_samples_for_frames_cover_the_last_frame() -> None:
    for frames in (1, 2, 7, 30, 31, 299, 1800):
        samples = samples_for_frames(frames)
        available = num_latent_frames(samples)
        last = latent_position(torch.tensor(frames - 1)).item()
        assert available >= 1
        assert available - 1 >= int(last) + 1 or last < 0

"""The trainer on cached features: equal to the full model path, loss goes down, resume works."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.blendshapes import num_frames
from models.config import PMMTalkConfig
from models.data.batch import Clip
from models.pmmtalk import PMMTalk
from models.training.features import cache_clips, crop_batch
from models.training.trainer import METRICS_FILE, TrainConfig, forward_cached, train


def _clips(count: int, seed: int = 0) -> list[Clip]:
    """Tones whose loudness drives jawOpen: a mapping the network can learn quickly."""
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(count):
        samples = int(rng.integers(9000, 16000))
        t = np.arange(samples) / 16000
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(1, 3) * t)
        wave = (0.3 * envelope * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
        frames = num_frames(samples, 16000)
        targets = np.zeros((frames, 32), dtype=np.float32)
        frame_times = np.arange(frames) / 30
        targets[:, 3] = 0.5 + 0.5 * np.sin(2 * np.pi * 2 * frame_times)
        clips.append(Clip(f"c{i}", wave, targets, "en", i % 3, None, "test"))
    return clips


def _faces(config: PMMTalkConfig) -> torch.Tensor:
    size = config.wav2lip.img_size
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))


def test_cached_forward_equals_the_full_model(tiny_config: PMMTalkConfig) -> None:
    torch.manual_seed(0)
    model = PMMTalk(tiny_config).eval()
    clip = _clips(1)[0]
    face = _faces(tiny_config)
    cached = cache_clips(model, [clip], lambda _: face, progress=False)[0]
    batch = crop_batch(model, [cached], cached.num_frames, np.random.default_rng(0))
    with torch.no_grad():
        fast = forward_cached(model, batch).blendshapes
        wave = torch.from_numpy(clip.wave)[None]
        full = model(wave, face[None], style=clip.style).blendshapes
    assert fast.shape == full.shape == (1, clip.targets.shape[0], 32)
    # The cached video is stored as 8-bit, so the image branch sees quantised frames.
    assert torch.allclose(fast, full, atol=5e-3)


def test_crop_keeps_latents_and_frames_in_step(tiny_config: PMMTalkConfig) -> None:
    torch.manual_seed(0)
    model = PMMTalk(tiny_config).eval()
    clip = _clips(1, seed=3)[0]
    cached = cache_clips(model, [clip], lambda _: _faces(tiny_config), progress=False)[0]
    batch = crop_batch(model, [cached], 15, np.random.default_rng(5))
    assert batch.targets.shape[1] == 15
    # Find where the crop starts in the targets, then check the latents start 5/3 as far in.
    start = next(
        k
        for k in range(0, cached.num_frames - 14, 3)
        if torch.equal(cached.targets[k : k + 15], batch.targets[0])
        and torch.equal(cached.text[k : k + 15], batch.text[0])
    )
    assert torch.equal(batch.latents[0, 0], cached.latents[start // 3 * 5])


def test_training_lowers_the_loss_and_resumes(tiny_config: PMMTalkConfig, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = PMMTalk(tiny_config)
    model.freeze_pretrained()
    clips = _clips(8)
    face = _faces(tiny_config)
    cached = cache_clips(model, clips, lambda _: face, progress=False)
    cfg = TrainConfig(
        epochs=6, batch_size=4, crop_seconds=1.0, lr=3e-3, warmup_steps=2, seed=1, threads=1
    )
    frozen_before = model.generator.state_dict()["audio_encoder.0.conv_block.0.weight"].clone()
    report = train(model, cached[:6], cached[6:], cfg, tmp_path, progress=False)
    history = report.history
    assert len(history) == 6
    assert history[-1]["train_total"] < 0.5 * history[0]["train_total"]
    assert history[-1]["val_ale"] < history[0]["val_ale"]
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4, 5, 6]
    # Frozen parts stay frozen.
    after = model.generator.state_dict()["audio_encoder.0.conv_block.0.weight"]
    assert torch.equal(frozen_before, after)

    # Resume: a longer schedule on the same directory fails loudly (settings differ) ...
    with pytest.raises(ValueError, match="different training settings"):
        train(model, cached[:6], cached[6:], TrainConfig(epochs=7), tmp_path, progress=False)
    # ... and the same settings continue after the last epoch, running nothing more.
    again = train(model, cached[:6], cached[6:], cfg, tmp_path, progress=False)
    assert again.epochs_run == 0
    assert again.history == history


def test_interrupted_run_continues_where_it_stopped(
    tiny_config: PMMTalkConfig, tmp_path: Path
) -> None:
    clips = _clips(6, seed=2)
    face = _faces(tiny_config)
    cfg = TrainConfig(
        epochs=3, batch_size=3, crop_seconds=1.0, lr=1e-3, warmup_steps=1, seed=4, threads=1
    )

    def fresh() -> PMMTalk:
        torch.manual_seed(0)
        model = PMMTalk(tiny_config)
        model.freeze_pretrained()
        return model

    model = fresh()
    cached = cache_clips(model, clips, lambda _: face, progress=False)
    straight = train(model, cached[:4], cached[4:], cfg, tmp_path / "straight", progress=False)

    class StopTrainingError(Exception):
        pass

    def stop_after_first(record: dict[str, object]) -> None:
        if record["epoch"] == 1:
            raise StopTrainingError

    model = fresh()
    with pytest.raises(StopTrainingError):
        train(
            model,
            cached[:4],
            cached[4:],
            cfg,
            tmp_path / "split",
            progress=False,
            on_epoch=stop_after_first,
        )
    model = fresh()
    resumed = train(model, cached[:4], cached[4:], cfg, tmp_path / "split", progress=False)
    assert resumed.epochs_run == 2
    assert [r["train_total"] for r in resumed.history] == pytest.approx(
        [r["train_total"] for r in straight.history], rel=1e-5
    )


def test_unknown_ablation_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown ablation"):
        TrainConfig(ablate=("lips",))

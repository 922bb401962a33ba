"""Shared fixtures: a tiny PMMTalk config, every module present, small enough for fast CPU tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from models.config import (
    AlignmentConfig,
    AudioEncoderConfig,
    DecoderConfig,
    ImageEncoderConfig,
    PMMTalkConfig,
    TextDecoderConfig,
    Wav2LipConfig,
)
from models.pmmtalk import PMMTalk


def make_tiny_config() -> PMMTalkConfig:
    return PMMTalkConfig(
        preset="tiny",
        audio=AudioEncoderConfig(
            conv_dim=(16,) * 7,
            hidden_size=32,
            num_layers=2,
            num_heads=2,
            intermediate_size=64,
            num_conv_pos_embeddings=8,
            num_conv_pos_embedding_groups=4,
            normalize_input=False,
        ),
        text=TextDecoderConfig(
            hidden_size=32,
            num_layers=2,
            num_heads=2,
            intermediate_size=64,
            num_conv_pos_embeddings=8,
            num_conv_pos_embedding_groups=4,
            vocab_size=12,
        ),
        wav2lip=Wav2LipConfig(
            img_size=48,
            face_stem_channels=4,
            face_stages=((8, 1), (8, 0), (8, 0), (16, 0)),
            embed_dim=16,
            audio_stages=((4, 0), (8, 0), (8, 0), (16, 0)),
            decoder_stages=((16, 0), (16, 0), (8, 0), (8, 0), (8, 0)),
            output_hidden=4,
        ),
        image=ImageEncoderConfig(
            cnn_channels=(8, 16), hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64
        ),
        alignment=AlignmentConfig(dim=16),
        decoder=DecoderConfig(
            modality_dim=16,
            d_model=32,
            num_layers=2,
            num_heads=2,
            intermediate_size=64,
            num_styles=3,
        ),
    )


@pytest.fixture(scope="session")
def tiny_config() -> PMMTalkConfig:
    return make_tiny_config()


@pytest.fixture(scope="session")
def tiny_model(tiny_config: PMMTalkConfig) -> PMMTalk:
    """A randomly initialised tiny network in eval mode; tests must not modify it."""
    torch.manual_seed(0)
    return PMMTalk(tiny_config).eval()


@pytest.fixture(scope="session", autouse=True)
def isolated_export_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Exports made during the tests go to a temporary cache, never the user's ~/.cache."""
    folder = tmp_path_factory.getbasetemp() / "export-cache"
    folder.mkdir(exist_ok=True)
    patch = pytest.MonkeyPatch()
    patch.setenv("PMMTALK_CACHE_DIR", str(folder))
    yield folder
    patch.undo()

from __future__ import annotations

import dataclasses

import pytest

from models.blendshapes import BLENDSHAPE_NAMES, num_frames
from models.config import PMMTalkConfig, Wav2LipConfig, preset_config


@pytest.mark.parametrize("name", ["paper", "lite"])
def test_presets_round_trip_through_json(name: str) -> None:
    cfg = preset_config(name)
    assert PMMTalkConfig.from_json(cfg.to_json()) == cfg
    assert cfg.preset == name


def test_paper_preset_sizes_follow_the_paper() -> None:
    cfg = preset_config("paper")
    assert cfg.audio.hidden_size == 1024 and cfg.audio.num_layers == 24
    assert cfg.text.num_layers == 24 and cfg.text.vocab_size == 3503
    assert cfg.wav2lip.img_size == 96
    assert cfg.decoder.style_dim == 64
    assert (cfg.loss.pos, cfg.loss.mot, cfg.loss.tem, cfg.loss.sem) == (1.0, 10.0, 1e-4, 1e-5)


def test_names_are_the_briefs_32_in_order() -> None:
    assert len(BLENDSHAPE_NAMES) == 32
    assert BLENDSHAPE_NAMES[:4] == ("jawForward", "jawRight", "jawLeft", "jawOpen")
    assert BLENDSHAPE_NAMES[-2:] == ("noseSneerLeft", "noseSneerRight")
    assert len(set(BLENDSHAPE_NAMES)) == 32


def test_unknown_fields_and_bad_sizes_are_rejected() -> None:
    data = preset_config("lite").to_dict()
    data["decoder"]["num_layer"] = 3
    with pytest.raises(ValueError, match="num_layer"):
        PMMTalkConfig.from_dict(data)
    with pytest.raises(ValueError, match="img_size"):
        dataclasses.replace(preset_config("lite"), wav2lip=Wav2LipConfig(img_size=64))
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("huge")


@pytest.mark.parametrize(
    ("samples", "rate", "expected"),
    [
        (0, 16000, 0),
        (1, 16000, 1),
        (533, 16000, 1),
        (534, 16000, 2),
        (16000, 16000, 30),
        (44100, 44100, 30),
        (44101, 44100, 31),
        (480000 * 60, 48000, 18000),
    ],
)
def test_frame_count_contract(samples: int, rate: int, expected: int) -> None:
    assert num_frames(samples, rate) == expected

"""ServerSettings: documented defaults, PMMTALK_ environment variables (nested sections too), and
refusal of settings the server cannot run with."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from models.streaming import StreamWindow
from server.settings import ServerSettings, StreamSettings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No PMMTALK_ variable from the shell running the tests leaks into them."""
    for name in list(os.environ):
        if name.upper().startswith("PMMTALK_"):
            monkeypatch.delenv(name)
    yield


def test_defaults() -> None:
    settings = ServerSettings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.model.backend == "auto"
    assert settings.model.checkpoint is None and settings.model.export_dir is None
    assert settings.stream.window() == StreamWindow(1.0, 0.4, 0.4)
    assert settings.batch.max_batch_size >= 1
    assert settings.limits.max_sessions == 32
    assert settings.limits.max_upload_bytes == 50_000_000
    assert settings.security.api_keys == ()
    assert settings.security.allowed_origins == ()


def test_top_level_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PMMTALK_HOST", "0.0.0.0")
    monkeypatch.setenv("PMMTALK_PORT", "9123")
    monkeypatch.setenv("PMMTALK_LOG_FORMAT", "json")
    settings = ServerSettings()
    assert (settings.host, settings.port, settings.log_format) == ("0.0.0.0", 9123, "json")


def test_nested_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PMMTALK_STREAM__HOP_S", "0.2")
    monkeypatch.setenv("PMMTALK_STREAM__LEFT_CONTEXT_S", "1.5")
    monkeypatch.setenv("PMMTALK_BATCH__MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("PMMTALK_LIMITS__MAX_SESSIONS", "3")
    monkeypatch.setenv("PMMTALK_MODEL__BACKEND", "onnx")
    monkeypatch.setenv("PMMTALK_MODEL__CHECKPOINT", "/models/pmmtalk")
    monkeypatch.setenv("PMMTALK_SECURITY__API_KEYS", '["k1", "k2"]')
    monkeypatch.setenv("PMMTALK_SECURITY__ALLOWED_ORIGINS", '["https://app.example"]')
    settings = ServerSettings()
    assert settings.stream.hop_s == 0.2
    assert settings.stream.window() == StreamWindow(1.5, 0.2, 0.4)
    assert settings.batch.max_batch_size == 16
    assert settings.limits.max_sessions == 3
    assert settings.limits.max_audio_s == 120.0  # the section's other fields keep defaults
    assert settings.model.backend == "onnx"
    assert settings.model.checkpoint == Path("/models/pmmtalk")
    assert settings.security.api_keys == ("k1", "k2")
    assert settings.security.allowed_origins == ("https://app.example",)


def test_arguments_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PMMTALK_PORT", "9123")
    assert ServerSettings(port=0).port == 0


def test_environment_is_read_when_settings_are_built_not_at_import(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = ServerSettings()
    monkeypatch.setenv("PMMTALK_LIMITS__MAX_SESSIONS", "5")
    assert ServerSettings().limits.max_sessions == 5
    assert before.limits.max_sessions == 32


def test_an_off_grid_window_names_the_field() -> None:
    with pytest.raises(ValidationError, match=r"hop_s must be a multiple of 0\.1"):
        StreamSettings(hop_s=0.25)
    with pytest.raises(ValidationError, match=r"lookahead_s must be a multiple of 0\.1"):
        ServerSettings(stream={"lookahead_s": 0.05})


def test_an_off_grid_window_from_the_environment_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PMMTALK_STREAM__HOP_S", "0.25")
    with pytest.raises(ValidationError, match="hop_s"):
        ServerSettings()


def test_a_zero_hop_is_refused() -> None:
    with pytest.raises(ValidationError, match="hop_s"):
        StreamSettings(hop_s=0.0)


@pytest.mark.parametrize(
    ("sections", "field"),
    [
        ({"port": 70_000}, "port"),
        ({"model": {"backend": "tpu"}}, "backend"),
        ({"log_format": "xml"}, "log_format"),
        ({"limits": {"max_sessions": 0}}, "max_sessions"),
        ({"limits": {"max_audio_s": 0}}, "max_audio_s"),
        ({"batch": {"max_batch_size": 0}}, "max_batch_size"),
        ({"stream": {"idle_timeout_s": -1}}, "idle_timeout_s"),
        # A window needs left context to carry per-frame work from its predecessor.
        ({"stream": {"left_context_s": 0.1}}, "left_context_s"),
        # A setting that no longer exists (windows of a session now run one after another).
        ({"stream": {"max_inflight_windows": 4}}, "max_inflight_windows"),
        # A misspelt setting inside a section is an error, not silently ignored.
        ({"limits": {"max_sesions": 1}}, "max_sesions"),
    ],
)
def test_invalid_values_name_the_field(sections: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        ServerSettings(**sections)  # type: ignore[arg-type]


def test_settings_are_frozen() -> None:
    settings = ServerSettings()
    with pytest.raises(ValidationError):
        settings.port = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        settings.limits.max_sessions = 1  # type: ignore[misc]

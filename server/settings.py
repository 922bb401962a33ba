"""Every server setting, in one pydantic-settings class.

Each field can be set by environment variable with the ``PMMTALK_`` prefix and ``__`` between a
section and its field (``PMMTALK_STREAM__HOP_S=0.4``, ``PMMTALK_LIMITS__MAX_SESSIONS=32``,
``PMMTALK_SECURITY__API_KEYS='["k1","k2"]'``) or by a `pmmtalk serve` flag. Settings are built by
the caller and passed to `server.app.create_app`; nothing reads the environment at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.streaming import StreamWindow


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelSettings(_Section):
    """Which model runs, and where."""

    checkpoint: Path | None = None
    """Checkpoint directory; None = the bundled default model (models/default)."""
    export_dir: Path | None = None
    """Run these exported ONNX files instead of a checkpoint (no PyTorch needed)."""
    backend: Literal["auto", "torch", "onnx", "tensorrt"] = "auto"
    """Runtime backend; auto picks the fastest one present (export.backends.select)."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    cache_dir: Path | None = None
    """Where exports are cached; None = $PMMTALK_CACHE_DIR or ~/.cache/pmmtalk."""
    face_cache_size: int = Field(64, ge=1)
    """Face encodings kept (least recently used dropped first); one costs ~0.4 MB (lite)."""
    silence_gate_dbfs: float | None = -50.0
    """Frames whose audio within 0.1 s is quieter than this (dB full scale) ease to neutral
    (pmmtalk/silence.py); None turns the gate off."""
    rig_profiles: Path | None = None
    """A TOML file of per-profile gain, offset and clamp for the rig profiles (docs/rigs.md);
    None = the defaults, which leave every value as the network gives it."""


class StreamSettings(_Section):
    """The streaming window (see models/streaming.py) and session behaviour."""

    left_context_s: float = StreamWindow.left_context_s
    """Seconds of audio already answered that each window re-reads, a multiple of 0.1, at least
    0.2."""
    hop_s: float = StreamWindow.hop_s
    """Seconds of new audio each window answers, a multiple of 0.1; frames come in groups of
    this, and a larger hop costs less compute per second of audio."""
    lookahead_s: float = StreamWindow.lookahead_s
    """Seconds of audio after a hop that its frames wait for, a multiple of 0.1."""
    idle_timeout_s: float = Field(30.0, gt=0)
    """A session with no message for this long, and no frames still owed to it, is closed
    (code 4408)."""
    start_timeout_s: float = Field(10.0, gt=0)
    """Seconds a new connection has to send its start message."""
    max_buffered_s: float = Field(4.0, gt=0)
    """Seconds of received audio a session may hold unanswered before the server stops reading
    from its socket (backpressure on a client that sends faster than real time); at least
    hop_s + lookahead_s."""
    interrupt_ease_s: float = Field(0.2, ge=0)
    """Seconds over which an interrupt eases the face from its last frame to neutral."""

    def window(self) -> StreamWindow:
        return StreamWindow(self.left_context_s, self.hop_s, self.lookahead_s)

    @model_validator(mode="after")
    def _window_valid(self) -> StreamSettings:
        window = self.window()  # raises ValueError naming the off-grid length
        if window.carry_frames < 1:
            # Each window takes the per-frame work of frames its predecessor already computed
            # (models/streaming.py, window_step): that needs some left context to carry.
            raise ValueError(
                f"left_context_s ({self.left_context_s} s) must be at least 0.2 s: a window "
                "carries its predecessor's per-frame work over the left context"
            )
        needed_s = window.hop_s + window.lookahead_s
        if self.max_buffered_s < needed_s - 1e-9:
            # The reader would stop reading before the next window's audio is in: a stall.
            raise ValueError(
                f"max_buffered_s ({self.max_buffered_s} s) must be at least hop_s + lookahead_s "
                f"({needed_s:g} s), the audio one window needs before it can be answered"
            )
        return self


class BatchSettings(_Section):
    """Micro-batching: every session's pending windows share one backend call."""

    max_batch_size: int = Field(8, ge=1)
    """Windows per backend call at most."""
    max_wait_ms: float = Field(5.0, ge=0)
    """How long the first window of a batch waits for others to join it."""


class LimitSettings(_Section):
    """Input limits; beyond each, a 4xx answer or a WebSocket error, before any compute."""

    max_upload_bytes: int = Field(50_000_000, ge=1)
    """Largest /animate or /faces upload, and largest inline face in a start message."""
    max_audio_s: float = Field(120.0, gt=0)
    """Longest audio for /animate and for one stream utterance."""
    max_image_pixels: int = Field(40_000_000, ge=1)
    """Largest photo, width x height, checked before it is decoded."""
    max_message_bytes: int = Field(4_000_000, ge=1)
    """Largest WebSocket message (an audio chunk of 5 s at 48 kHz stereo float is 1.9 MB)."""
    max_sessions: int = Field(32, ge=1)
    """Concurrent WebSocket sessions; one more is refused with close code 1013."""
    max_concurrent_requests: int = Field(8, ge=1)
    """Concurrent /animate and /faces requests; one more gets HTTP 503."""


class SecuritySettings(_Section):
    """API keys and the WebSocket Origin allow-list."""

    api_keys: tuple[str, ...] = ()
    """Accepted keys (Authorization: Bearer K, X-API-Key: K, or the query parameter
    ?api_key=K, meant for browser WebSockets); empty = no key needed. /healthz, /readyz and
    /metrics never need one."""
    allowed_origins: tuple[str, ...] = ()
    """Origins a browser WebSocket may come from; empty = any. Clients that send no Origin
    header (game engines, scripts) are always allowed."""


class ServerSettings(BaseSettings):
    """`pmmtalk serve` settings. Units are in the field names or the docstrings."""

    model_config = SettingsConfigDict(
        env_prefix="PMMTALK_",
        env_nested_delimiter="__",
        env_parse_none_str="null",  # PMMTALK_MODEL__SILENCE_GATE_DBFS=null turns the gate off
        frozen=True,
        extra="ignore",
    )

    host: str = "127.0.0.1"
    """Address to listen on; 0.0.0.0 for every interface (in a container, for example)."""
    port: int = Field(8000, ge=0, le=65535)
    """TCP port; 0 picks a free one."""
    log_format: Literal["text", "json"] = "text"
    """json: one JSON object per log line, with the session id where there is one."""
    model: ModelSettings = ModelSettings()
    stream: StreamSettings = StreamSettings()
    batch: BatchSettings = BatchSettings()
    limits: LimitSettings = LimitSettings()
    security: SecuritySettings = SecuritySettings()

    @model_validator(mode="after")
    def _gate_fits_the_window(self) -> ServerSettings:
        gate_radius_s = 0.1  # pmmtalk.silence.GATE_RADIUS_S
        stream = self.stream
        if (
            self.model.silence_gate_dbfs is not None
            and min(stream.left_context_s, stream.lookahead_s) < gate_radius_s
        ):
            raise ValueError(
                "the silence gate reads 0.1 s on each side of a frame, so stream.left_context_s "
                "and stream.lookahead_s must be at least 0.1 while model.silence_gate_dbfs is "
                "set (set it to null to turn the gate off)"
            )
        return self

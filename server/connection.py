"""One WebSocket stream: its reader, its worker, and every message it sends.

The reader receives messages, decodes audio and queues it; it stops reading while the session
holds more than ``max_buffered_s`` of unanswered audio, so a client sending faster than real time
is slowed by TCP, and nothing is dropped. The worker plans windows (`server.stream`), hands them
to the shared batcher and sends their frames in order; sending waits for a slow reader, which
in turn stops the worker and then the reader. Any `SessionError` ends the session with an
`Error` message and the matching close code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from export.backends.base import Carry, Identity
from models.blendshapes import SAMPLE_RATE_HZ
from pmmtalk.animate import COEFFICIENT_RANGE
from pmmtalk.errors import AudioError, InputError
from pmmtalk.rigs import DEFAULT_PROFILE, RigMapper
from pmmtalk.silence import frame_gains
from server.auth import key_accepted, origin_allowed, presented_key
from server.engine import EngineClosedError
from server.inputs import decode_base64_photo, identity_for, input_error_code, style_vector
from server.protocol import (
    ERROR_CLOSE_CODES,
    NUM_BLENDSHAPES,
    Done,
    End,
    Error,
    ErrorCode,
    Frames,
    Interrupt,
    Interrupted,
    ProtocolError,
    Ready,
    Start,
    encode_binary_frames,
    parse_client_message,
)
from server.state import ServerState
from server.stream import PcmDecoder, StreamBuffer, ease_to_neutral

logger = logging.getLogger(__name__)

FRAME_DECIMALS: Final = 6


class SessionError(Exception):
    """Ends a session with an `Error` message and the code's close code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message


class _ClientGoneError(Exception):
    """The client disconnected (or the socket broke); nothing more can be sent."""


@dataclass(frozen=True)
class _Event:
    kind: Literal["audio", "end", "interrupt"]
    generation: int
    samples: np.ndarray
    at: float
    frame_count: int | None = None  # for end: the utterance's frames, counted at its source


class StreamConnection:
    """Owns one accepted WebSocket from its start message to its close."""

    def __init__(self, websocket: WebSocket, state: ServerState) -> None:
        self.ws = websocket
        self.state = state
        self.session_id = uuid.uuid4().hex[:12]
        self.log = logging.LoggerAdapter(logger, {"session_id": self.session_id})
        settings = state.settings
        self._stream = settings.stream
        self._limits = settings.limits
        window = state.engine.window
        self._window = window
        self._max_buffered = round(self._stream.max_buffered_s * SAMPLE_RATE_HZ)
        self._max_samples = round(self._limits.max_audio_s * SAMPLE_RATE_HZ)
        self._events: deque[_Event] = deque()  # read, not yet handled by the worker
        self._has_events = asyncio.Event()
        self._queued_samples = 0
        self._room = asyncio.Event()
        self._room.set()
        self._send_lock = asyncio.Lock()
        self._generation = 0
        self._buffer = StreamBuffer(window, self._max_samples)
        self._sent = 0  # frames sent in the current utterance
        self._last_frame = np.zeros(NUM_BLENDSHAPES, dtype=np.float32)
        self._carry: Carry | None = None  # the last window's carried per-frame features
        self._binary = False
        self._rig: RigMapper = state.rigs.mapper(DEFAULT_PROFILE)  # the start message picks
        self._decoder: PcmDecoder | None = None
        self._identity: Identity | None = None
        self._style: np.ndarray | None = None
        self._closing = False
        self._utterances = 0  # finished by done or interrupted
        self._working = False  # the worker is handling an event (the client is owed frames)

    # --- lifecycle ------------------------------------------------------------------------

    async def serve(self) -> None:
        """Accept, check, run the session, and always clean up."""
        await self.ws.accept()
        outcome = "error"
        try:
            self._admit()
            self.state.sessions[self.session_id] = self
            self.state.metrics.active_sessions.set(len(self.state.sessions))
            self.log.info("stream opened")
            await self._open()
            await self._run()
            outcome = "completed"
        except SessionError as exc:
            outcome = "rejected" if exc.code in ("busy", "unauthorized") else exc.code
            self.state.metrics.errors.labels(exc.code).inc()
            self.log.info("stream closed: %s: %s", exc.code, exc.message)
            await self._fail(exc.code, exc.message)
        except _ClientGoneError:
            # Gone between utterances (after done or interrupted) is how a client finishes.
            idle = self._buffer.received == 0 and not self._events
            outcome = "completed" if idle and self._utterances else "disconnected"
        except Exception:
            self.log.exception("stream failed")
            self.state.metrics.errors.labels("internal").inc()
            await self._fail("internal", "the server failed on this stream; see its logs")
        finally:
            self.state.sessions.pop(self.session_id, None)
            self.state.metrics.active_sessions.set(len(self.state.sessions))
            self.state.metrics.streams.labels(outcome).inc()
            self.log.info("stream ended: %s", outcome)

    def _admit(self) -> None:
        security = self.state.settings.security
        key = presented_key(self.ws.headers, self.ws.query_params)
        if not key_accepted(security, key):
            raise SessionError(
                "unauthorized",
                "missing or wrong API key; send Authorization: Bearer KEY, X-API-Key: KEY "
                "or ?api_key=KEY",
            )
        origin = self.ws.headers.get("origin")
        if not origin_allowed(security, origin):
            raise SessionError("forbidden_origin", f"origin {origin!r} is not allowed")
        if self.state.shutting_down.is_set():
            raise SessionError("shutting_down", "the server is shutting down; reconnect later")
        if len(self.state.sessions) >= self._limits.max_sessions:
            raise SessionError(
                "busy",
                f"the server is at its limit of {self._limits.max_sessions} streams; retry later",
            )

    async def _open(self) -> None:
        """Wait for the start message and answer `Ready`."""
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            # that lands as the receive completes, and a cancelled session must end.
            async with asyncio.timeout(self._stream.start_timeout_s):
                message = await self.ws.receive()
        except TimeoutError:
            raise SessionError(
                "timeout", f"no start message within {self._stream.start_timeout_s:g} s"
            ) from None
        self._check_disconnect(message)
        self._check_size(message)
        text = message.get("text")
        if text is None:
            raise SessionError(
                "out_of_order", "the first message must be a JSON start message, not audio"
            )
        start = self._parse(text)
        if not isinstance(start, Start):
            raise SessionError("out_of_order", f"the first message must be start, got {start.type}")
        try:
            self._rig = self.state.rigs.mapper(start.profile)
            await asyncio.to_thread(self._rig.prepare)  # frames are mapped on the event loop
            photo = decode_base64_photo(start.face) if start.face is not None else None
            self._style = style_vector(self.state, start.style)
            self._identity, _ = await identity_for(self.state, start.face_id, photo)
        except InputError as exc:
            raise SessionError(input_error_code(exc), str(exc)) from None
        self._decoder = PcmDecoder(start.encoding, start.channels, start.sample_rate)
        self._binary = start.output == "binary"
        spec = self.state.engine.animator.backend.spec
        await self._send_json(
            Ready(
                session_id=self.session_id,
                fps=spec.config.fps,
                names=list(self._rig.names),
                model=spec.name,
                lookahead_s=self._window.lookahead_s,
                hop_s=self._window.hop_s,
            )
        )

    async def _run(self) -> None:
        reader = asyncio.create_task(self._read_loop(), name=f"read-{self.session_id}")
        worker = asyncio.create_task(self._work_loop(), name=f"work-{self.session_id}")
        try:
            done, _ = await asyncio.wait({reader, worker}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # re-raises SessionError / _ClientGoneError
        finally:
            for task in (reader, worker):
                task.cancel()
            for task in (reader, worker):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def shutdown(self) -> None:
        """Server shutdown: tell the client and close (code 1001)."""
        await self._fail("shutting_down", "the server is shutting down; reconnect to continue")

    # --- reading ----------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        idle_s = self._stream.idle_timeout_s
        while True:
            await self._room.wait()
            try:
                async with asyncio.timeout(idle_s):  # not wait_for: see _open
                    message = await self.ws.receive()
            except TimeoutError:
                if self._working or self._events:
                    continue  # the client waits for frames it is owed: it is not idle
                raise SessionError("timeout", f"no message for {idle_s:g} s; closing") from None
            self._check_disconnect(message)
            now = time.monotonic()
            self._check_size(message)
            data = message.get("bytes")
            text = message.get("text")
            if data is not None:
                assert self._decoder is not None
                try:
                    samples = self._decoder.decode(data)
                except AudioError as exc:
                    raise SessionError("bad_audio", str(exc)) from None
                self._enqueue(_Event("audio", self._generation, samples, now))
                continue
            parsed = self._parse(text or "")
            if isinstance(parsed, Start):
                raise SessionError("out_of_order", "start was already received on this stream")
            if isinstance(parsed, End):
                assert self._decoder is not None
                tail, frame_count = self._decoder.flush()
                self._enqueue(_Event("end", self._generation, tail, now, frame_count))
            elif isinstance(parsed, Interrupt):
                assert self._decoder is not None
                self._decoder.flush()
                self._generation += 1  # the worker drops everything queued before this
                self._enqueue(_Event("interrupt", self._generation, _EMPTY, now))

    def _enqueue(self, event: _Event) -> None:
        self._queued_samples += event.samples.size
        self._events.append(event)
        self._has_events.set()
        self._update_room()

    def _update_room(self) -> None:
        if self._queued_samples + self._buffer.unanswered_samples > self._max_buffered:
            self._room.clear()
        else:
            self._room.set()

    def _parse(self, text: str) -> Start | End | Interrupt:
        try:
            return parse_client_message(text)
        except ProtocolError as exc:
            raise SessionError(exc.code, str(exc)) from None

    def _check_size(self, message: Mapping[str, object]) -> None:
        data = message.get("bytes")
        text = message.get("text")
        size = len(data) if isinstance(data, bytes) else len(str(text or "").encode())
        if size > self._limits.max_message_bytes:
            raise SessionError(
                "too_large",
                f"a {size}-byte message is over the {self._limits.max_message_bytes}-byte limit; "
                "send audio in smaller chunks (and inline faces under the limit, or use face_id)",
            )

    @staticmethod
    def _check_disconnect(message: Mapping[str, object]) -> None:
        if message["type"] == "websocket.disconnect":
            raise _ClientGoneError

    # --- working ----------------------------------------------------------------------------

    async def _work_loop(self) -> None:
        while True:
            event = await self._next_event()
            self._working = True
            self._queued_samples -= event.samples.size
            try:
                if event.kind == "interrupt":
                    await self._interrupt()  # every interrupt is answered, even a stale one
                    continue
                if event.generation != self._generation:
                    continue  # audio or end sent before an interrupt
                self._push(event)
                # Audio queued behind this event joins it, so a client ahead of real time gets
                # several windows per backend call rather than one.
                while event.kind == "audio" and self._next_is_audio(event.generation):
                    event = await self._next_event()
                    self._queued_samples -= event.samples.size
                    self._push(event)
                if event.kind == "end":
                    self._buffer.finish(event.at, event.frame_count)
                await self._answer(event.generation)
                if event.kind == "end" and event.generation == self._generation:
                    await self._send_json(Done(frame_count=self._sent))
                    self._new_utterance()
            finally:
                self._working = False
                self._update_room()

    def _push(self, event: _Event) -> None:
        try:
            self._buffer.push(event.samples, event.at)
        except AudioError as exc:
            raise SessionError(input_error_code(exc), str(exc)) from None

    async def _next_event(self) -> _Event:
        await self._has_events.wait()
        event = self._events.popleft()
        if not self._events:
            self._has_events.clear()
        return event

    def _next_is_audio(self, generation: int) -> bool:
        return bool(
            self._events
            and self._events[0].kind == "audio"
            and self._events[0].generation == generation
        )

    async def _answer(self, generation: int) -> None:
        """Compute and send every window the buffer has ready, in order.

        One window at a time: each takes the per-frame features its predecessor carries out
        (`models.streaming.window_step`); the first window of an utterance takes none.
        """
        left = self._window.left_frames
        assert self._identity is not None and self._style is not None
        while plans := self._buffer.take(1):
            (plan,) = plans
            carry = self._carry if plan.index > 0 else None
            try:
                future = self.state.engine.submit_window(
                    plan.wave, self._identity, self._style, plan.frame_offset, carry
                )
            except EngineClosedError:
                raise SessionError("shutting_down", "the server is shutting down") from None
            try:
                result = await future
            except EngineClosedError:
                raise SessionError("shutting_down", "the server is shutting down") from None
            finally:
                future.cancel()  # no-op once finished; frees the batcher of an abandoned window
            if generation != self._generation:
                return  # interrupted: these frames belong to the abandoned utterance
            self._carry = result.carry
            frames = result.frames[left : left + plan.count]
            gate = self.state.engine.animator.silence_gate_dbfs
            if gate is not None:  # as Animator.animate_with gates the offline path
                gains = frame_gains(plan.wave, plan.wave_start, plan.first_frame, plan.count, gate)
                frames = frames * gains[:, None]
            frames = np.clip(frames, *COEFFICIENT_RANGE)
            await self._send_frames(plan.first_frame, frames)
            lag = time.monotonic() - plan.ready_at
            for _ in range(plan.count):
                self.state.metrics.frame_lag_seconds.observe(lag)
            self._update_room()

    async def _interrupt(self) -> None:
        ease = ease_to_neutral(self._last_frame, round(self._stream.interrupt_ease_s * 30))
        if self._sent and len(ease):
            await self._send_frames(self._sent, ease)
        await self._send_json(Interrupted(frame_count=self._sent))
        self._new_utterance()

    def _new_utterance(self) -> None:
        self._utterances += 1
        self._buffer = StreamBuffer(self._window, self._max_samples)
        self._sent = 0
        self._last_frame = np.zeros(NUM_BLENDSHAPES, dtype=np.float32)
        self._carry = None

    # --- sending ----------------------------------------------------------------------------

    async def _send_frames(self, start_index: int, frames: np.ndarray) -> None:
        """Send frames (n, 32) through the session's rig profile; ``_last_frame`` keeps the 32
        ARKit values, so an interrupt's ease to neutral is mapped like any other frame."""
        out = self._rig(frames)
        if self._binary:
            await self._send_bytes(encode_binary_frames(start_index, out, len(self._rig.names)))
        else:
            rows = np.round(out.astype(np.float64), FRAME_DECIMALS).tolist()
            await self._send_json(Frames(start_index=start_index, frames=rows))
        self._sent = start_index + len(frames)
        if len(frames):
            self._last_frame = np.asarray(frames[-1], dtype=np.float32)

    async def _send_json(self, message: Ready | Frames | Done | Interrupted | Error) -> None:
        await self._send(message.model_dump_json(), None)

    async def _send_bytes(self, payload: bytes) -> None:
        await self._send(None, payload)

    async def _send(self, text: str | None, payload: bytes | None) -> None:
        async with self._send_lock:
            if self._closing or self.ws.application_state != WebSocketState.CONNECTED:
                raise _ClientGoneError
            try:
                if text is not None:
                    await self.ws.send_text(text)
                else:
                    await self.ws.send_bytes(payload or b"")
            except (WebSocketDisconnect, RuntimeError, OSError):
                raise _ClientGoneError from None

    async def _fail(self, code: ErrorCode, message: str) -> None:
        """Send `Error` and close with the code's close code; quiet if the client is gone."""
        with contextlib.suppress(_ClientGoneError):
            await self._send_json(Error(code=code, message=message))
        async with self._send_lock:
            if self._closing:
                return
            self._closing = True
            with contextlib.suppress(Exception):
                await self.ws.close(ERROR_CLOSE_CODES[code], reason=_close_reason(message))


_EMPTY: Final = np.zeros(0, dtype=np.float32)
CLOSE_REASON_BYTES: Final = 120
"""A close frame's reason may hold 123 bytes of UTF-8 (RFC 6455 section 5.5)."""


def _close_reason(message: str) -> str:
    return message.encode()[:CLOSE_REASON_BYTES].decode("utf-8", "ignore")

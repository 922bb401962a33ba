"""The Python client of PMMTalk Server: ``POST /animate`` (httpx) and ``WS /stream`` (websockets).

Every message is a model of `server.protocol`, the module the server itself uses, so client and
server cannot drift; nothing else of the server (and no PyTorch) is imported. Connection refusals
and "busy" answers (HTTP 503, stream close code 1013) are retried with exponential backoff a
bounded number of times; other errors are raised at once as `ServerError` with the server's code
and message. docs/clients.md has a walk-through.

    async with PMMTalkClient("http://127.0.0.1:8000") as client:
        clip = await client.animate("speech.wav")                 # AnimateResponse
        result = await client.stream_file("speech.wav")           # real-time paced stream
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, TextIO, overload

import httpx
import numpy as np
import soundfile as sf
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from clients.defaults import (
    DEFAULT_BACKOFF_S,
    DEFAULT_CHUNK_MS,
    DEFAULT_RETRIES,
    DEFAULT_URL,
    SERVER_URL_ENV,
)
from clients.pacing import SendClock, paced_chunks
from server.protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_TRY_AGAIN_LATER,
    NUM_BLENDSHAPES,
    AnimateResponse,
    Done,
    End,
    Error,
    ErrorBody,
    FaceResponse,
    Frames,
    Interrupted,
    OutputFormat,
    Ready,
    Start,
    decode_binary_frames,
    parse_server_message,
)

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S: Final = 120.0  # one HTTP request, or one wait for the next stream message
MAX_STREAM_CHANNELS: Final = 8  # what `start` accepts; wider files are mixed to mono here
MIN_RATE_HZ: Final = 8_000
MAX_RATE_HZ: Final = 192_000
WS_MAX_MESSAGE_BYTES: Final = 1 << 24  # frames messages are a few kB; this only bounds a fault

# Errors that say "not now" rather than "never": another attempt may succeed.
_RETRY_ERROR_CODES: Final = frozenset({"busy", "shutting_down"})
_RETRY_CLOSE_CODES: Final = frozenset({CLOSE_TRY_AGAIN_LATER, CLOSE_GOING_AWAY})

EXIT_SERVER: Final = 1  # unreachable, busy after retries, a fault on the server side
EXIT_INPUT: Final = 2  # the user's input: a file, a flag, or a 4xx answer


# --- errors -----------------------------------------------------------------------------------


class ClientError(Exception):
    """Anything that stops a request, with a message for people and a process exit code."""

    exit_code: int = EXIT_SERVER


class UserInputError(ClientError):
    """Something the user gave cannot be used: a file (audio, photo, output), a URL, an option."""

    exit_code = EXIT_INPUT


class ServerError(ClientError):
    """The server answered with an error. ``code`` is its `server.protocol.ErrorCode`, or
    ``http_error`` for an HTTP answer without the server's error body (a proxy's page, say),
    or ``closed`` for a stream closed without an error message; ``status`` is the HTTP status,
    None on a stream."""

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        where = f"answered HTTP {status}" if status is not None else "ended the stream with"
        super().__init__(f"the server {where} {code}: {message}")
        self.code = code
        self.server_message = message
        self.status = status
        if status is not None:
            client_mistake = 400 <= status < 500
        else:  # on a stream, every code but these names something the client sent
            client_mistake = code not in ("internal", "shutting_down", "busy", "closed")
        self.exit_code = EXIT_INPUT if client_mistake else EXIT_SERVER


class ServerUnavailableError(ClientError):
    """The server could not be reached, or stayed busy, through every retry."""


class ContractError(ClientError):
    """The server broke the streaming contract (a gap, a repeat, a wrong frame count)."""


# --- settings and results ---------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and how patiently, to retry a refused connection or a busy server."""

    retries: int = DEFAULT_RETRIES
    """Further attempts after the first (0: fail at the first refusal)."""
    backoff_s: float = DEFAULT_BACKOFF_S
    """Wait before the first retry, in seconds; each later wait doubles, up to `max_backoff_s`."""
    max_backoff_s: float = 8.0

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError(f"retry settings must not be negative: {self}")

    def delay_s(self, retry: int) -> float:
        """The wait before retry number ``retry`` (0 for the first)."""
        return float(min(self.max_backoff_s, self.backoff_s * 2.0**retry))


@dataclass(frozen=True)
class StreamAudio:
    """Audio ready to stream: ``pcm`` is (n, channels) int16 at ``sample_rate`` Hz."""

    pcm: np.ndarray
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / self.sample_rate


@dataclass(frozen=True)
class PcmSource:
    """What a stream sends: int16 chunks of shape (n, channels) at ``sample_rate`` Hz, already
    paced (a microphone, `paced_chunks`) or as fast as they come."""

    sample_rate: int
    channels: int
    chunks: AsyncIterable[np.ndarray]


@dataclass(frozen=True)
class FrameBatch:
    """One ``frames`` message: frames ``start_index ..`` as an (n, channels) float32 array
    (channels: ``len(ready.names)``, 32 by default), when it arrived (`time.monotonic`
    seconds), and each frame's lag in seconds (see clients.pacing)."""

    start_index: int
    frames: np.ndarray
    received_s: float
    lag_s: np.ndarray

    @property
    def stop_index(self) -> int:
        return self.start_index + len(self.frames)


@dataclass(frozen=True)
class StreamResult:
    """A finished utterance: every frame (frame_count, channels) in order, and its lag in s."""

    ready: Ready
    frames: np.ndarray
    lag_s: np.ndarray
    elapsed_s: float  # first audio sent -> done received

    @property
    def frame_count(self) -> int:
        return len(self.frames)

    def lag_percentile_ms(self, q: float) -> float:
        """The ``q``-th percentile of frame lag, in milliseconds (NaN with no frames)."""
        finite = self.lag_s[np.isfinite(self.lag_s)]
        return float(np.percentile(finite, q) * 1000) if finite.size else math.nan


def expected_frame_count(sample_frames: int, sample_rate: int, fps: int = 30) -> int:
    """The protocol's frame count: ``ceil(n * fps / rate)`` for ``n`` sample frames."""
    return -(-sample_frames * fps // sample_rate)


# --- files ------------------------------------------------------------------------------------


def _read_bytes(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise UserInputError(f"{what} file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise UserInputError(f"{what} path {str(path)!r} is a folder; give a file") from None
    except OSError as exc:
        raise UserInputError(f"cannot read {what} file {str(path)!r}: {exc.strerror}") from None


def read_audio(path: str | Path) -> StreamAudio:
    """Any file libsndfile reads, as int16 at its own rate (the server resamples); files with
    more channels than a stream takes are mixed to mono."""
    data = _read_bytes(path, "audio")
    try:
        pcm, rate = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        why = getattr(exc, "error_string", None) or str(exc)
        raise UserInputError(
            f"cannot read {str(path)!r} as audio ({why}); give a WAV, FLAC, OGG, MP3 or another "
            "file libsndfile reads"
        ) from None
    if len(pcm) == 0:
        raise UserInputError(f"{str(path)!r} holds no audio samples")
    if not MIN_RATE_HZ <= rate <= MAX_RATE_HZ:
        raise UserInputError(
            f"{str(path)!r} is sampled at {rate} Hz; a stream takes {MIN_RATE_HZ} to "
            f"{MAX_RATE_HZ} Hz, so resample it (or use `animate`, which takes any rate)"
        )
    if pcm.shape[1] > MAX_STREAM_CHANNELS:
        pcm = np.round(pcm.mean(axis=1, keepdims=True)).astype(np.int16)
    return StreamAudio(np.ascontiguousarray(pcm), int(rate))


def write_csv(frames: np.ndarray, names: list[str], fps: int, handle: TextIO) -> None:
    """The server's CSV layout: a ``frame,time_s,<names>`` header, then per frame its index,
    ``i / fps`` and the values, each with 6 decimals (rows end with CRLF, as `csv` writes)."""
    writer = csv.writer(handle)
    writer.writerow(["frame", "time_s", *names])
    for index, row in enumerate(frames.tolist()):
        writer.writerow([index, f"{index / fps:.6f}", *(f"{v:.6f}" for v in row)])


def write_frames(
    path: str | Path, frames: np.ndarray, names: list[str], fps: int, document: Mapping[str, Any]
) -> Path:
    """Write (frame_count, channels) frames by suffix: ``.csv`` as the server writes it,
    ``.json`` as ``document`` (which should hold the frames)."""
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise UserInputError(f"cannot write {out.name!r}: give an output ending in .json or .csv")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".csv":
            with out.open("w", newline="") as handle:
                write_csv(frames, names, fps, handle)
        else:
            out.write_text(json.dumps(document) + "\n")
    except OSError as exc:
        raise UserInputError(f"cannot write {str(out)!r}: {exc.strerror}") from None
    return out


def file_source(
    audio: StreamAudio, *, realtime: bool = True, chunk_ms: float = DEFAULT_CHUNK_MS
) -> PcmSource:
    """Stream a decoded file in ``chunk_ms`` chunks, at real-time pace or as fast as allowed."""
    if not chunk_ms > 0:
        raise UserInputError(f"the chunk length must be above 0 ms, got {chunk_ms}")
    chunk_samples = max(1, round(audio.sample_rate * chunk_ms / 1000))
    chunks = paced_chunks(audio.pcm, audio.sample_rate, chunk_samples, realtime=realtime)
    return PcmSource(audio.sample_rate, audio.pcm.shape[1], chunks)


# --- the client -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Refusal:
    """A failed attempt whose cause may pass: the server was busy (or unreachable)."""

    reason: str
    busy: bool = True


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _ws_url(base: str) -> str:
    url = httpx.URL(base)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}[url.scheme]
    return str(url.copy_with(scheme=scheme, path=url.path.rstrip("/") + "/stream"))


def _http_url(base: str) -> str:
    try:
        url = httpx.URL(base)
    except httpx.InvalidURL as exc:
        raise UserInputError(f"bad server URL {base!r}: {exc}") from None
    schemes = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
    if url.scheme not in schemes or not url.host:
        raise UserInputError(f"bad server URL {base!r}: give it as http://HOST:PORT (or https://)")
    return str(url.copy_with(scheme=schemes[url.scheme])).rstrip("/")


def _error_from_response(response: httpx.Response) -> ServerError:
    try:
        error = ErrorBody.model_validate_json(response.content).error
        return ServerError(error.code, error.message, status=response.status_code)
    except ValidationError:
        # Not this server's error shape: a proxy's page, or something that is not PMMTalk.
        text = " ".join(response.text.split())[:200] or response.reason_phrase
        return ServerError("http_error", text, status=response.status_code)


ServerEvent = Ready | Frames | Done | Interrupted | Error | tuple[int, np.ndarray]
"""A parsed server message; a binary frames message is ``(start_index, frames)``."""


def _parse(raw: str | bytes, width: int = NUM_BLENDSHAPES) -> ServerEvent:
    """One server message; ``width`` is the number of channels per frame (``ready.names``)."""
    if isinstance(raw, bytes):
        try:
            return decode_binary_frames(raw, width)
        except ValueError as exc:
            raise ContractError(f"the server sent malformed binary frames: {exc}") from None
    try:
        return parse_server_message(raw)
    except ValidationError as exc:
        raise ContractError(f"the server sent a message this client cannot read: {exc}") from None


class PMMTalkClient:
    """One server: ``async with PMMTalkClient(url, api_key=...) as client: ...``.

    ``on_retry`` receives a line for each retry (the CLI prints them); they are also logged.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        retry: RetryPolicy | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self.url = _http_url(url)
        self.ws_url = _ws_url(self.url)
        self.retry = retry or RetryPolicy()
        self.timeout_s = timeout_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._on_retry = on_retry
        self._http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> PMMTalkClient:
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self._headers, timeout=self.timeout_s
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _wait_to_retry(self, retry: int, refusal: _Refusal) -> None:
        """Sleep before retry ``retry``, or raise once the policy's retries are spent."""
        if retry >= self.retry.retries:
            tries = self.retry.retries + 1
            hint = (
                "try again later, or raise --retries"
                if refusal.busy
                else f"is a PMMTalk server running at {self.url}? (--server, ${SERVER_URL_ENV})"
            )
            raise ServerUnavailableError(
                f"{refusal.reason}; gave up after {tries} attempt{'s' if tries > 1 else ''}: {hint}"
            )
        delay_s = self.retry.delay_s(retry)
        line = f"{refusal.reason}; retry {retry + 1} of {self.retry.retries} in {delay_s:.1f} s"
        logger.info("%s", line)
        if self._on_retry is not None:
            self._on_retry(line)
        await asyncio.sleep(delay_s)

    # --- REST ---------------------------------------------------------------------------------

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if self._http is None:
            raise RuntimeError("use the client as `async with PMMTalkClient(...) as client`")
        retry = 0
        while True:
            try:
                response = await self._http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                refusal = _Refusal(f"cannot connect to {self.url} ({_describe(exc)})", busy=False)
            except httpx.TimeoutException:
                raise ServerUnavailableError(
                    f"{self.url}{path} gave no answer within {self.timeout_s:g} s"
                ) from None
            except httpx.TransportError as exc:
                raise ServerUnavailableError(f"{self.url}{path} failed: {exc}") from None
            else:
                if response.status_code < 400:
                    return response
                error = _error_from_response(response)
                if response.status_code != 503:
                    raise error
                refusal = _Refusal(f"server busy ({error.code}: {error.server_message})")
            await self._wait_to_retry(retry, refusal)
            retry += 1

    async def info(self) -> dict[str, Any]:
        """``GET /info``: the model, names, stream window and limits."""
        body: dict[str, Any] = (await self._request("GET", "/info")).json()
        return body

    async def register_face(self, photo: str | Path | bytes) -> str:
        """``POST /faces``: upload a photo once; returns its ``face_id``."""
        data, name = _upload(photo, "face")
        response = await self._request("POST", "/faces", files={"face": (name, data)})
        return FaceResponse.model_validate_json(response.content).face_id

    @overload
    async def animate(
        self,
        audio: str | Path | bytes,
        *,
        face: str | Path | bytes | None = ...,
        face_id: str | None = ...,
        style: int | None = ...,
        fmt: Literal["json"] = ...,
    ) -> AnimateResponse: ...

    @overload
    async def animate(
        self,
        audio: str | Path | bytes,
        *,
        face: str | Path | bytes | None = ...,
        face_id: str | None = ...,
        style: int | None = ...,
        fmt: Literal["csv"],
    ) -> str: ...

    async def animate(
        self,
        audio: str | Path | bytes,
        *,
        face: str | Path | bytes | None = None,
        face_id: str | None = None,
        style: int | None = None,
        fmt: Literal["json", "csv"] = "json",
    ) -> AnimateResponse | str:
        """``POST /animate``: a whole clip (a path or the file's bytes) to frames.

        ``fmt="json"`` gives the parsed `AnimateResponse`; ``fmt="csv"`` the server's CSV text.
        """
        if face is not None and face_id is not None:
            raise UserInputError("give a face photo or a face id, not both")
        data, name = _upload(audio, "audio")
        files = {"audio": (name, data)}
        if face is not None:
            photo, photo_name = _upload(face, "face")
            files["face"] = (photo_name, photo)
        form: dict[str, str] = {"format": fmt}
        if face_id is not None:
            form["face_id"] = face_id
        if style is not None:
            form["style"] = str(style)
        response = await self._request("POST", "/animate", files=files, data=form)
        if fmt == "csv":
            return response.text
        return AnimateResponse.model_validate_json(response.content)

    # --- WebSocket ----------------------------------------------------------------------------

    async def _open_stream(self, start: Start) -> tuple[ClientConnection, Ready]:
        """Connect and send ``start`` until ``ready`` comes back, retrying refusals and busy."""
        retry = 0
        while True:
            outcome = await self._try_open(start)
            if not isinstance(outcome, _Refusal):
                return outcome
            await self._wait_to_retry(retry, outcome)
            retry += 1

    async def _try_open(self, start: Start) -> tuple[ClientConnection, Ready] | _Refusal:
        """One attempt: the open stream, or why it may be worth another attempt."""
        try:
            ws = await connect(
                self.ws_url,
                additional_headers=self._headers,
                open_timeout=self.timeout_s,
                max_size=WS_MAX_MESSAGE_BYTES,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status == 503:
                return _Refusal(f"server busy (HTTP {status} on {self.ws_url})")
            raise ServerError(
                "http_error", f"{self.ws_url} refused the WebSocket upgrade", status=status
            ) from None
        except InvalidURI as exc:
            raise UserInputError(f"bad server URL: {exc}") from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            return _Refusal(f"cannot connect to {self.ws_url} ({_describe(exc)})", busy=False)
        try:
            outcome = await self._start(ws, start)
        except BaseException:
            await ws.close()
            raise
        if isinstance(outcome, _Refusal):
            await ws.close()
            return outcome
        return ws, outcome

    async def _start(self, ws: ClientConnection, start: Start) -> Ready | _Refusal:
        """Send ``start``: the ``ready`` answer, or why another attempt may succeed."""
        # The server checks a connection only after accepting it, so a refusal (busy, a bad
        # key) comes as an `error` message and a close, which may beat our start to the wire.
        with contextlib.suppress(ConnectionClosed):
            # Only the fields given: a server older than this protocol module then sees no
            # field it does not know (a default such as a newer field's is left to the server).
            await ws.send(start.model_dump_json(exclude_unset=True, exclude_none=True))
        try:
            message = _parse(await asyncio.wait_for(ws.recv(), self.timeout_s))
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            if code in _RETRY_CLOSE_CODES:
                return _Refusal(f"server busy (stream closed with code {code})")
            raise ServerError("closed", f"the stream closed (code {code}) before ready") from None
        except TimeoutError:
            raise ServerUnavailableError(
                f"no answer to start from {self.ws_url} within {self.timeout_s:g} s"
            ) from None
        if isinstance(message, Ready):
            return message
        if isinstance(message, Error):
            if message.code in _RETRY_ERROR_CODES:
                return _Refusal(f"server busy ({message.code}: {message.message})")
            raise ServerError(message.code, message.message)
        raise ContractError(f"expected ready after start, got {message!r}")

    async def stream(
        self,
        source: PcmSource,
        *,
        output: OutputFormat = "json",
        face_id: str | None = None,
        style: int | None = None,
        start_fields: Mapping[str, Any] | None = None,
        on_ready: Callable[[Ready], None] | None = None,
    ) -> AsyncGenerator[FrameBatch, None]:
        """Stream one utterance and yield its frames as they arrive.

        ``source`` is sent as pcm_s16le at its own rate; after its last chunk the client sends
        ``end`` and the generator ends at ``done``, having checked the contract: frames
        ``0 .. frame_count - 1`` with no gap, and ``frame_count = ceil(n * fps / rate)``.
        ``start_fields`` adds or overrides fields of the ``start`` message (any field
        `server.protocol.Start` knows); ``on_ready`` is called with the ``ready`` message.
        """
        start = _start_message(source, output, face_id, style, start_fields)
        ws, ready = await self._open_stream(start)
        try:
            if on_ready is not None:
                on_ready(ready)
            clock = SendClock(source.sample_rate, ready)
            sender = asyncio.create_task(_send_audio(ws, source, clock))
            try:
                async with contextlib.aclosing(self._receive(ws, ready, clock, sender)) as batches:
                    async for batch in batches:
                        yield batch
                await sender
            finally:
                # Stop the sender if frames stopped first (an error, or a caller that broke
                # off), and collect its outcome so that no failure goes unretrieved.
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
        finally:
            await ws.close()

    async def _receive(
        self, ws: ClientConnection, ready: Ready, clock: SendClock, sender: asyncio.Task[None]
    ) -> AsyncGenerator[FrameBatch, None]:
        width = len(ready.names)
        next_index = 0
        while True:
            try:
                raw = await asyncio.wait_for(ws.recv(), self.timeout_s)
            except TimeoutError:
                raise ServerUnavailableError(
                    f"the stream sent nothing for {self.timeout_s:g} s"
                ) from None
            except ConnectionClosed as exc:
                failure = sender.exception() if sender.done() and not sender.cancelled() else None
                if failure is not None:
                    raise failure from None  # the audio source failed, and closed the socket
                code = exc.rcvd.code if exc.rcvd is not None else None
                raise ServerUnavailableError(
                    f"the stream closed (code {code}) before done; {next_index} frames came"
                ) from None
            received_s = time.monotonic()
            message = _parse(raw, width)
            if isinstance(message, tuple):
                start_index, block = message
            elif isinstance(message, Frames):
                start_index = message.start_index
                block = np.asarray(message.frames, dtype=np.float32).reshape(-1, width)
            elif isinstance(message, Done):
                _check_done(message, next_index, clock)
                return
            elif isinstance(message, Error):
                raise ServerError(message.code, message.message)
            else:
                raise ContractError(f"unexpected {message.type} message during a stream")
            if start_index != next_index:
                raise ContractError(
                    f"frames came from index {start_index}, expected {next_index} (a gap or repeat)"
                )
            lags = np.array(
                [clock.lag_s(i, received_s) for i in range(start_index, start_index + len(block))]
            )
            next_index += len(block)
            yield FrameBatch(start_index, block, received_s, lags)

    async def stream_file(
        self,
        path: str | Path,
        *,
        realtime: bool = True,
        chunk_ms: float = DEFAULT_CHUNK_MS,
        output: OutputFormat = "json",
        face_id: str | None = None,
        style: int | None = None,
        start_fields: Mapping[str, Any] | None = None,
        on_ready: Callable[[Ready], None] | None = None,
        on_batch: Callable[[FrameBatch], None] | None = None,
    ) -> StreamResult:
        """Stream a file (read by `read_audio`) and collect its frames; ``on_batch`` sees each
        batch as it arrives (to print lag or drive a rig)."""
        audio = read_audio(path)
        return await self.stream_source(
            file_source(audio, realtime=realtime, chunk_ms=chunk_ms),
            output=output,
            face_id=face_id,
            style=style,
            start_fields=start_fields,
            on_ready=on_ready,
            on_batch=on_batch,
        )

    async def stream_source(
        self,
        source: PcmSource,
        *,
        output: OutputFormat = "json",
        face_id: str | None = None,
        style: int | None = None,
        start_fields: Mapping[str, Any] | None = None,
        on_ready: Callable[[Ready], None] | None = None,
        on_batch: Callable[[FrameBatch], None] | None = None,
    ) -> StreamResult:
        """`stream` collected into a `StreamResult`, with a per-batch callback."""
        readies: list[Ready] = []

        def ready_seen(ready: Ready) -> None:
            readies.append(ready)
            if on_ready is not None:
                on_ready(ready)

        batches: list[FrameBatch] = []
        started_s = time.monotonic()
        stream = self.stream(
            source,
            output=output,
            face_id=face_id,
            style=style,
            start_fields=start_fields,
            on_ready=ready_seen,
        )
        async with contextlib.aclosing(stream):
            async for batch in stream:
                batches.append(batch)
                if on_batch is not None:
                    on_batch(batch)
        frames = (
            np.concatenate([b.frames for b in batches])
            if batches
            else np.zeros((0, len(readies[0].names)), dtype=np.float32)
        )
        lags = np.concatenate([b.lag_s for b in batches]) if batches else np.zeros(0)
        return StreamResult(readies[0], frames, lags, time.monotonic() - started_s)


def _upload(item: str | Path | bytes, what: str) -> tuple[bytes, str]:
    if isinstance(item, bytes):
        return item, what
    return _read_bytes(item, what), Path(item).name


def _start_message(
    source: PcmSource,
    output: OutputFormat,
    face_id: str | None,
    style: int | None,
    start_fields: Mapping[str, Any] | None,
) -> Start:
    fields: dict[str, Any] = {
        "type": "start",
        "sample_rate": source.sample_rate,
        "encoding": "pcm_s16le",
        "channels": source.channels,
        "output": output,
        "face_id": face_id,
        "style": style,
    }
    fields.update(start_fields or {})
    try:
        return Start.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "start"
        raise UserInputError(
            f"cannot build the start message ({where}: {first.get('msg', 'invalid')})"
        ) from None


async def _send_audio(ws: ClientConnection, source: PcmSource, clock: SendClock) -> None:
    """Send every chunk as pcm_s16le, then ``end``; recording when each left."""
    try:
        async for chunk in source.chunks:
            pcm = np.ascontiguousarray(chunk, dtype="<i2")
            await ws.send(pcm.tobytes())
            clock.sent(len(pcm))
        await ws.send(End().model_dump_json())
        clock.ended()
    except ConnectionClosed:
        return  # the receiver reads why (an error message, or the close code)
    except BaseException:
        # The receiver would wait on frames that cannot come: closing ends its wait.
        await ws.close()
        raise


def _check_done(done: Done, received: int, clock: SendClock) -> None:
    expected = expected_frame_count(clock.samples_sent, clock.sample_rate)
    if done.frame_count != received or done.frame_count != expected:
        raise ContractError(
            f"done says {done.frame_count} frames; {received} came, and "
            f"{clock.samples_sent} samples at {clock.sample_rate} Hz make {expected}"
        )


# --- synchronous convenience ------------------------------------------------------------------


def animate_file(
    path: str | Path,
    url: str = DEFAULT_URL,
    *,
    api_key: str | None = None,
    retry: RetryPolicy | None = None,
    face: str | Path | None = None,
    face_id: str | None = None,
    style: int | None = None,
) -> AnimateResponse:
    """``POST /animate`` from synchronous code (runs its own event loop)."""

    async def go() -> AnimateResponse:
        async with PMMTalkClient(url, api_key=api_key, retry=retry) as client:
            return await client.animate(path, face=face, face_id=face_id, style=style)

    return asyncio.run(go())


def stream_file(
    path: str | Path,
    url: str = DEFAULT_URL,
    *,
    api_key: str | None = None,
    retry: RetryPolicy | None = None,
    realtime: bool = True,
    chunk_ms: float = DEFAULT_CHUNK_MS,
    output: OutputFormat = "json",
    on_batch: Callable[[FrameBatch], None] | None = None,
) -> StreamResult:
    """`PMMTalkClient.stream_file` from synchronous code (runs its own event loop)."""

    async def go() -> StreamResult:
        async with PMMTalkClient(url, api_key=api_key, retry=retry) as client:
            return await client.stream_file(
                path, realtime=realtime, chunk_ms=chunk_ms, output=output, on_batch=on_batch
            )

    return asyncio.run(go())

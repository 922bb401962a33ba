"""WS /stream under bad input, limits, keys, timeouts, disconnects, backpressure and shutdown.

Each refusal is checked on the wire: the exact `error` code, then the close code
`ERROR_CLOSE_CODES` gives it, and then a fresh session on the same server still streams speech
to its end, since one bad client must never hurt the others. The code under test is
server/connection.py (the session), server/auth.py (keys, origins) and server/run.py (uvicorn's
message cap and the graceful shutdown). Servers with special settings are shared by the tests
that need them, because each start costs a model load and warm-up.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect as connect_async
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from models.blendshapes import FPS, SAMPLE_RATE_HZ
from server.connection import StreamConnection
from server.protocol import (
    ERROR_CLOSE_CODES,
    Done,
    End,
    Error,
    ErrorCode,
    Frames,
    Interrupted,
    Ready,
    parse_server_message,
)
from tests.server.conftest import RunningServer, serve

TIMEOUT_S: Final = 30.0
"""Generous wait for any one server answer: the cores are shared with a training job."""
CHUNK_SAMPLES: Final = SAMPLE_RATE_HZ // 10  # 0.1 s per binary message
KEY: Final = "k1"
ALLOWED_ORIGIN: Final = "https://game.example"
GUARDED_MAX_MESSAGE_BYTES: Final = 64_000
GUARDED_MAX_AUDIO_S: Final = 2.0
GUARDED_MAX_SESSIONS: Final = 2
QUICK_TIMEOUT_S: Final = 0.5
BACKPRESSURE_BUFFERED_S: Final = 1.0
BLAST_S: Final = 10
"""Audio the fast sender blasts: ten times the buffer limit, and cheap enough to compute."""
HEALTH_CHECK_S: Final = 0.5

ServerMessage = Ready | Frames | Done | Interrupted | Error | bytes


# --- servers --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded() -> Iterator[RunningServer]:
    """Small limits, an API key and an Origin allow-list; every client here sends the key."""
    with serve(
        limits={
            "max_message_bytes": GUARDED_MAX_MESSAGE_BYTES,
            "max_audio_s": GUARDED_MAX_AUDIO_S,
            "max_sessions": GUARDED_MAX_SESSIONS,
        },
        security={"api_keys": [KEY], "allowed_origins": [ALLOWED_ORIGIN]},
    ) as running:
        yield running


@pytest.fixture(scope="module")
def impatient() -> Iterator[RunningServer]:
    """Half-second start and idle timeouts."""
    with serve(
        stream={"start_timeout_s": QUICK_TIMEOUT_S, "idle_timeout_s": QUICK_TIMEOUT_S}
    ) as running:
        yield running


@pytest.fixture(scope="module")
def one_second(speech: tuple[np.ndarray, int]) -> np.ndarray:
    samples, rate = speech
    assert rate == SAMPLE_RATE_HZ
    return samples[:SAMPLE_RATE_HZ]


# --- client helpers -------------------------------------------------------------------------


def start_message(**fields: Any) -> str:
    """A start message as raw JSON, so that invalid field values can be sent too."""
    message: dict[str, Any] = {"type": "start", "sample_rate": SAMPLE_RATE_HZ}
    message.update(fields)
    return json.dumps(message)


END: Final = End().model_dump_json()


def decode(message: str | bytes) -> ServerMessage:
    if isinstance(message, bytes):
        return message
    parsed = parse_server_message(message)
    assert not isinstance(parsed, Error) or parsed.code != "internal", parsed
    return parsed


def receive(ws: ClientConnection) -> ServerMessage:
    return decode(ws.recv(timeout=TIMEOUT_S))


def open_session(ws: ClientConnection, **start: Any) -> Ready:
    ws.send(start_message(**start))
    ready = receive(ws)
    assert isinstance(ready, Ready), ready
    return ready


def send_audio(ws: ClientConnection, samples: np.ndarray, chunk: int = CHUNK_SAMPLES) -> None:
    """int16 samples as pcm_s16le messages of ``chunk`` samples, as fast as the socket takes."""
    for at in range(0, len(samples), chunk):
        ws.send(samples[at : at + chunk].astype("<i2").tobytes())


def collect_until_done(ws: ClientConnection) -> tuple[list[int], Done]:
    """The index of every frame received, in arrival order, and the closing `Done`."""
    indices: list[int] = []
    while True:
        message = receive(ws)
        if isinstance(message, Done):
            return indices, message
        assert isinstance(message, Frames), message
        indices.extend(range(message.start_index, message.start_index + len(message.frames)))


def read_until_closed(ws: ClientConnection) -> tuple[list[ServerMessage], int]:
    """Every message until the server closes, and the close code it sent."""
    messages: list[ServerMessage] = []
    while True:
        try:
            messages.append(receive(ws))
        except ConnectionClosed as closed:
            assert closed.rcvd is not None, f"closed with no close frame after {messages}"
            return messages, closed.rcvd.code


def final_error(messages: list[ServerMessage], close_code: int, code: ErrorCode) -> Error:
    """The last message is an `Error` of ``code`` and the close code is the one it maps to."""
    assert messages, f"the server closed ({close_code}) without an error message"
    last = messages[-1]
    assert isinstance(last, Error), messages
    assert last.code == code, last
    assert last.message, "an error must say what was wrong"
    assert close_code == ERROR_CLOSE_CODES[code]
    return last


def expect_error(ws: ClientConnection, code: ErrorCode) -> Error:
    """The session ends with an `Error` of ``code`` and then that code's close code."""
    return final_error(*read_until_closed(ws), code)


def frames_expected(samples: int) -> int:
    return math.ceil(samples * FPS / SAMPLE_RATE_HZ)


def metrics(running: RunningServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """/metrics as {(sample name, labels): value}."""
    text = httpx.get(f"{running.http}/metrics", timeout=TIMEOUT_S).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def active_sessions(running: RunningServer) -> float:
    return metrics(running)[("pmmtalk_active_sessions", frozenset())]


def wait_for_active_sessions(running: RunningServer, count: int) -> None:
    """Poll the gauge: a session leaves it just after its close handshake, not before."""
    deadline = time.monotonic() + TIMEOUT_S
    while active_sessions(running) != count:
        assert time.monotonic() < deadline, f"active sessions never reached {count}"
        time.sleep(0.05)


def assert_serves(running: RunningServer, speech: np.ndarray, **connect_args: Any) -> None:
    """A fresh session streams speech to a complete, gap-free `Done`.

    Half a second is enough (two windows, so a window boundary is crossed) and keeps the many
    checks cheap.
    """
    snippet = speech[: round(HEALTH_CHECK_S * SAMPLE_RATE_HZ)]
    wait_for_active_sessions(running, 0)
    with connect(running.ws, open_timeout=TIMEOUT_S, **connect_args) as ws:
        open_session(ws)
        send_audio(ws, snippet)
        ws.send(END)
        indices, done = collect_until_done(ws)
    assert done.frame_count == frames_expected(len(snippet))
    assert indices == list(range(done.frame_count))


def grey_png_base64() -> str:
    """A flat grey 128x128 photo: decodable, but with no face in it."""
    buffer = io.BytesIO()
    Image.new("RGB", (128, 128), (128, 128, 128)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# --- 1. bad and out-of-order messages -------------------------------------------------------

SILENCE_CHUNK: Final = bytes(2 * CHUNK_SAMPLES)


@pytest.mark.parametrize(
    ("messages", "code"),
    [
        pytest.param([SILENCE_CHUNK], "out_of_order", id="audio-before-start"),
        pytest.param([END], "out_of_order", id="end-before-start"),
        pytest.param(['{"type": "start", "sample_rate": '], "bad_message", id="not-json"),
        pytest.param(["[1, 2, 3]"], "bad_message", id="json-not-an-object"),
        pytest.param(['{"type": "hello"}'], "bad_message", id="unknown-type"),
        pytest.param([start_message(encoding="mp3")], "bad_message", id="encoding-mp3"),
        pytest.param([start_message(channels=0)], "bad_message", id="zero-channels"),
        pytest.param([start_message(sample_rate=100)], "bad_message", id="rate-too-low"),
        pytest.param([start_message(output="xml")], "bad_message", id="output-xml"),
        pytest.param([start_message(volume=11)], "bad_message", id="unknown-field"),
        pytest.param([start_message(), start_message()], "out_of_order", id="second-start"),
        pytest.param([start_message(), "{oops"], "bad_message", id="garbage-after-start"),
    ],
)
def test_bad_messages_get_their_error_and_close_code(
    server: RunningServer, one_second: np.ndarray, messages: list[str | bytes], code: ErrorCode
) -> None:
    with connect(server.ws, open_timeout=TIMEOUT_S) as ws:
        for message in messages:
            ws.send(message)
        expect_error(ws, code)
    assert_serves(server, one_second)


def test_end_before_any_audio_is_an_empty_utterance(
    server: RunningServer, one_second: np.ndarray
) -> None:
    with connect(server.ws, open_timeout=TIMEOUT_S) as ws:
        open_session(ws)
        ws.send(END)
        assert receive(ws) == Done(frame_count=0)
        # The session stays usable: the next utterance is a normal one.
        send_audio(ws, one_second)
        ws.send(END)
        indices, done = collect_until_done(ws)
    assert done.frame_count == frames_expected(len(one_second))
    assert indices == list(range(done.frame_count))


# --- 2. bad audio ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_float_samples_are_bad_audio(
    server: RunningServer, one_second: np.ndarray, bad: float
) -> None:
    with connect(server.ws, open_timeout=TIMEOUT_S) as ws:
        open_session(ws, encoding="pcm_f32le")
        chunk = np.zeros(CHUNK_SAMPLES, dtype="<f4")
        ws.send(chunk.tobytes())  # a good chunk first: the error is about the bad one
        chunk[100] = bad
        ws.send(chunk.tobytes())
        error = expect_error(ws, "bad_audio")
    assert "NaN" in error.message or "infinite" in error.message
    assert_serves(server, one_second)


# --- 3. bad faces and styles ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "code"),
    [
        pytest.param({"face_id": "0123456789abcdef"}, "bad_face", id="unknown-face-id"),
        pytest.param({"face": "this is not base64!"}, "bad_face", id="face-not-base64"),
        pytest.param({"face": grey_png_base64()}, "bad_face", id="photo-without-face"),
        pytest.param(
            {"face": grey_png_base64(), "face_id": "0123456789abcdef"},
            "bad_face",
            id="face-and-face-id",
        ),
        pytest.param({"style": 999}, "bad_style", id="style-999"),
        pytest.param({"style": -1}, "bad_message", id="style-negative"),
    ],
)
def test_bad_face_or_style_is_refused_at_start(
    server: RunningServer, one_second: np.ndarray, start: dict[str, Any], code: ErrorCode
) -> None:
    with connect(server.ws, open_timeout=TIMEOUT_S) as ws:
        ws.send(start_message(**start))
        messages, close_code = read_until_closed(ws)
    # Refused before the session opened: no ready, no frames.
    assert len(messages) == 1, messages
    error = messages[0]
    assert isinstance(error, Error) and error.code == code, error
    assert close_code == ERROR_CLOSE_CODES[code]
    assert_serves(server, one_second)


# --- 4. oversize ----------------------------------------------------------------------------

GUARDED_HEADERS: Final = {"X-API-Key": KEY}


def guarded_connect(running: RunningServer, **args: Any) -> ClientConnection:
    args.setdefault("additional_headers", GUARDED_HEADERS)
    return connect(running.ws, open_timeout=TIMEOUT_S, **args)


def test_audio_message_over_the_size_limit_is_too_large(
    guarded: RunningServer, one_second: np.ndarray
) -> None:
    with guarded_connect(guarded) as ws:
        open_session(ws)
        ws.send(bytes(GUARDED_MAX_MESSAGE_BYTES + 2))  # 2 s of s16 silence, just over the limit
        error = expect_error(ws, "too_large")
    assert str(GUARDED_MAX_MESSAGE_BYTES) in error.message
    assert_serves(guarded, one_second, additional_headers=GUARDED_HEADERS)


def test_text_message_over_the_size_limit_is_too_large(
    guarded: RunningServer, one_second: np.ndarray
) -> None:
    with guarded_connect(guarded) as ws:
        open_session(ws)
        ws.send(json.dumps({"type": "end", "padding": "x" * GUARDED_MAX_MESSAGE_BYTES}))
        expect_error(ws, "too_large")
    assert_serves(guarded, one_second, additional_headers=GUARDED_HEADERS)


def test_start_message_over_the_size_limit_is_too_large(
    guarded: RunningServer, one_second: np.ndarray
) -> None:
    """An inline face makes the start message large; past the limit it is refused unread."""
    face = base64.b64encode(bytes(GUARDED_MAX_MESSAGE_BYTES)).decode()
    with guarded_connect(guarded) as ws:
        ws.send(start_message(face=face))
        messages, close_code = read_until_closed(ws)
    assert len(messages) == 1, messages  # no ready
    final_error(messages, close_code, "too_large")
    assert_serves(guarded, one_second, additional_headers=GUARDED_HEADERS)


def test_message_far_over_the_limit_is_closed_message_too_big(
    guarded: RunningServer, one_second: np.ndarray
) -> None:
    """Past uvicorn's own cap (a few times the limit) the socket layer refuses the message
    before the app sees it: no error message, but still close code 1009 and a healthy server."""
    with guarded_connect(guarded, max_size=None) as ws:
        open_session(ws)
        ws.send(bytes(10 * GUARDED_MAX_MESSAGE_BYTES))
        _, close_code = read_until_closed(ws)
    assert close_code == ERROR_CLOSE_CODES["too_large"]
    assert_serves(guarded, one_second, additional_headers=GUARDED_HEADERS)


def test_utterance_over_the_audio_limit_is_too_large(
    guarded: RunningServer, speech: tuple[np.ndarray, int], one_second: np.ndarray
) -> None:
    samples, _ = speech
    too_long = samples[: round((GUARDED_MAX_AUDIO_S + 1) * SAMPLE_RATE_HZ)]
    with guarded_connect(guarded) as ws:
        open_session(ws)
        send_audio(ws, too_long, chunk=SAMPLE_RATE_HZ // 4)
        messages, close_code = read_until_closed(ws)
    final_error(messages, close_code, "too_large")
    # What came before the limit was answered normally, in order, and nothing past it.
    indices = [
        m.start_index + i for m in messages if isinstance(m, Frames) for i in range(len(m.frames))
    ]
    assert indices == list(range(len(indices)))
    assert len(indices) <= GUARDED_MAX_AUDIO_S * FPS
    assert_serves(guarded, one_second, additional_headers=GUARDED_HEADERS)


# --- 5. session limit -----------------------------------------------------------------------


def test_sessions_beyond_the_limit_are_busy_until_one_closes(
    guarded: RunningServer, one_second: np.ndarray
) -> None:
    wait_for_active_sessions(guarded, 0)
    with guarded_connect(guarded) as first, guarded_connect(guarded) as second:
        open_session(first)
        open_session(second)
        with guarded_connect(guarded) as third:
            # Refused before any work: the third client has sent nothing at all.
            expect_error(third, "busy")
        # The two admitted sessions are unaffected by the refusal.
        send_audio(second, one_second)
        second.send(END)
        indices, done = collect_until_done(second)
        assert done.frame_count == frames_expected(len(one_second))
        assert indices == list(range(done.frame_count))
        assert active_sessions(guarded) == GUARDED_MAX_SESSIONS
        first.close()
        wait_for_active_sessions(guarded, 1)
        with guarded_connect(guarded) as fourth:
            open_session(fourth)
            fourth.send(END)
            assert receive(fourth) == Done(frame_count=0)


# --- 6. API keys ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-API-Key": "k2"}, {"Authorization": "Bearer k2"}, {"Authorization": f"Basic {KEY}"}],
    ids=["no-key", "wrong-x-api-key", "wrong-bearer", "basic-scheme"],
)
def test_missing_or_wrong_key_is_unauthorized(
    guarded: RunningServer, one_second: np.ndarray, headers: dict[str, str]
) -> None:
    with guarded_connect(guarded, additional_headers=headers) as ws:
        expect_error(ws, "unauthorized")
    assert_serves(guarded, one_second, additional_headers=GUARDED_HEADERS)


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ("", {"Authorization": f"Bearer {KEY}"}),
        ("", {"X-API-Key": KEY}),
        (f"?api_key={KEY}", {}),
    ],
    ids=["bearer", "x-api-key", "query"],
)
def test_each_way_of_sending_the_key_works(
    guarded: RunningServer, one_second: np.ndarray, query: str, headers: dict[str, str]
) -> None:
    wait_for_active_sessions(guarded, 0)
    with connect(guarded.ws + query, additional_headers=headers, open_timeout=TIMEOUT_S) as ws:
        open_session(ws)
        send_audio(ws, one_second)
        ws.send(END)
        indices, done = collect_until_done(ws)
    assert done.frame_count == frames_expected(len(one_second))
    assert indices == list(range(done.frame_count))


# --- 7. Origin allow-list -------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    ["https://evil.example", "https://game.example.evil.example", "http://game.example"],
)
def test_origin_not_on_the_list_is_forbidden(
    guarded: RunningServer, one_second: np.ndarray, origin: str
) -> None:
    with guarded_connect(guarded, additional_headers={**GUARDED_HEADERS, "Origin": origin}) as ws:
        expect_error(ws, "forbidden_origin")
    assert_serves(guarded, one_second, additional_headers=GUARDED_HEADERS)


@pytest.mark.parametrize("origin", [ALLOWED_ORIGIN, None], ids=["allowed", "no-origin-header"])
def test_allowed_or_absent_origin_streams(
    guarded: RunningServer, one_second: np.ndarray, origin: str | None
) -> None:
    headers = dict(GUARDED_HEADERS) if origin is None else {**GUARDED_HEADERS, "Origin": origin}
    assert_serves(guarded, one_second, additional_headers=headers)


# --- 8. timeouts ----------------------------------------------------------------------------


def test_client_that_never_starts_times_out(impatient: RunningServer) -> None:
    with connect(impatient.ws, open_timeout=TIMEOUT_S) as ws:
        began = time.monotonic()
        error = expect_error(ws, "timeout")
        waited_s = time.monotonic() - began
    assert ERROR_CLOSE_CODES["timeout"] == 4408
    assert "start" in error.message
    # It waited for the timeout rather than refusing at once (the clock started at accept,
    # slightly before the client's handshake finished).
    assert waited_s >= QUICK_TIMEOUT_S / 2
    assert_impatient_serves(impatient)


@pytest.mark.parametrize("audio_s", [0.0, 1.0], ids=["quiet-after-start", "quiet-mid-utterance"])
def test_client_that_goes_quiet_times_out(
    impatient: RunningServer, one_second: np.ndarray, audio_s: float
) -> None:
    with connect(impatient.ws, open_timeout=TIMEOUT_S) as ws:
        open_session(ws)
        send_audio(ws, one_second[: round(audio_s * SAMPLE_RATE_HZ)])
        messages, close_code = read_until_closed(ws)
    final_error(messages, close_code, "timeout")
    assert_impatient_serves(impatient)


def test_idle_timer_does_not_cut_off_an_answer_in_progress(
    impatient: RunningServer, speech: tuple[np.ndarray, int]
) -> None:
    """After end the client has nothing more to send; it is waiting for the server, not idle.

    Six seconds of audio take the model well over the half-second idle timeout on a CPU, so
    a timer that keeps running while the server still owes frames closes the session before
    its done, losing the frames of audio it received.
    """
    samples, _ = speech
    wait_for_active_sessions(impatient, 0)
    with connect(impatient.ws, open_timeout=TIMEOUT_S) as ws:
        open_session(ws)
        send_audio(ws, samples)
        ws.send(END)
        indices, done = collect_until_done(ws)
    assert done.frame_count == frames_expected(len(samples))
    assert indices == list(range(done.frame_count))


def assert_impatient_serves(running: RunningServer) -> None:
    """On the impatient server a healthy session must not pause: start, end, done at once."""
    wait_for_active_sessions(running, 0)
    with connect(running.ws, open_timeout=TIMEOUT_S) as ws:
        open_session(ws)
        ws.send(END)
        assert receive(ws) == Done(frame_count=0)


# --- 9. disconnects -------------------------------------------------------------------------


def stream_outcomes(running: RunningServer) -> dict[str, float]:
    return {
        dict(labels)["outcome"]: value
        for (name, labels), value in metrics(running).items()
        if name == "pmmtalk_streams_total"
    }


def internal_errors(running: RunningServer) -> float:
    return metrics(running).get(("pmmtalk_errors_total", frozenset({("code", "internal")})), 0.0)


def test_abrupt_disconnects_leak_no_session(
    server: RunningServer, speech: tuple[np.ndarray, int], one_second: np.ndarray
) -> None:
    sessions = 4
    samples, _ = speech
    wait_for_active_sessions(server, 0)
    before = stream_outcomes(server).get("disconnected", 0.0)

    async def drop(index: int) -> None:
        async with connect_async(server.ws, open_timeout=TIMEOUT_S) as ws:
            await ws.send(start_message())
            assert isinstance(decode(await asyncio.wait_for(ws.recv(), TIMEOUT_S)), Ready)
            for at in range(0, 3 * SAMPLE_RATE_HZ, CHUNK_SAMPLES):
                await ws.send(samples[at : at + CHUNK_SAMPLES].tobytes())
            if index % 2:
                # Half of them drop while frames are on their way to them.
                assert isinstance(decode(await asyncio.wait_for(ws.recv(), TIMEOUT_S)), Frames)
            ws.transport.abort()  # TCP gone, no close frame, no end

    async def drop_all() -> None:
        await asyncio.gather(*(drop(i) for i in range(sessions)))

    asyncio.run(drop_all())
    wait_for_active_sessions(server, 0)
    info = httpx.get(f"{server.http}/info", timeout=TIMEOUT_S).json()
    assert info["active_sessions"] == 0
    assert stream_outcomes(server).get("disconnected", 0.0) - before == sessions
    assert internal_errors(server) == 0
    assert_serves(server, one_second)


# --- 10. slow reader ------------------------------------------------------------------------


def small_window_socket(running: RunningServer, receive_buffer_bytes: int) -> socket.socket:
    """A connected socket whose receive window is tiny, so a paused reader stalls TCP quickly."""
    url = urlsplit(running.http)
    assert url.hostname is not None and url.port is not None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer_bytes)
    sock.settimeout(TIMEOUT_S)
    sock.connect((url.hostname, url.port))
    return sock


def test_slow_reader_gets_every_frame_in_order(
    server: RunningServer, speech: tuple[np.ndarray, int]
) -> None:
    samples, _ = speech
    pause_s = 2.0
    wait_for_active_sessions(server, 0)
    sock = small_window_socket(server, 4096)
    with connect(server.ws, sock=sock, max_queue=1, open_timeout=TIMEOUT_S) as ws:
        open_session(ws)
        failures: list[BaseException] = []

        def blast() -> None:
            # Sends run on their own thread: once the server stops reading (its buffer full,
            # its sends blocked on this reader) a send may wait for the reading to resume.
            try:
                send_audio(ws, samples)
                ws.send(END)
            except BaseException as exc:
                failures.append(exc)

        sender = threading.Thread(target=blast, daemon=True)
        sender.start()
        time.sleep(pause_s)  # the behaviour under test: a client that does not read
        indices, done = collect_until_done(ws)
        sender.join(TIMEOUT_S)
    assert not sender.is_alive() and not failures, failures
    assert done.frame_count == frames_expected(len(samples))
    assert indices == list(range(done.frame_count))


# --- 11. fast sender ------------------------------------------------------------------------


def test_fast_sender_is_held_to_the_buffer_limit(
    speech: tuple[np.ndarray, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client blasting 10 s of audio: the server never holds more than ``max_buffered_s``
    unanswered (plus the one message read before the check), and every frame arrives.

    The observable is the session's own count of held samples after each message it queues,
    recorded by wrapping `StreamConnection._enqueue`: deterministic, where timing the client's
    sends would depend on how much the kernel's socket buffers absorb.
    """
    samples, _ = speech
    audio = np.tile(samples, 2)[: BLAST_S * SAMPLE_RATE_HZ]
    held: list[int] = []
    original = StreamConnection._enqueue

    def spy(self: StreamConnection, event: Any) -> None:
        original(self, event)
        held.append(self._queued_samples + self._buffer.unanswered_samples)

    monkeypatch.setattr(StreamConnection, "_enqueue", spy)
    limit = round(BACKPRESSURE_BUFFERED_S * SAMPLE_RATE_HZ)
    with (
        serve(stream={"max_buffered_s": BACKPRESSURE_BUFFERED_S}) as running,
        connect(running.ws, open_timeout=TIMEOUT_S) as ws,
    ):
        open_session(ws)
        failures: list[BaseException] = []

        def blast() -> None:
            try:
                send_audio(ws, audio)
                ws.send(END)
            except BaseException as exc:
                failures.append(exc)

        sender = threading.Thread(target=blast, daemon=True)
        sender.start()
        indices, done = collect_until_done(ws)
        sender.join(TIMEOUT_S)
    assert not failures, failures
    assert done.frame_count == frames_expected(len(audio)) == BLAST_S * FPS
    assert indices == list(range(done.frame_count))
    assert len(held) == math.ceil(len(audio) / CHUNK_SAMPLES) + 1  # every chunk, then end
    # The blast outran the model, so the limit was reached; and it was never exceeded.
    assert max(held) > limit
    assert max(held) <= limit + CHUNK_SAMPLES


# --- 12. graceful shutdown ------------------------------------------------------------------


def test_shutdown_tells_open_streams_and_closes_going_away(one_second: np.ndarray) -> None:
    """Stopping the server (what Ctrl+C does: uvicorn's should_exit, set when `serve` exits)
    sends each open stream ``shutting_down`` and close code 1001, not uvicorn's bare 1012."""
    outcome: list[tuple[list[ServerMessage], int]] = []
    failures: list[BaseException] = []
    streaming = threading.Event()

    def client(url: str) -> None:
        try:
            with connect(url, open_timeout=TIMEOUT_S) as ws:
                open_session(ws)
                send_audio(ws, one_second)  # mid-utterance: no end
                assert isinstance(receive(ws), Frames)
                streaming.set()
                outcome.append(read_until_closed(ws))
        except BaseException as exc:
            failures.append(exc)
        finally:
            streaming.set()

    with serve() as running:
        thread = threading.Thread(target=client, args=(running.ws,), daemon=True)
        thread.start()
        assert streaming.wait(TIMEOUT_S)
        assert not failures, failures
    thread.join(TIMEOUT_S)
    assert not failures, failures
    assert outcome, "the client never saw the stream close"
    final_error(*outcome[0], "shutting_down")
    assert ERROR_CLOSE_CODES["shutting_down"] == 1001

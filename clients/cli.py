"""``pmmtalk client animate|stream|mic``: the Python client on the command line.

Unlike ``pmmtalk animate``, which runs the model in this process, these commands talk to a
running server (``--server``, or ``$PMMTALK_SERVER_URL``). Errors print one line, ``error: ...``,
and exit with 2 for something the user can change (a file, a flag, a 4xx answer) or 1 for the
server's side (unreachable, still busy after the retries, a fault).
"""

from __future__ import annotations

import asyncio
import enum
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

# Only light modules at import time: `pmmtalk --help` must stay quick. The client (numpy,
# httpx, websockets) is imported by the commands that use it.
from clients.defaults import (
    API_KEY_ENV,
    DEFAULT_BACKOFF_S,
    DEFAULT_CHUNK_MS,
    DEFAULT_RETRIES,
    DEFAULT_URL,
    SERVER_URL_ENV,
)

if TYPE_CHECKING:
    from clients.client import FrameBatch, PcmSource, PMMTalkClient, StreamResult
    from clients.livelink_relay import LiveLinkRelay
    from server.protocol import Ready

T = TypeVar("T")

client_app = typer.Typer(
    help="Talk to a running PMMTalk server: animate a file, stream a file or a microphone.",
    no_args_is_help=True,
)


class WireFormat(enum.StrEnum):
    """How a stream's frames come back (``output`` in the start message)."""

    json = "json"
    binary = "binary"


ServerOption = Annotated[
    str, typer.Option("--server", envvar=SERVER_URL_ENV, help="The server's base URL.")
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key", envvar=API_KEY_ENV, help="API key, sent as Authorization: Bearer KEY."
    ),
]
RetriesOption = Annotated[
    int,
    typer.Option(
        min=0, help="Retries when the server cannot be reached or is busy (503, close 1013)."
    ),
]
BackoffOption = Annotated[
    float,
    typer.Option("--retry-backoff-s", min=0, help="First wait before a retry; doubles each time."),
]
FaceOption = Annotated[
    Path | None, typer.Option("--face", help="A reference face photo (JPEG, PNG, ...).")
]
FaceIdOption = Annotated[str | None, typer.Option("--face-id", help="An id from POST /faces.")]
StyleOption = Annotated[
    int | None, typer.Option(min=0, help="Style index (GET /info: styles); default average.")
]
ChunkOption = Annotated[
    float, typer.Option("--chunk-ms", min=1, help="Audio per message, in milliseconds.")
]
WireOption = Annotated[
    WireFormat, typer.Option("--output", help="Frames as JSON messages or binary PMF1 messages.")
]
StreamOutOption = Annotated[
    Path | None, typer.Option("-o", "--out", help="Write the frames to a .json or .csv file.")
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No line per frame batch.")]
ProfileOption = Annotated[
    str | None,
    typer.Option(
        "--profile",
        help="Rig profile of the frames (GET /info: profiles), e.g. arkit52; default arkit32.",
    ),
]
LiveLinkOption = Annotated[
    str | None,
    typer.Option(
        "--livelink",
        metavar="HOST[:PORT]",
        help="Also send the frames as Live Link Face UDP packets (Unreal), paced at 30 fps; "
        "the port defaults to 11111 and the profile to arkit52.",
    ),
]
LiveLinkSubjectOption = Annotated[
    str, typer.Option("--livelink-subject", help="The Live Link subject name Unreal lists.")
]
LIVELINK_PROFILES: tuple[str, ...] = ("arkit52", "livelink61")


def _fail(message: str, code: int) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=code)


def _run(work: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; a `ClientError` becomes one line and its exit code."""
    from clients.client import ClientError

    try:
        return asyncio.run(work)
    except ClientError as exc:
        raise _fail(str(exc), exc.exit_code) from None
    except KeyboardInterrupt:
        raise typer.Exit(code=130) from None


def _client(server: str, api_key: str | None, retries: int, backoff_s: float) -> PMMTalkClient:
    from clients.client import PMMTalkClient, RetryPolicy

    return PMMTalkClient(
        server,
        api_key=api_key,
        retry=RetryPolicy(retries=retries, backoff_s=backoff_s),
        on_retry=lambda line: typer.echo(line, err=True),
    )


def _check_face(face: Path | None, face_id: str | None) -> None:
    if face is not None and face_id is not None:
        raise typer.BadParameter("give --face or --face-id, not both")


@client_app.command()
def animate(
    audio: Annotated[Path, typer.Argument(help="Speech: any file libsndfile reads, any rate.")],
    out: Annotated[
        Path | None,
        typer.Option(
            "-o", "--out", help="Write .json or .csv (the server's CSV); JSON to stdout if absent."
        ),
    ] = None,
    face: FaceOption = None,
    face_id: FaceIdOption = None,
    style: StyleOption = None,
    server: ServerOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    retries: RetriesOption = DEFAULT_RETRIES,
    retry_backoff_s: BackoffOption = DEFAULT_BACKOFF_S,
) -> None:
    """Animate a whole file over POST /animate and write the frames."""
    _check_face(face, face_id)
    if out is not None and out.suffix.lower() not in (".json", ".csv"):
        raise typer.BadParameter("give an output ending in .json or .csv", param_hint="-o")
    _run(_animate(audio, out, face, face_id, style, server, api_key, retries, retry_backoff_s))


async def _animate(
    audio: Path,
    out: Path | None,
    face: Path | None,
    face_id: str | None,
    style: int | None,
    server: str,
    api_key: str | None,
    retries: int,
    backoff_s: float,
) -> None:
    from clients.client import UserInputError

    async with _client(server, api_key, retries, backoff_s) as client:
        began = time.perf_counter()
        if out is not None and out.suffix.lower() == ".csv":
            # The server's own CSV, byte for byte; it carries no compute time.
            text = await client.animate(audio, face=face, face_id=face_id, style=style, fmt="csv")
            round_trip_ms = (time.perf_counter() - began) * 1000
            frame_count = text.count("\n") - 1
            timing = f"round trip {round_trip_ms:.0f} ms"
            body = text
        else:
            clip = await client.animate(audio, face=face, face_id=face_id, style=style)
            round_trip_ms = (time.perf_counter() - began) * 1000
            frame_count = clip.frame_count
            timing = f"compute {clip.compute_ms:.0f} ms, round trip {round_trip_ms:.0f} ms"
            body = clip.model_dump_json() + "\n"
    duration_s = frame_count / 30
    if out is None:
        sys.stdout.write(body)
        typer.echo(f"{audio.name}: {frame_count} frames (~{duration_s:.2f} s), {timing}", err=True)
        return
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as handle:  # keep the CSV's CRLF rows as they came
            handle.write(body)
    except OSError as exc:
        raise UserInputError(f"cannot write {str(out)!r}: {exc.strerror}") from None
    typer.echo(f"{audio.name}: {frame_count} frames (~{duration_s:.2f} s), {timing} -> {out}")


@client_app.command()
def stream(
    audio: Annotated[Path, typer.Argument(help="Speech: any file libsndfile reads.")],
    realtime: Annotated[
        bool,
        typer.Option(
            "--realtime/--fast",
            help="Send at the audio's own pace, or as fast as the server's backpressure allows.",
        ),
    ] = True,
    chunk_ms: ChunkOption = DEFAULT_CHUNK_MS,
    output: WireOption = WireFormat.json,
    out: StreamOutOption = None,
    quiet: QuietOption = False,
    face: FaceOption = None,
    face_id: FaceIdOption = None,
    style: StyleOption = None,
    profile: ProfileOption = None,
    livelink: LiveLinkOption = None,
    livelink_subject: LiveLinkSubjectOption = "PMMTalk",
    server: ServerOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    retries: RetriesOption = DEFAULT_RETRIES,
    retry_backoff_s: BackoffOption = DEFAULT_BACKOFF_S,
) -> None:
    """Stream a file over WS /stream, printing each frame batch's lag as it arrives."""
    _check_face(face, face_id)
    _check_out(out)

    def source() -> PcmSource:
        from clients.client import file_source, read_audio

        return file_source(read_audio(audio), realtime=realtime, chunk_ms=chunk_ms)

    options = _StreamOptions(
        output, out, quiet, face, face_id, style, *_livelink(profile, livelink, livelink_subject)
    )
    client = _client(server, api_key, retries, retry_backoff_s)
    _run(_stream(client, source, options, audio.name))


@client_app.command()
def mic(
    seconds: Annotated[float, typer.Option(min=0.1, help="How long to record, in seconds.")] = 10.0,
    device: Annotated[
        str | None,
        typer.Option(help="Input device index or part of its name; the default input if absent."),
    ] = None,
    chunk_ms: ChunkOption = DEFAULT_CHUNK_MS,
    output: WireOption = WireFormat.json,
    out: StreamOutOption = None,
    quiet: QuietOption = False,
    face: FaceOption = None,
    face_id: FaceIdOption = None,
    style: StyleOption = None,
    profile: ProfileOption = None,
    livelink: LiveLinkOption = None,
    livelink_subject: LiveLinkSubjectOption = "PMMTalk",
    server: ServerOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    retries: RetriesOption = DEFAULT_RETRIES,
    retry_backoff_s: BackoffOption = DEFAULT_BACKOFF_S,
) -> None:
    """Stream the microphone over WS /stream for --seconds, printing frame lag as it goes."""
    _check_face(face, face_id)
    _check_out(out)
    from clients.mic import microphone_source

    chosen: int | str | None = int(device) if device is not None and device.isdigit() else device

    def source() -> PcmSource:
        return microphone_source(seconds, device=chosen, chunk_ms=chunk_ms)

    options = _StreamOptions(
        output, out, quiet, face, face_id, style, *_livelink(profile, livelink, livelink_subject)
    )
    client = _client(server, api_key, retries, retry_backoff_s)
    _run(_stream(client, source, options, "microphone"))


def _livelink(
    profile: str | None, livelink: str | None, subject: str
) -> tuple[str | None, tuple[str, int] | None, str]:
    """(profile, Live Link address or None, subject), checked before any connection."""
    if livelink is None:
        return profile, None, subject
    from pmmtalk.rigs.livelink import LIVELINK_PORT

    host, _, port_text = livelink.rpartition(":") if ":" in livelink else (livelink, "", "")
    if not host or (port_text and not port_text.isdigit()):
        raise typer.BadParameter(
            f"give HOST or HOST:PORT, not {livelink!r}", param_hint="--livelink"
        )
    port = int(port_text) if port_text else LIVELINK_PORT
    if not 0 < port < 65536:
        raise typer.BadParameter(f"port must be 1-65535, got {port}", param_hint="--livelink")
    chosen = profile or LIVELINK_PROFILES[0]
    if chosen not in LIVELINK_PROFILES:
        raise typer.BadParameter(
            f"Live Link Face packets need {' or '.join(LIVELINK_PROFILES)}, not {chosen!r}",
            param_hint="--profile",
        )
    return chosen, (host, port), subject


def _check_out(out: Path | None) -> None:
    if out is not None and out.suffix.lower() not in (".json", ".csv"):
        raise typer.BadParameter("give an output ending in .json or .csv", param_hint="-o")


@dataclass(frozen=True)
class _StreamOptions:
    """What `stream` and `mic` share once the audio source is chosen."""

    output: WireFormat
    out: Path | None
    quiet: bool
    face: Path | None
    face_id: str | None
    style: int | None
    profile: str | None
    livelink: tuple[str, int] | None
    livelink_subject: str


async def _stream(
    client: PMMTalkClient,
    make_source: Callable[[], PcmSource],
    options: _StreamOptions,
    label: str,
) -> None:
    # The source is made first: a missing file or microphone fails before any connection.
    source: PcmSource = make_source()

    def ready(message: Ready) -> None:
        typer.echo(
            f"ready: session {message.session_id}, model {message.model}, "
            f"hop {message.hop_s:g} s, lookahead {message.lookahead_s:g} s",
            err=True,
        )

    relay = _open_relay(options)

    def batch(received: FrameBatch) -> None:
        if relay is not None:
            relay.push(received.start_index, received.frames)
        if options.quiet:
            return
        low, high = received.lag_s.min() * 1000, received.lag_s.max() * 1000
        lag = f"{low:.0f} ms" if round(low) == round(high) else f"{low:.0f}-{high:.0f} ms"
        typer.echo(f"frames {received.start_index}-{received.stop_index - 1}: lag {lag}")

    try:
        async with client:
            face_id = options.face_id
            if options.face is not None:
                face_id = await client.register_face(options.face)
            result = await client.stream_source(
                source,
                output="binary" if options.output is WireFormat.binary else "json",
                face_id=face_id,
                style=options.style,
                start_fields={"profile": options.profile} if options.profile else None,
                on_ready=ready,
                on_batch=batch,
            )
    finally:
        if relay is not None:
            relay.close()  # the queued frames go out at their pace first
    if relay is not None and options.livelink is not None:
        host, port = options.livelink
        typer.echo(f"livelink: {relay.sent} packets to {host}:{port}", err=True)
    written = f" -> {_write_stream(result, options.out)}" if options.out is not None else ""
    typer.echo(
        f"{label}: {result.frame_count} frames (the contract's count) in {result.elapsed_s:.2f} s; "
        f"frame lag p50 {result.lag_percentile_ms(50):.0f} ms, "
        f"p95 {result.lag_percentile_ms(95):.0f} ms{written}"
    )


def _open_relay(options: _StreamOptions) -> LiveLinkRelay | None:
    if options.livelink is None:
        return None
    from clients.client import UserInputError
    from clients.livelink_relay import LiveLinkRelay
    from pmmtalk.rigs.livelink import LiveLinkSink

    host, port = options.livelink
    try:
        sink = LiveLinkSink(host, port, subject_name=options.livelink_subject)
    except ValueError as exc:
        raise UserInputError(str(exc)) from None
    return LiveLinkRelay(sink)


def _write_stream(result: StreamResult, out: Path) -> Path:
    from clients.client import write_frames

    ready = result.ready
    document = {
        "fps": ready.fps,
        "names": ready.names,
        "frames": [[round(v, 6) for v in row] for row in result.frames.tolist()],
        "frame_count": result.frame_count,
        "model": ready.model,
        "lag_p50_ms": round(result.lag_percentile_ms(50), 1),
        "lag_p95_ms": round(result.lag_percentile_ms(95), 1),
    }
    return write_frames(out, result.frames, ready.names, ready.fps, document)

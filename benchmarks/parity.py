"""Stream against ``/animate``: the frames a stream ends with, next to the offline answer.

The server issue's bound, at the default settings: after ``end``, a stream's frames equal the
``POST /animate`` frames for the same audio within mean absolute difference 0.01 and max 0.05.
This script starts `pmmtalk serve` (default settings unless flags say otherwise), sends each
clip both ways through the project's client, and writes a table of the differences.

    python -m benchmarks.parity                       # samples/hello.wav
    python -m benchmarks.parity --corpus runs/v4/corpus --joined 6 --out docs/benchmarks

``--corpus`` adds clips made of test-split utterances of a generated corpus joined end to end
(``--per-clip`` utterances each), so speech, pauses and language changes meet the window edges
at many places. The clips are streamed as fast as the server takes them: the frames do not
depend on pacing (tests/server/test_connection.py checks chunk sizes from 1 ms to 5 s).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Final

import numpy as np
import soundfile as sf
import typer

from benchmarks.process import ServeOptions, free_port, running_server
from clients.client import animate_file, stream_file
from models.blendshapes import SAMPLE_RATE_HZ
from models.corpus.manifest import read_manifest

MEAN_BOUND: Final = 0.01
MAX_BOUND: Final = 0.05
DEFAULT_CLIPS: Final = (Path("samples/hello.wav"),)

app = typer.Typer(add_completion=False)


@dataclass(frozen=True)
class ClipParity:
    clip: str
    seconds: float
    frames: int
    mean_abs: float
    max_abs: float
    frames_over_max: int  # frames with any coefficient off by more than MAX_BOUND
    worst_frame: int
    worst_channel: str

    @property
    def within(self) -> bool:
        return self.mean_abs <= MEAN_BOUND and self.max_abs <= MAX_BOUND


def joined_corpus_clips(corpus: Path, count: int, per_clip: int, out_dir: Path) -> list[Path]:
    """``count`` WAVs, each ``per_clip`` test-split utterances of ``corpus`` end to end."""
    tests = [u for u in read_manifest(corpus / "manifest.jsonl") if u.split == "test"]
    if len(tests) < count * per_clip:
        raise typer.BadParameter(
            f"{corpus} has {len(tests)} test utterances; {count} x {per_clip} are needed"
        )
    clips = []
    for i in range(count):
        parts = [
            sf.read(corpus / u.audio, dtype="float32")[0]
            for u in tests[i * per_clip : (i + 1) * per_clip]
        ]
        path = out_dir / f"joined-{i + 1}.wav"
        sf.write(path, np.concatenate(parts), SAMPLE_RATE_HZ, subtype="PCM_16")
        clips.append(path)
    return clips


def compare(path: Path, url: str, name: str) -> ClipParity:
    offline = animate_file(path, url)
    streamed = stream_file(path, url, realtime=False)
    a = np.asarray(offline.frames, dtype=np.float64)
    b = np.asarray(streamed.frames, dtype=np.float64)
    if a.shape != b.shape:
        raise RuntimeError(f"{name}: /animate gave {a.shape} frames, the stream {b.shape}")
    diff = np.abs(a - b)
    frame, channel = divmod(int(diff.argmax()), diff.shape[1])
    return ClipParity(
        clip=name,
        seconds=round(sf.info(path).duration, 2),
        frames=len(a),
        mean_abs=float(diff.mean()),
        max_abs=float(diff.max()),
        frames_over_max=int((diff.max(axis=1) > MAX_BOUND).sum()),
        worst_frame=frame,
        worst_channel=offline.names[channel],
    )


def markdown(rows: list[ClipParity], command: str, server: str) -> str:
    lines = [
        "# Stream against `/animate`",
        "",
        f"Written by `{command}`; server `{server}`.",
        "",
        f"Bound at the default settings: mean absolute difference <= {MEAN_BOUND}, "
        f"max <= {MAX_BOUND}.",
        "",
        "| clip | seconds | frames | mean abs | max abs | frames over max bound | worst at "
        "| within |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.clip} | {r.seconds:.2f} | {r.frames} | {r.mean_abs:.4f} | {r.max_abs:.4f} | "
            f"{r.frames_over_max} | frame {r.worst_frame}, {r.worst_channel} | "
            f"{'yes' if r.within else '**no**'} |"
        )
    worst_mean = max(r.mean_abs for r in rows)
    worst_max = max(r.max_abs for r in rows)
    over = sum(r.frames_over_max for r in rows)
    total = sum(r.frames for r in rows)
    lines += [
        "",
        f"All clips: largest mean {worst_mean:.4f}, largest max {worst_max:.4f}; "
        f"{over} of {total} frames over the max bound.",
        "",
    ]
    return "\n".join(lines)


@app.command()
def main(
    clips: Annotated[
        list[Path] | None, typer.Argument(help="WAV files (default hello.wav).")
    ] = None,
    corpus: Annotated[
        Path | None, typer.Option(help="A generated corpus; adds joined test clips.")
    ] = None,
    joined: Annotated[int, typer.Option(help="Joined corpus clips to add.")] = 6,
    per_clip: Annotated[int, typer.Option(help="Utterances per joined clip.")] = 4,
    backend: Annotated[str, typer.Option(help="The server's backend.")] = "auto",
    checkpoint: Annotated[
        Path | None, typer.Option(help="The server's model (default: the bundled one).")
    ] = None,
    left_context_s: Annotated[
        float | None, typer.Option(help="The server's window left context (default its own).")
    ] = None,
    lookahead_s: Annotated[
        float | None, typer.Option(help="The server's window lookahead (default its own).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for parity.md and parity.json.")] = None,
) -> None:
    """Compare each clip's streamed frames with its /animate frames."""
    chosen = list(clips or DEFAULT_CLIPS)
    options = ServeOptions(
        backend=backend,
        checkpoint=checkpoint,
        left_context_s=left_context_s,
        lookahead_s=lookahead_s,
    )
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if corpus is not None:
            chosen += joined_corpus_clips(corpus, joined, per_clip, work)
        rows = []
        with running_server(options.command(port), port, work / "server.log") as server:
            for path in chosen:
                row = compare(path, server.http, path.name)
                rows.append(row)
                typer.echo(
                    f"{row.clip}: {row.frames} frames, mean {row.mean_abs:.4f}, "
                    f"max {row.max_abs:.4f} ({row.frames_over_max} frames over {MAX_BOUND})"
                )
    command = "python -m benchmarks.parity " + " ".join(
        [str(c) for c in clips or []]
        + ([f"--corpus {corpus} --joined {joined} --per-clip {per_clip}"] if corpus else [])
        + ([f"--backend {backend}"] if backend != "auto" else [])
        + ([f"--checkpoint {checkpoint}"] if checkpoint is not None else [])
        + ([f"--left-context-s {left_context_s}"] if left_context_s is not None else [])
        + ([f"--lookahead-s {lookahead_s}"] if lookahead_s is not None else [])
    )
    text = markdown(rows, command.strip(), options.shown())
    typer.echo(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "parity.md").write_text(text)
        document = {"rows": [asdict(r) | {"within": r.within} for r in rows]}
        (out / "parity.json").write_text(json.dumps(document, indent=2) + "\n")
        typer.echo(f"wrote {out / 'parity.md'} and parity.json beside it")


if __name__ == "__main__":
    app()

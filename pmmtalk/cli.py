"""The ``pmmtalk`` command line."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated

import typer

from models.checkpoint import CheckpointError
from models.config import PRESETS
from pmmtalk.errors import InputError

app = typer.Typer(
    name="pmmtalk",
    help="PMMTalk Server: speech to 32 ARKit blendshapes at 30 fps.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

export_app = typer.Typer(help="Export the network for other runtimes.", no_args_is_help=True)
app.add_typer(export_app, name="export")

logger = logging.getLogger("pmmtalk")


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


def _check_preset(name: str | None) -> str | None:
    if name is not None and name not in PRESETS:
        raise typer.BadParameter(f"choose one of {sorted(PRESETS)}")
    return name


@app.callback()
def main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log progress to stderr.")
    ] = False,
) -> None:
    """Set up logging once, here, rather than at import time."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


@app.command()
def animate(
    audio: Annotated[Path, typer.Argument(help="Speech file: WAV, FLAC, OGG, any rate/channels.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Result file: .json, .csv or .npy.")
    ],
    face: Annotated[
        Path | None,
        typer.Option(help="Reference face photo; the bundled default face when omitted."),
    ] = None,
    style: Annotated[
        int | None,
        typer.Option(help="Training-subject style index; the average style when omitted."),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="Checkpoint directory; the bundled default model when omitted."),
    ] = None,
    untrained: Annotated[
        str | None,
        typer.Option(
            help="Run a randomly initialised PRESET (lite or paper) instead of a checkpoint: "
            "shapes and speed only, the motion is meaningless.",
            callback=_check_preset,
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="PyTorch device, e.g. cpu or cuda.")] = "cpu",
) -> None:
    """Animate a speech file offline and write the 32 coefficients per frame."""
    from pmmtalk.animate import Animator
    from pmmtalk.audio import load_audio
    from pmmtalk.face import load_image
    from pmmtalk.outputs import write_animation

    if untrained is not None and checkpoint is not None:
        raise _fail("give either --checkpoint or --untrained, not both")
    try:
        samples = load_audio(audio)
        photo = load_image(face) if face is not None else None
        animator = (
            Animator.untrained(untrained, device)
            if untrained is not None
            else Animator.from_checkpoint(checkpoint, device)
        )
        started = time.perf_counter()
        result = animator.animate(samples, photo, style)
        elapsed_s = time.perf_counter() - started
        written = write_animation(result, output)
    except (InputError, CheckpointError, ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(
        f"{written}: {result.frames.shape[0]} frames at {result.fps} fps for "
        f"{result.duration_s:.2f} s of speech ({result.model}, {elapsed_s:.2f} s compute)"
    )


@app.command()
def render(
    audio: Annotated[Path, typer.Argument(help="Speech file: WAV, FLAC, OGG, any rate/channels.")],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Video to write (.mp4); the curves go to a .png beside it."
        ),
    ],
    face_seed: Annotated[
        int | None,
        typer.Option(min=0, help="Draw a random face from this seed; a fixed face if omitted."),
    ] = None,
    coefficients: Annotated[
        Path | None,
        typer.Option(
            help="Render these coefficients (.npy, .json or .csv) instead of running a network."
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="Checkpoint directory; the bundled default model when omitted."),
    ] = None,
    untrained: Annotated[
        str | None,
        typer.Option(
            help="Run a randomly initialised PRESET (lite or paper) instead of a checkpoint: "
            "shapes and speed only, the motion is meaningless.",
            callback=_check_preset,
        ),
    ] = None,
    size: Annotated[int, typer.Option(help="Face panel side in pixels (even, 64-1024).")] = 256,
    device: Annotated[str, typer.Option(help="PyTorch device, e.g. cpu or cuda.")] = "cpu",
) -> None:
    """Render a lip-sync review video: the animated face beside its curves, with the speech."""
    import numpy as np

    from models.blendshapes import SAMPLE_RATE_HZ
    from models.renderer import FaceIdentity
    from pmmtalk.animate import Animator
    from pmmtalk.audio import load_audio
    from pmmtalk.video import (
        VideoEncodingError,
        check_video_options,
        read_animation,
        write_curves_png,
        write_render,
    )

    if untrained is not None and checkpoint is not None:
        raise _fail("give either --checkpoint or --untrained, not both")
    if coefficients is not None and (untrained is not None or checkpoint is not None):
        raise _fail(
            "--coefficients renders a file without a network: drop --checkpoint/--untrained"
        )
    try:
        check_video_options(output, size)
        samples = load_audio(audio)
        if coefficients is not None:
            result = read_animation(coefficients)
        else:
            animator = (
                Animator.untrained(untrained, device)
                if untrained is not None
                else Animator.from_checkpoint(checkpoint, device)
            )
            result = animator.animate(samples)
        identity = (
            None if face_seed is None else FaceIdentity.random(np.random.default_rng(face_seed))
        )
        video = write_render(
            output, samples, SAMPLE_RATE_HZ, result.frames, identity, size, result.fps
        )
        curves = write_curves_png(
            output.with_suffix(".png"), result.frames, result.fps, result.names
        )
    except (InputError, CheckpointError, ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc
    except VideoEncodingError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=1) from exc
    typer.echo(
        f"{video}: {result.frames.shape[0]} frames at {result.fps} fps ({result.model}); "
        f"curves in {curves}"
    )


@app.command("model-info")
def model_info(
    preset: Annotated[
        str, typer.Option(help="Preset to describe (lite or paper).", callback=_check_preset)
    ] = "lite",
    seconds: Annotated[float, typer.Option(help="Clip length the MACs are counted on.")] = 1.0,
) -> None:
    """Parameter count and multiply-adds per second of audio, per component."""
    from models.profile import profile_preset

    report = profile_preset(preset, seconds)
    typer.echo(report.to_markdown())


@export_app.command("onnx")
def export_onnx_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the .onnx files.")],
    checkpoint: Annotated[Path | None, typer.Option(help="Checkpoint directory to export.")] = None,
    untrained: Annotated[
        str | None,
        typer.Option(
            help="Export a randomly initialised PRESET (lite or paper) instead of a checkpoint: "
            "for shape and speed work only.",
            callback=_check_preset,
        ),
    ] = None,
) -> None:
    """Export face_encoder.onnx and speech_to_frames.onnx, then check them against PyTorch."""
    import torch

    from export.onnx import PARITY_TOLERANCE, check_parity, export_onnx
    from models.checkpoint import load_checkpoint
    from models.config import preset_config
    from models.pmmtalk import PMMTalk

    if checkpoint is not None and untrained is not None:
        raise _fail("give either --checkpoint or --untrained, not both")
    try:
        if untrained is not None:
            torch.manual_seed(0)
            model = PMMTalk(preset_config(untrained)).eval()
        elif checkpoint is not None:
            model = load_checkpoint(checkpoint).model
        else:
            raise _fail("give --checkpoint DIR, or --untrained PRESET for random weights")
        exported = export_onnx(model, output)
        results = check_parity(model, exported)
    except (CheckpointError, ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"wrote {exported.face_encoder} and {exported.speech_to_frames}")
    for result in results:
        typer.echo(
            f"{result.samples} samples ({result.frames} frames): "
            f"max abs error {result.max_abs_error:.2e}"
        )
    worst = max(result.max_abs_error for result in results)
    if worst > PARITY_TOLERANCE:
        typer.secho(
            f"error: ONNX output differs from PyTorch by {worst:.2e} (tolerance "
            f"{PARITY_TOLERANCE:.0e}); do not deploy these files",
            err=True,
            fg=typer.colors.RED,
        )
        raise typer.Exit(code=1)

"""The ``pmmtalk`` command line."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from models.checkpoint import CheckpointError
from models.config import PRESETS
from pmmtalk.errors import InputError

if TYPE_CHECKING:
    from pmmtalk.animate import Animator

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


CheckpointOption = Annotated[
    Path | None,
    typer.Option(help="Checkpoint directory; the bundled default model when omitted."),
]
UntrainedOption = Annotated[
    str | None,
    typer.Option(
        help="Run a randomly initialised PRESET (lite or paper) instead of a checkpoint: "
        "shapes and speed only, the motion is meaningless.",
        callback=_check_preset,
    ),
]
DeviceOption = Annotated[str, typer.Option(help="PyTorch device, e.g. cpu or cuda.")]


def _animator(checkpoint: Path | None, untrained: str | None, device: str) -> Animator:
    """The network `animate` and `render` run: random weights of a preset, or a checkpoint."""
    from pmmtalk.animate import Animator

    if untrained is not None:
        return Animator.untrained(untrained, device)
    return Animator.from_checkpoint(checkpoint, device)


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
    checkpoint: CheckpointOption = None,
    untrained: UntrainedOption = None,
    device: DeviceOption = "cpu",
) -> None:
    """Animate a speech file offline and write the 32 coefficients per frame."""
    from pmmtalk.audio import load_audio
    from pmmtalk.face import load_image
    from pmmtalk.outputs import write_animation

    if untrained is not None and checkpoint is not None:
        raise _fail("give either --checkpoint or --untrained, not both")
    try:
        samples = load_audio(audio)
        photo = load_image(face) if face is not None else None
        animator = _animator(checkpoint, untrained, device)
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
    checkpoint: CheckpointOption = None,
    untrained: UntrainedOption = None,
    size: Annotated[int, typer.Option(help="Face panel side in pixels (even, 64-1024).")] = 256,
    device: DeviceOption = "cpu",
) -> None:
    """Render a lip-sync review video: the animated face beside its curves, with the speech."""
    import numpy as np

    from models.blendshapes import SAMPLE_RATE_HZ
    from models.renderer import FaceIdentity
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
            animator = _animator(checkpoint, untrained, device)
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


def _recipe(name: str) -> str:
    from models.training.recipe import RECIPES

    if name not in RECIPES:
        raise typer.BadParameter(f"choose one of {sorted(RECIPES)}")
    return name


@app.command()
def train(
    recipe: Annotated[
        str,
        typer.Option(
            help="Training recipe: default (the shipped model, under 2 h on 2 cores), aligned "
            "(the recogniser also learns phone timings) or quick (minutes, to try the pipeline).",
            callback=_recipe,
        ),
    ] = "default",
    work_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where the corpus, stage states and caches go; rerun with the same directory "
            "to resume. Default: runs/<recipe>."
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Checkpoint directory to write. Default: the bundled model's place "
            "(models/default) for the default recipe, WORK_DIR/model otherwise.",
        ),
    ] = None,
    ablate: Annotated[
        list[str] | None,
        typer.Option(
            help="Train the last stage without this part (text, image, audio, tem, sem); "
            "repeat for several. Reuses WORK_DIR's pretrained parts.",
        ),
    ] = None,
    init: Annotated[
        Path | None,
        typer.Option(
            help="Fine-tune this checkpoint on --data instead of running a recipe "
            "(the parts the paper freezes stay frozen)."
        ),
    ] = None,
    data: Annotated[
        list[str] | None,
        typer.Option(
            help="KIND:DIR for --init, KIND one of corpus, livelink (Live Link Face CSV + WAV "
            "takes) or plain (audio + same-stem .npy of shape (T, 32) at 30 fps); repeatable."
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs of fine-tuning (with --init).")] = 20,
) -> None:
    """Train a model from nothing: generate the corpus, pretrain the parts the paper freezes,
    train PMMTalk, and write a checkpoint whose metadata holds the recipe and its timings."""
    from models.training.recipe import DATA_KINDS, RECIPES, finetune, run_ablation, run_recipe
    from models.training.trainer import TrainConfig
    from pmmtalk.animate import DEFAULT_CHECKPOINT_DIR

    if (init is None) != (not data):
        raise _fail("fine-tuning takes both --init CHECKPOINT and at least one --data KIND:DIR")
    if init is not None:
        sources: list[tuple[str, Path]] = []
        for item in data or []:
            kind, sep, root = item.partition(":")
            if not sep or kind not in DATA_KINDS or not root:
                raise _fail(f"--data takes KIND:DIR with KIND in {DATA_KINDS}, got {item!r}")
            sources.append((kind, Path(root)))
        folder = work_dir if work_dir is not None else Path("runs") / "finetune"
        target = output if output is not None else folder / "model"
        try:
            metadata = finetune(init, sources, TrainConfig(epochs=epochs), folder, target)
        except (InputError, CheckpointError, ValueError, FileNotFoundError) as exc:
            raise _fail(str(exc)) from exc
        typer.echo(f"{target}: fine-tuned; best validation {metadata['finetune']['best_val']}")
        return

    chosen = RECIPES[recipe]()
    folder = work_dir if work_dir is not None else Path("runs") / recipe
    if ablate:
        target = output if output is not None else folder / ("without-" + "-".join(sorted(ablate)))
    elif output is not None:
        target = output
    else:
        target = DEFAULT_CHECKPOINT_DIR if recipe == "default" else folder / "model"
    try:
        if ablate:
            metadata = run_ablation(chosen, folder, ablate, target)
        else:
            metadata = run_recipe(chosen, folder, target)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise _fail(str(exc)) from exc
    last = next(v for k, v in reversed(metadata["stages"].items()) if k.startswith("pmmtalk"))
    typer.echo(
        f"{target}: trained in {metadata['training_seconds']:.0f} s of stage time "
        f"(stages: {metadata['stage_seconds']}); best validation: {last.get('best_val')}"
    )


@app.command("eval")
def evaluate_command(
    corpus: Annotated[Path, typer.Option(help="Corpus directory (from pmmtalk corpus).")],
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="Checkpoint directory; the bundled default model when omitted."),
    ] = None,
    split: Annotated[str, typer.Option(help="Corpus split to score: test or val.")] = "test",
    face: Annotated[
        Path | None,
        typer.Option(help="Real reference photo; the bundled default face when omitted."),
    ] = None,
    ablation: Annotated[
        list[str] | None,
        typer.Option(help="NAME=DIR: also score an ablation checkpoint; repeatable."),
    ] = None,
    max_clips: Annotated[
        int | None, typer.Option(min=1, help="Score only the first N clips.")
    ] = None,
    report: Annotated[
        Path | None, typer.Option(help="Also write the tables to this Markdown file.")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write every figure to this JSON file.")
    ] = None,
) -> None:
    """Score a model on held-out speech: LVE and ALE per language and voice group, two
    baselines, optional ablations, and phonetic sanity checks."""
    import json

    from models.training.report import evaluation_report
    from pmmtalk.animate import DEFAULT_CHECKPOINT_DIR
    from pmmtalk.face import load_image

    if split not in ("test", "val", "train"):
        raise _fail(f"unknown split {split!r}; choose test, val or train")
    ablations: dict[str, Path] = {}
    for item in ablation or []:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise _fail(f"--ablation takes NAME=DIR, got {item!r}")
        ablations[name] = Path(folder)
    try:
        photo = load_image(face) if face is not None else None
        result = evaluation_report(
            checkpoint if checkpoint is not None else DEFAULT_CHECKPOINT_DIR,
            corpus,
            split=split,
            photo=photo,
            ablations=ablations,
            max_clips=max_clips,
        )
    except (InputError, CheckpointError, ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(result.markdown)
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(result.markdown + "\n", encoding="utf-8")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")


@app.command()
def corpus(
    out_dir: Annotated[
        Path, typer.Argument(help="Folder for the corpus; an interrupted run resumes in it.")
    ],
    size: Annotated[int, typer.Option(min=1, help="Number of utterances.")],
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same corpus.")],
    languages: Annotated[
        str, typer.Option(help="Comma-separated languages to speak: en, zh or both.")
    ] = "en,zh",
    workers: Annotated[int, typer.Option(min=1, help="Synthesis processes.")] = 2,
) -> None:
    """Generate the synthetic TTS training corpus (audio, phone tables, blendshape targets)."""
    from models.corpus.espeak import EngineUnavailableError
    from models.corpus.generate import generate_corpus
    from models.corpus.phones import LANGUAGES

    chosen = {language.strip() for language in languages.split(",") if language.strip()}
    if not chosen or not chosen <= set(LANGUAGES):
        raise _fail(f"--languages takes a comma-separated subset of {','.join(LANGUAGES)}")
    started = time.perf_counter()
    try:
        info = generate_corpus(
            out_dir, size, seed, [lang for lang in LANGUAGES if lang in chosen], workers=workers
        )
    except (EngineUnavailableError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    elapsed_s = time.perf_counter() - started
    splits = ", ".join(f"{split} {count}" for split, count in info.counts.items())
    typer.echo(
        f"{out_dir}: {info.size} utterances ({splits}), {info.hours:.2f} h of audio, "
        f"in {elapsed_s:.0f} s ({info.size / max(elapsed_s, 1e-9):.1f} utterances/s)"
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

"""The ``pmmtalk`` command line."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from clients.cli import client_app
from models.checkpoint_format import CheckpointError
from models.config import PRESETS
from pmmtalk.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from export.onnx import ParityResult
    from export.quantize import VariantReport
    from pmmtalk.animate import Animator

app = typer.Typer(
    name="pmmtalk",
    help="PMMTalk Server: speech to 32 ARKit blendshapes at 30 fps.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

export_app = typer.Typer(help="Export the network for other runtimes.", no_args_is_help=True)
app.add_typer(export_app, name="export")
app.add_typer(client_app, name="client")  # talks to a running server (clients/)

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
DeviceOption = Annotated[
    str, typer.Option(help="auto (a GPU when one is present), cpu, cuda or cuda:N.")
]


def _check_backend(name: str) -> str:
    from export.backends.select import BACKEND_CHOICES

    if name not in BACKEND_CHOICES:
        raise typer.BadParameter(f"choose one of {', '.join(BACKEND_CHOICES)}")
    return name


BackendOption = Annotated[
    str,
    typer.Option(
        help="Runtime: auto (the fastest present: tensorrt on a GPU with engines, else torch "
        "on a GPU, else onnx), torch, onnx or tensorrt. onnx and tensorrt export the checkpoint "
        "once, into ~/.cache/pmmtalk or $PMMTALK_CACHE_DIR.",
        callback=_check_backend,
    ),
]


def _animator(
    checkpoint: Path | None, untrained: str | None, device: str, backend: str
) -> Animator:
    """The network `animate` and `render` run: random weights of a preset, or a checkpoint."""
    from pmmtalk.animate import Animator

    if untrained is not None:
        if backend not in ("auto", "torch"):
            raise _fail(f"--untrained runs on the torch backend only, not --backend {backend}")
        return Animator.untrained(untrained, device)
    return Animator.from_checkpoint(checkpoint, device, backend)


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
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            help="Runtime: auto, torch, onnx or tensorrt (default auto).",
            callback=lambda v: v if v is None else _check_backend(v),
        ),
    ] = None,
    checkpoint: CheckpointOption = None,
    export_dir: Annotated[
        Path | None, typer.Option(help="Serve these exported ONNX files (no PyTorch needed).")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu, cuda or cuda:N (default auto).")
    ] = None,
    hop_s: Annotated[
        float | None, typer.Option(help="Stream hop in seconds (default 0.4).")
    ] = None,
    left_context_s: Annotated[
        float | None, typer.Option(help="Stream left context in seconds (default 1.0).")
    ] = None,
    lookahead_s: Annotated[
        float | None, typer.Option(help="Stream lookahead in seconds (default 0.4).")
    ] = None,
    max_batch_size: Annotated[
        int | None, typer.Option(help="Windows per backend call (default 8).")
    ] = None,
    max_wait_ms: Annotated[float | None, typer.Option(help="Batch wait in ms (default 5).")] = None,
    max_sessions: Annotated[
        int | None, typer.Option(help="Concurrent streams (default 32).")
    ] = None,
    api_key: Annotated[
        list[str] | None, typer.Option(help="Require this API key (repeatable).")
    ] = None,
    allowed_origin: Annotated[
        list[str] | None,
        typer.Option(help="Allow browser WebSockets from this origin (repeatable)."),
    ] = None,
    log_format: Annotated[str | None, typer.Option(help="text or json (default text).")] = None,
    rig_profiles: Annotated[
        Path | None,
        typer.Option(help="TOML file of per-profile gain, offset and clamp (docs/rigs.md)."),
    ] = None,
) -> None:
    """Start the REST + WebSocket server (default http://127.0.0.1:8000, docs at /docs).

    Every setting can also come from a PMMTALK_* environment variable (see docs/server.md);
    a flag given here wins.
    """
    from pydantic import ValidationError

    from server.run import serve as run_server
    from server.settings import ServerSettings

    flat = {
        "host": host,
        "port": port,
        "log_format": log_format,
        "model": {
            "backend": backend,
            "checkpoint": checkpoint,
            "export_dir": export_dir,
            "device": device,
            "rig_profiles": rig_profiles,
        },
        "stream": {"hop_s": hop_s, "left_context_s": left_context_s, "lookahead_s": lookahead_s},
        "batch": {"max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms},
        "limits": {"max_sessions": max_sessions},
        "security": {"api_keys": api_key, "allowed_origins": allowed_origin},
    }
    given = {
        key: (
            {k: v for k, v in value.items() if v is not None} if isinstance(value, dict) else value
        )
        for key, value in flat.items()
    }
    overrides: dict[str, Any] = {k: v for k, v in given.items() if v not in (None, {})}
    try:
        settings = ServerSettings(**overrides)
    except (ValidationError, ValueError) as exc:
        raise _fail(f"bad server settings: {exc}") from None
    from export.backends.base import BackendUnavailableError
    from pmmtalk.rigs import RigConfig

    try:
        RigConfig.load(settings.model.rig_profiles)  # a bad file fails before the model loads
        run_server(settings)
    except (CheckpointError, InputError, BackendUnavailableError, ValueError, OSError) as exc:
        raise _fail(str(exc)) from None


@app.command()
def animate(
    audio: Annotated[Path, typer.Argument(help="Speech file: WAV, FLAC, OGG, any rate/channels.")],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Result file: .json, .csv, .npy or .llf.csv (Live Link Face)."
        ),
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
    device: DeviceOption = "auto",
    backend: BackendOption = "auto",
    profile: Annotated[
        str,
        typer.Option(help="Rig profile: arkit32, arkit52, livelink61 or visemes15 (docs/rigs.md)."),
    ] = "arkit32",
    output_format: Annotated[
        str,
        typer.Option(
            "--format",
            help="auto (by the output's suffix), json, csv, npy, livelink_csv or talkinghead "
            "(TalkingHead's anim object, as JSON).",
        ),
    ] = "auto",
    rig_profiles: Annotated[
        Path | None,
        typer.Option(help="TOML file of per-profile gain, offset and clamp (docs/rigs.md)."),
    ] = None,
) -> None:
    """Animate a speech file offline and write the coefficients per frame (32 ARKit weights,
    or another rig profile's channels)."""
    from export.backends.base import BackendUnavailableError
    from pmmtalk.audio import decode_audio
    from pmmtalk.face import load_image
    from pmmtalk.rigs import RigConfig
    from pmmtalk.rigs.formats import format_for_path, profile_for_format, write_rig_animation

    if untrained is not None and checkpoint is not None:
        raise _fail("give either --checkpoint or --untrained, not both")
    try:
        # Every output choice is checked before the network runs.
        rigs = RigConfig.load(rig_profiles)
        chosen_format = format_for_path(output, output_format)
        rigs.mapper(profile_for_format(chosen_format, profile))
        decoded = decode_audio(audio)
        photo = load_image(face) if face is not None else None
        animator = _animator(checkpoint, untrained, device, backend)
        started = time.perf_counter()
        result = animator.animate(decoded.samples, photo, style, decoded.num_frames)
        elapsed_s = time.perf_counter() - started
        written = write_rig_animation(result, output, profile, chosen_format, rigs)
    except (
        InputError,
        CheckpointError,
        BackendUnavailableError,
        ValueError,
        FileNotFoundError,
    ) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(
        f"{written}: {result.frames.shape[0]} frames at {result.fps} fps for "
        f"{result.duration_s:.2f} s of speech ({result.model} on {animator.backend.name}, "
        f"{elapsed_s:.2f} s compute)"
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
    device: DeviceOption = "auto",
    backend: BackendOption = "auto",
) -> None:
    """Render a lip-sync review video: the animated face beside its curves, with the speech."""
    import numpy as np

    from export.backends.base import BackendUnavailableError
    from models.blendshapes import SAMPLE_RATE_HZ
    from models.renderer import FaceIdentity
    from pmmtalk.audio import decode_audio
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
        decoded = decode_audio(audio)
        if coefficients is not None:
            result = read_animation(coefficients)
        else:
            animator = _animator(checkpoint, untrained, device, backend)
            result = animator.animate(decoded.samples, frame_count=decoded.num_frames)
        identity = (
            None if face_seed is None else FaceIdentity.random(np.random.default_rng(face_seed))
        )
        video = write_render(
            output, decoded.samples, SAMPLE_RATE_HZ, result.frames, identity, size, result.fps
        )
        curves = write_curves_png(
            output.with_suffix(".png"), result.frames, result.fps, result.names
        )
    except (
        InputError,
        CheckpointError,
        BackendUnavailableError,
        ValueError,
        FileNotFoundError,
    ) as exc:
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
            help="Training recipe: default (= framewise, the shipped model: a frame-wise phone "
            "recogniser), ctc (the first model: a CTC recogniser), aligned (CTC plus phone "
            "timings) or quick (minutes, to try the pipeline).",
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


def _aligned(rows: Sequence[Sequence[str]]) -> str:
    """Rows of cells as left-aligned columns two spaces apart; the first row is the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _parity_table(results: list[ParityResult]) -> str:
    """The parity results as aligned columns: graph, input, frames, max abs error, result."""
    rows = [("graph", "input", "frames", "max abs error", "result")]
    rows += [
        (
            r.graph,
            r.input,
            str(r.frames),
            f"{r.max_abs_error:.2e}",
            "pass" if r.passed else "FAIL",
        )
        for r in results
    ]
    return _aligned(rows)


def _variant_table(reports: list[VariantReport]) -> str:
    """Variant reports as aligned columns; ALE in coefficient units, RTF = compute s / audio s."""

    def number(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    rows = [("file", "MB", "max abs error", "ALE fp32", "ALE change", "clips", "RTF fp32", "RTF")]
    rows += [
        (
            r.file,
            f"{r.bytes / 1e6:.1f}",
            f"{r.max_abs_error:.2e}",
            number(r.ale_fp32, ".5f"),
            number(r.ale_change, "+.1e"),
            str(r.clips),
            number(r.rtf_fp32, ".3f"),
            number(r.rtf_variant, ".3f"),
        )
        for r in reports
    ]
    return _aligned(rows)


@export_app.command("onnx")
def export_onnx_command(
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="Checkpoint directory to export; the bundled default model if omitted."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Folder to export into. Without it the export goes to the cache "
            "($PMMTALK_CACHE_DIR, else ~/.cache/pmmtalk), where serving finds it.",
        ),
    ] = None,
    variants: Annotated[
        str | None,
        typer.Option(help="Also write and score these variants: fp16, int8 or fp16,int8."),
    ] = None,
    corpus: Annotated[
        Path | None,
        typer.Option(
            help="Corpus whose test split scores the variants' ALE; a small held-out corpus "
            "is generated into the cache when omitted."
        ),
    ] = None,
    max_clips: Annotated[
        int | None, typer.Option(min=1, help="Score the variants on at most N corpus clips.")
    ] = None,
    no_cache: Annotated[
        bool,
        typer.Option("--no-cache", help="Export again even where the cache holds this export."),
    ] = False,
    untrained: Annotated[
        str | None,
        typer.Option(
            help="Export a randomly initialised PRESET (lite or paper) instead of a checkpoint "
            "(needs -o): for shape and speed work only.",
            callback=_check_preset,
        ),
    ] = None,
) -> None:
    """Export face_encoder.onnx, speech_to_frames.onnx and stream_window.onnx, check them
    against PyTorch, and print the parity table; exits 1 if a graph is off by more than 1e-4."""
    from export.cache import (
        ExportParityError,
        cache_root,
        checkpoint_digest,
        ensure_exported,
        progress_printer,
        read_manifest,
        write_export,
    )
    from export.onnx import PARITY_TOLERANCE, ParityResult
    from export.quantize import held_out_corpus, make_variants, parse_variants
    from models.corpus.espeak import EngineUnavailableError
    from pmmtalk.animate import DEFAULT_CHECKPOINT_DIR

    if checkpoint is not None and untrained is not None:
        raise _fail("give either --checkpoint or --untrained, not both")
    if untrained is not None and output is None:
        raise _fail("--untrained needs -o OUT: the cache holds exports of checkpoints only")
    try:
        kinds = parse_variants(variants) if variants is not None else ()
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    source = checkpoint if checkpoint is not None else DEFAULT_CHECKPOINT_DIR
    say = progress_printer(True)
    try:
        if output is None:
            exported = ensure_exported(source, force=no_cache)
            manifest = read_manifest(exported.directory)
            results = [ParityResult.from_dict(r) for r in manifest["parity"]["results"]]
            typer.echo(f"{exported.directory}: exported {manifest['created']} from {source}")
        else:
            import torch

            from models.checkpoint import load_checkpoint
            from models.config import preset_config
            from models.pmmtalk import PMMTalk

            if untrained is not None:
                torch.manual_seed(0)
                model = PMMTalk(preset_config(untrained)).eval()
                digest, label = None, f"untrained {untrained} (seed 0)"
            else:
                digest, label = checkpoint_digest(source), str(source)
                say(f"loading checkpoint {source}")
                model = load_checkpoint(source).model
            exported, results = write_export(
                model, output, digest=digest, source=label, progress=say
            )
            typer.echo(f"{exported.directory}: exported from {label}")
    except ExportParityError as exc:
        typer.echo(_parity_table(exc.results))
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=1) from exc
    except (CheckpointError, ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(_parity_table(results))
    worst = max(r.max_abs_error for r in results)
    if worst > PARITY_TOLERANCE:
        typer.secho(
            f"error: ONNX output differs from PyTorch by {worst:.2e} (tolerance "
            f"{PARITY_TOLERANCE:.0e}); do not deploy these files",
            err=True,
            fg=typer.colors.RED,
        )
        raise typer.Exit(code=1)
    if not kinds:
        return
    if corpus is None:
        try:
            say("generating the held-out corpus the variants are scored on (first use only)")
            corpus = held_out_corpus(cache_root())
        except EngineUnavailableError as exc:
            typer.secho(
                f"warning: cannot generate a held-out corpus ({exc}); reporting the variants' "
                "error only, no ALE change (or pass --corpus DIR)",
                err=True,
                fg=typer.colors.YELLOW,
            )
    try:
        reports = make_variants(exported, kinds, corpus, max_clips=max_clips, progress=say)
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(_variant_table(reports))


def _check_triton_kind(kind: str) -> str:
    if kind not in ("cpu", "gpu"):
        raise typer.BadParameter("choose cpu or gpu")
    return kind


ExportCheckpointOption = Annotated[
    Path | None,
    typer.Option(
        help="Checkpoint to export (once, into the export cache); the bundled default "
        "model when neither this nor --export-dir is given."
    ),
]
ExportDirOption = Annotated[
    Path | None,
    typer.Option(
        help="Use this ONNX export directory (face_encoder.onnx, speech_to_frames.onnx, "
        "stream_window.onnx) instead of exporting a checkpoint."
    ),
]


def _export_dir(checkpoint: Path | None, export_dir: Path | None) -> Path:
    """The ONNX export directory a command works from: given, or the checkpoint's cached export."""
    if checkpoint is not None and export_dir is not None:
        raise _fail("give either --checkpoint or --export-dir, not both")
    if export_dir is not None:
        return export_dir
    from export.cache import ExportParityError, ensure_exported
    from pmmtalk.animate import DEFAULT_CHECKPOINT_DIR

    try:
        exported = ensure_exported(checkpoint if checkpoint is not None else DEFAULT_CHECKPOINT_DIR)
    except ExportParityError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=1) from exc
    return exported.directory


@export_app.command("tensorrt")
def export_tensorrt_command(
    checkpoint: ExportCheckpointOption = None,
    export_dir: ExportDirOption = None,
    fp32: Annotated[
        bool, typer.Option("--fp32", help="Float32 engines instead of mixed fp16.")
    ] = False,
    max_batch: Annotated[
        int, typer.Option(min=1, help="Most stream windows one streaming-engine call takes.")
    ] = 16,
    max_seconds: Annotated[
        float, typer.Option(min=0.1, help="Longest clip the offline engine takes, in seconds.")
    ] = 60.0,
    timing_cache: Annotated[
        Path | None,
        typer.Option(
            help="TensorRT timing-cache file; EXPORT_DIR/tensorrt/timing.cache if omitted."
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Rebuild even when matching engines exist.")
    ] = False,
) -> None:
    """Build TensorRT engines (EXPORT_DIR/tensorrt/*.plan) and check them against ONNX Runtime.

    Needs an NVIDIA GPU with TensorRT >= 10 and cuda-python (pip install 'pmmtalk-server[gpu]').
    """
    from export.tensorrt import (
        EngineBuildError,
        TensorRTUnavailableError,
        build_engines,
        describe,
        load_tensorrt,
    )

    try:
        load_tensorrt()  # before an ONNX export that takes minutes
        engines = build_engines(
            _export_dir(checkpoint, export_dir),
            fp16=not fp32,
            max_batch=max_batch,
            max_seconds=max_seconds,
            timing_cache=timing_cache,
            force=force,
        )
    except (TensorRTUnavailableError, CheckpointError, ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc
    except EngineBuildError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=1) from exc
    for line in describe(engines):
        typer.echo(line)
    failed = [result for result in engines.parity if not result.passed]
    if failed:
        typer.secho(
            f"error: {len(failed)} engine check(s) exceed their tolerance; do not deploy these "
            "engines",
            err=True,
            fg=typer.colors.RED,
        )
        raise typer.Exit(code=1)


@export_app.command("triton")
def export_triton_command(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Model repository folder to write.")
    ],
    checkpoint: ExportCheckpointOption = None,
    export_dir: ExportDirOption = None,
    kind: Annotated[
        str,
        typer.Option(
            help="Where Triton runs the models: cpu or gpu (instance_group kind).",
            callback=_check_triton_kind,
        ),
    ] = "cpu",
    max_batch: Annotated[
        int, typer.Option(min=1, help="max_batch_size of the streaming model (windows per call).")
    ] = 16,
    max_queue_delay_us: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="How long dynamic batching may hold a window, microseconds; 2000 if omitted.",
        ),
    ] = None,
    instance_count: Annotated[int, typer.Option(min=1, help="Model instances per device.")] = 1,
) -> None:
    """Write a Triton Inference Server model repository (ONNX Runtime backend) for the model."""
    from export.triton import DEFAULT_MAX_QUEUE_DELAY_US, repository_tree, write_triton_repository

    try:
        root = write_triton_repository(
            _export_dir(checkpoint, export_dir),
            output,
            max_batch=max_batch,
            max_queue_delay_us=(
                DEFAULT_MAX_QUEUE_DELAY_US if max_queue_delay_us is None else max_queue_delay_us
            ),
            instance_count=instance_count,
            kind="gpu" if kind == "gpu" else "cpu",
        )
    except (CheckpointError, ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc
    for line in repository_tree(root):
        typer.echo(line)


@app.command()
def bench(
    quick: Annotated[
        bool, typer.Option(help="A smoke run of a minute or two: too short to judge by.")
    ] = False,
    ns: Annotated[
        str | None,
        typer.Option(help="Client counts to step through, e.g. 1,2,4,8 (default 1,2,4,8,12,...)."),
    ] = None,
    max_n: Annotated[
        int | None, typer.Option(help="Largest client count of the default steps (32).")
    ] = None,
    step_duration_s: Annotated[
        float | None, typer.Option(help="Audio per client in each capacity step (20 s).")
    ] = None,
    soak: Annotated[
        bool, typer.Option(help="Also soak at 75% of the measured capacity (10 minutes).")
    ] = False,
    soak_duration_s: Annotated[
        float | None, typer.Option(help="Length of the timed soak (600 s).")
    ] = None,
    soak_clients: Annotated[
        int | None, typer.Option(help="Clients of the timed soak (default 75% of capacity).")
    ] = None,
    sessions: Annotated[
        int | None, typer.Option(help="Sessions of the sequential soak (1000).")
    ] = None,
    parts: Annotated[
        str,
        typer.Option(help="Comma-separated: offline, capacity, sequential, soak."),
    ] = "offline,capacity,sequential",
    backend: Annotated[
        str, typer.Option(help="The server's runtime backend.", callback=_check_backend)
    ] = "auto",
    presets: Annotated[
        str | None,
        typer.Option(help="Offline presets (default lite, and paper where a GPU is present)."),
    ] = None,
    clips: Annotated[
        str | None, typer.Option(help="Offline clip lengths in seconds (default 1,10,60).")
    ] = None,
    backends: Annotated[
        str, typer.Option(help="Offline backends to time, where present.")
    ] = "torch,onnx,tensorrt",
    note: Annotated[str, typer.Option(help="A line for the report (e.g. the load).")] = "",
    out: Annotated[
        Path | None, typer.Option(help="Report folder (default docs/benchmarks).")
    ] = None,
) -> None:
    """Benchmark this machine: offline speed, streaming capacity, soak runs.

    Starts its own server on a loopback port and writes bench.md, bench.json
    and PNG plots into docs/benchmarks (see docs/benchmarks/README.md).
    About 15 minutes on 2 cores; --soak adds 10 more.
    """
    from benchmarks.bench import DOCS_DIR, BenchOptions, parse_floats, parse_ints, parse_names
    from benchmarks.bench import run as run_bench
    from benchmarks.progress import RichReporter

    chosen = parse_names(parts) + (("soak",) if soak and "soak" not in parts else ())
    offline_presets = None if presets is None else parse_names(presets)
    unknown = [name for name in offline_presets or () if name not in PRESETS]
    if unknown:
        raise _fail(f"unknown preset(s) {unknown}; choose from {sorted(PRESETS)}")
    try:
        options = BenchOptions(
            quick=quick,
            parts=chosen,
            ns=None if ns is None else parse_ints(ns, "--ns"),
            max_n=max_n,
            step_duration_s=step_duration_s,
            sessions=sessions,
            soak_duration_s=soak_duration_s,
            soak_clients=soak_clients,
            backend=backend,
            offline_backends=parse_names(backends),
            presets=offline_presets,
            clips_s=None if clips is None else parse_floats(clips, "--clips"),
            note=note,
            out_dir=DOCS_DIR if out is None else out,
        )
    except ValueError as exc:
        raise _fail(str(exc)) from None
    try:
        with RichReporter() as reporter:
            result = run_bench(options, reporter)
    except (FileNotFoundError, RuntimeError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"wrote {options.out_dir / 'bench.md'} and bench.json beside it")
    if result.capacity is not None:
        typer.echo(f"real-time clients: {result.capacity.describe()}")

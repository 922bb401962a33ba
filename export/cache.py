"""Exported ONNX files, cached per checkpoint and stream window, so a server never re-exports.

Layout under the cache root (``$PMMTALK_CACHE_DIR``, else ``~/.cache/pmmtalk``)::

    exports/<digest[:16]>-<window tag>/     one export: face_encoder.onnx, speech_to_frames.onnx,
                                            stream_window.onnx and manifest.json
    exports/<digest[:16]>-<window tag>.lock the lock one exporting process holds

``digest`` is `checkpoint_digest`, the sha256 of the checkpoint's config and weights, so a
retrained checkpoint gets a new entry and an unchanged one is found again however its folder is
named; the window tag (``ctx1.5s-hop0.2s-la0.3s``) keeps exports for different stream windows
apart. ``manifest.json`` records what the entry was made from (digest, window, exporter version),
each file's sha256, the parity results and any fp16/int8 variants (`export.quantize`); an entry
whose manifest disagrees, or whose graph files are missing or altered, is exported again.

A new entry is exported into a temporary folder beside its final place, checked for parity, and
renamed into place, so other processes see either no entry or a complete one; an advisory lock
per entry makes a second process wait for the first one's export instead of repeating it.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from export.backends.base import BackendUnavailableError
from export.graphs import DEFAULT_WINDOW, OPSET_VERSION, PARITY_TOLERANCE, ExportedModel
from models.checkpoint_format import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, read_config
from models.streaming import StreamWindow

if TYPE_CHECKING:  # exporting needs torch; a cache hit does not, and imports none of it
    from export.onnx import ParityResult
    from models.pmmtalk import PMMTalk

logger = logging.getLogger(__name__)

CACHE_DIR_ENV: Final = "PMMTALK_CACHE_DIR"
DEFAULT_CACHE_DIR: Final = Path("~/.cache/pmmtalk")
EXPORTS_DIR: Final = "exports"
MANIFEST_FILE: Final = "manifest.json"
MANIFEST_FORMAT: Final = "pmmtalk-onnx-export"
EXPORTER_VERSION: Final = 4
"""Bump when the exported graphs or the manifest change meaning: older entries then re-export."""
DIGEST_PREFIX_CHARS: Final = 16
HASH_CHUNK_BYTES: Final = 1 << 20
GRAPHS: Final = ("face_encoder", "speech_to_frames", "stream_window")
"""The `ExportedModel` fields naming the three graph files, as keys of the manifest's ``files``."""

Progress = Callable[[str], None]


class ExportParityError(RuntimeError):
    """An export's ONNX outputs differ from PyTorch by more than `PARITY_TOLERANCE`."""

    def __init__(self, results: Sequence[ParityResult]) -> None:
        self.results = list(results)
        worst = max(self.results, key=lambda r: r.max_abs_error)
        super().__init__(
            f"ONNX output differs from PyTorch by {worst.max_abs_error:.2e} on {worst.graph} "
            f"({worst.input}), over the tolerance {PARITY_TOLERANCE:.0e}, so nothing was "
            "cached; run this checkpoint with --backend torch, and report the failure with its "
            "config.json (the exporter needs a fix)"
        )


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir`` if given, else ``$PMMTALK_CACHE_DIR``, else ``~/.cache/pmmtalk``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR).expanduser()


def _hash_file(path: Path, digest: Any) -> None:
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    _hash_file(Path(path), digest)
    return digest.hexdigest()


def checkpoint_digest(directory: str | Path) -> str:
    """Hex sha256 over a checkpoint's ``config.json`` and ``model.safetensors`` bytes.

    Each file's name and size go in ahead of its bytes, so no two different pairs of files can
    give the same stream. Raises `CheckpointError` when the folder, its config or its weights
    are missing, or the config is not a PMMTalk checkpoint config.
    """
    folder = Path(directory)
    read_config(folder)  # names what is missing or malformed, as loading would
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{folder} is not a PMMTalk checkpoint: {WEIGHTS_FILE} is missing")
    digest = hashlib.sha256()
    for path in (folder / CONFIG_FILE, weights):
        digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        _hash_file(path, digest)
    return digest.hexdigest()


def window_tag(window: StreamWindow) -> str:
    """The window's part of a cache key, e.g. ``ctx1.5s-hop0.2s-la0.3s``."""
    return f"ctx{window.left_context_s:g}s-hop{window.hop_s:g}s-la{window.lookahead_s:g}s"


def export_dir_for(
    digest: str, window: StreamWindow = DEFAULT_WINDOW, cache_dir: str | Path | None = None
) -> Path:
    """Where the export of the checkpoint with this digest, for ``window``, is cached."""
    key = f"{digest[:DIGEST_PREFIX_CHARS]}-{window_tag(window)}"
    return cache_root(cache_dir) / EXPORTS_DIR / key


def progress_printer(enabled: bool) -> Progress:
    """A progress callback: lines with the elapsed time on stderr, or log lines when disabled."""
    started = time.perf_counter()

    def say(message: str) -> None:
        if enabled:
            print(
                f"[{time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True
            )
        else:
            logger.info("%s", message)

    return say


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    return {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def file_entry(path: Path) -> dict[str, Any]:
    """Name, size and sha256 of a graph file, and under ``external_data`` the same for each
    side file holding its weights (`export.external`; none for a single-file graph)."""
    from export.external import external_files

    entry: dict[str, Any] = _hashed(path)
    side = external_files(path)
    if side:
        entry["external_data"] = [_hashed(path.parent / name) for name in side]
    return entry


def _hashed(path: Path) -> dict[str, Any]:
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def _entry_problem(folder: Path, entry: dict[str, Any]) -> str | None:
    """Why a recorded file entry does not match the file on disk, or None when it does."""
    path = folder / str(entry.get("name"))
    if not path.is_file():
        return f"{path.name} is missing"
    if path.stat().st_size != entry.get("bytes") or file_sha256(path) != entry.get("sha256"):
        return f"{path.name} does not match its recorded sha256 (altered or corrupt)"
    return None


def _write_json_atomic(path: Path, document: dict[str, Any]) -> None:
    """Write then rename, so a reader never sees half a manifest."""
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    staging.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    os.replace(staging, path)


def write_export(
    model: PMMTalk,
    out_dir: str | Path,
    *,
    window: StreamWindow = DEFAULT_WINDOW,
    digest: str | None = None,
    source: str = "",
    face: np.ndarray | None = None,
    progress: Progress | None = None,
) -> tuple[ExportedModel, list[ParityResult]]:
    """Export the three graphs of ``model`` to ``out_dir``, check parity, write manifest.json.

    ``digest`` is the checkpoint's `checkpoint_digest` (None for a model that has no checkpoint)
    and ``source`` says in words where the model came from; both go into the manifest. ``face``
    is the parity photo (RGB uint8 (H, W, 3); None: the bundled default face). Parity results
    are returned and recorded, not enforced: the caller decides what a failure means.
    """
    from export.onnx import check_parity, export_onnx

    say = progress if progress is not None else progress_printer(False)
    exported = export_onnx(model, out_dir, window, on_step=lambda name: say(f"exporting {name}"))
    say("checking ONNX Runtime against PyTorch (parity)")
    results = check_parity(model, exported, face=face)
    manifest = {
        "format": MANIFEST_FORMAT,
        "exporter_version": EXPORTER_VERSION,
        "opset": OPSET_VERSION,
        "checkpoint_digest": digest,
        "source": source,
        "preset": model.cfg.preset,
        "window": window.to_dict(),
        "files": {graph: file_entry(getattr(exported, graph)) for graph in GRAPHS},
        "parity": {
            "tolerance": PARITY_TOLERANCE,
            "face": "bundled default face" if face is None else "given photo",
            "passed": all(r.passed for r in results),
            "results": [r.to_dict() for r in results],
        },
        "variants": {},
        "versions": _versions(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _write_json_atomic(exported.directory / MANIFEST_FILE, manifest)
    return exported, results


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest.json of an export directory; ValueError if it is missing or unreadable."""
    path = Path(directory) / MANIFEST_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ValueError(f"{path} is missing") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is unreadable: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not a PMMTalk export manifest")
    return document


def update_manifest(directory: str | Path, key: str, value: Any) -> None:
    """Set one top-level entry of an export's manifest.json (atomically replaced)."""
    manifest = read_manifest(directory)
    manifest[key] = value
    _write_json_atomic(Path(directory) / MANIFEST_FILE, manifest)


def verify_export(
    directory: str | Path, digest: str | None = None, window: StreamWindow | None = None
) -> str | None:
    """Why the export in ``directory`` cannot be used, or None when it can.

    Usable means: the manifest is this exporter version's, matches ``digest`` and ``window``
    where given, says parity passed, and every graph file exists with the recorded sha256.
    """
    folder = Path(directory)
    if not folder.is_dir():
        return "not exported yet"
    try:
        manifest = read_manifest(folder)
    except ValueError as exc:
        return str(exc)
    if manifest.get("exporter_version") != EXPORTER_VERSION:
        return f"exported by exporter version {manifest.get('exporter_version')}"
    if digest is not None and manifest.get("checkpoint_digest") != digest:
        return "exported from another checkpoint"
    if window is not None and manifest.get("window") != json.loads(json.dumps(window.to_dict())):
        return "exported for another stream window"
    if not manifest.get("parity", {}).get("passed", False):
        return "its parity check failed"
    files = manifest.get("files", {})
    for graph in GRAPHS:
        entry = files.get(graph)
        if not isinstance(entry, dict):
            return f"the manifest lists no {graph} file"
        for recorded in [entry, *entry.get("external_data", [])]:
            problem = _entry_problem(folder, recorded)
            if problem is not None:
                return problem
    return None


@contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an advisory lock on ``lock_path`` (created if needed) for the block.

    flock locks die with their process, so a crashed exporter never leaves a stale lock.
    """
    with lock_path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("another process is exporting to %s; waiting for it", lock_path.stem)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _install(staging: Path, target: Path) -> None:
    """Rename the finished ``staging`` folder to ``target``, replacing an unusable old one."""
    if target.exists():
        # A folder cannot be renamed onto a non-empty one; move the old entry aside first.
        retired = target.with_name(f".{target.name}.old-{uuid.uuid4().hex}")
        os.rename(target, retired)
        os.rename(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, target)


def _export_into_cache(
    checkpoint_dir: Path, digest: str, target: Path, window: StreamWindow, say: Progress
) -> ExportedModel:
    from models.checkpoint import load_checkpoint

    say(f"loading checkpoint {checkpoint_dir}")
    model = load_checkpoint(checkpoint_dir).model
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it owner-only; a shared cache must stay readable
    try:
        _, results = write_export(
            model, staging, window=window, digest=digest, source=str(checkpoint_dir), progress=say
        )
        if not all(r.passed for r in results):
            raise ExportParityError(results)
        if checkpoint_digest(checkpoint_dir) != digest:
            raise CheckpointError(
                f"{checkpoint_dir} changed while it was being exported (is training writing "
                "to it?); run again once it is finished"
            )
        _install(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful install
    say(f"cached in {target}")
    return ExportedModel.in_directory(target)


def ensure_exported(
    checkpoint_dir: str | Path,
    *,
    window: StreamWindow = DEFAULT_WINDOW,
    cache_dir: Path | None = None,
    progress: bool = True,
    force: bool = False,
) -> ExportedModel:
    """The cached export of a checkpoint for ``window``, exporting it first if needed.

    A usable cached entry (see `verify_export`) is returned as it is, without loading the
    checkpoint. Otherwise the checkpoint is exported (tens of seconds to minutes on a CPU),
    checked for parity against PyTorch, and installed atomically; an unusable entry is replaced
    after a warning naming what was wrong. ``force`` exports again even over a usable entry.
    ``progress`` prints a line per slow step on stderr.

    Raises `CheckpointError` for a missing or corrupt checkpoint, `ExportParityError` when
    the exported graphs disagree with PyTorch (nothing is cached then), and
    `BackendUnavailableError` when an export is needed but PyTorch is not installed.
    """
    folder = Path(checkpoint_dir)
    digest = checkpoint_digest(folder)
    target = export_dir_for(digest, window, cache_dir)
    if not force:
        problem = verify_export(target, digest, window)
        if problem is None:
            logger.info("using the cached export %s", target)
            return ExportedModel.in_directory(target)
        if target.exists():
            logger.warning(
                "the cached export %s is unusable (%s); exporting again", target, problem
            )
    if importlib.util.find_spec("torch") is None:
        # A serving install (the Docker images) has no PyTorch: say so, not ModuleNotFoundError.
        raise BackendUnavailableError(
            f"no usable export of {folder} for the stream window {window} in {target.parent}, "
            "and making one needs PyTorch, which is not installed here; export it where PyTorch "
            "is (`pmmtalk export onnx`) and point model.cache_dir or model.export_dir at it"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(target.with_name(f"{target.name}.lock")):
        # Whoever held the lock before us may have just exported this very entry.
        if not force and verify_export(target, digest, window) is None:
            logger.info("another process exported %s meanwhile; using it", target)
            return ExportedModel.in_directory(target)
        return _export_into_cache(folder, digest, target, window, progress_printer(progress))

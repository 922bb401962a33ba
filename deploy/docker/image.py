"""What the Docker images run around `pmmtalk serve`, installed as /usr/local/bin/pmmtalk-image.

``pmmtalk-image export`` (the Dockerfile's export stage, with PyTorch): export the model that the
server's settings name (the bundled default model unless ``PMMTALK_MODEL__CHECKPOINT`` says
otherwise) for the server's stream window, into the export cache (``$PMMTALK_CACHE_DIR``).
It reads the window from the same ``PMMTALK_STREAM__*`` settings the server will read, so an
image built with a non-default window still finds its export at start.

``pmmtalk-image start-gpu [SERVE ARGS]`` (the gpu image's command, without PyTorch):

1. Seed the cache volume (``$PMMTALK_CACHE_DIR``) with the exports baked into the image
   (``$PMMTALK_BAKED_CACHE``), one entry at a time. An entry already there is kept, with the
   engines an earlier start built in it; a newer image's model (a new checkpoint digest, so a
   new entry) is added beside it, since the image has no PyTorch to export one at run time.
2. Build TensorRT engines into the server's entry with `pmmtalk export tensorrt`, which reuses
   engines that match this GPU, TensorRT version and settings, so only a first start waits
   minutes. The engines' limits come from the server's settings, so an `/animate` clip of
   ``limits.max_audio_s`` (padded by the stream window) and a batch of ``batch.max_batch_size``
   windows always fit (docs/server.md, "TensorRT engines").
3. Replace this process with ``pmmtalk serve SERVE ARGS``.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from export.cache import EXPORTS_DIR, cache_root, checkpoint_digest, export_dir_for
from pmmtalk.animate import DEFAULT_CHECKPOINT_DIR
from server.settings import ServerSettings

BAKED_CACHE_ENV: Final = "PMMTALK_BAKED_CACHE"
PARTIAL_PREFIX: Final = ".partial-"
"""An entry being copied is named so until complete; the export cache never matches the name."""


def checkpoint_of(settings: ServerSettings) -> Path:
    """The checkpoint the server runs: the settings' one, else the bundled default model."""
    return settings.model.checkpoint or DEFAULT_CHECKPOINT_DIR


def entry_for(settings: ServerSettings) -> Path:
    """The cache entry the server looks up for its model and stream window (export.cache)."""
    digest = checkpoint_digest(checkpoint_of(settings))
    return export_dir_for(digest, settings.stream.window(), settings.model.cache_dir)


def export(settings: ServerSettings) -> Path:
    """Export the server's model for its window into the cache (needs PyTorch); its folder."""
    from export.cache import ensure_exported

    exported = ensure_exported(
        checkpoint_of(settings),
        window=settings.stream.window(),
        cache_dir=settings.model.cache_dir,
    )
    return exported.directory


def seed(baked_root: Path, cache: Path) -> list[str]:
    """Copy each export entry of ``baked_root`` missing from ``cache``; the names copied.

    Both are export-cache roots (holding ``exports/``). A copy goes to a temporary name first
    and is renamed when complete, so an interrupted start never leaves half an entry behind.
    """
    source = baked_root / EXPORTS_DIR
    target = cache / EXPORTS_DIR
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    entries = sorted(source.iterdir()) if source.is_dir() else []
    for entry in entries:
        if not entry.is_dir() or (target / entry.name).exists():
            continue
        partial = target / f"{PARTIAL_PREFIX}{entry.name}"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(entry, partial)
        partial.rename(target / entry.name)
        copied.append(entry.name)
    return copied


def engine_limits(settings: ServerSettings) -> tuple[int, int]:
    """(longest clip in seconds, most windows per call) the engines must take for ``settings``.

    The offline engine sees an `/animate` clip with the window's left context and lookahead
    added, and the server needs the clip length strictly below the engine's, hence the extra
    second.
    """
    padding_s = settings.stream.left_context_s + settings.stream.lookahead_s
    max_seconds = math.ceil(settings.limits.max_audio_s + padding_s) + 1
    return max_seconds, settings.batch.max_batch_size


def engine_command(settings: ServerSettings) -> list[str]:
    """The `pmmtalk export tensorrt` command building the server's engines."""
    max_seconds, max_batch = engine_limits(settings)
    return [
        "pmmtalk",
        "export",
        "tensorrt",
        "--export-dir",
        str(entry_for(settings)),
        "--max-seconds",
        str(max_seconds),
        "--max-batch",
        str(max_batch),
    ]


def start_gpu(settings: ServerSettings, serve_args: Sequence[str]) -> int:
    """Seed the cache, build the engines, then exec `pmmtalk serve`; returns only on failure."""
    baked = Path(os.environ.get(BAKED_CACHE_ENV, "/opt/pmmtalk/cache"))
    cache = cache_root(settings.model.cache_dir)
    for name in seed(baked, cache):
        print(f"pmmtalk-image: copied the baked export {name} into {cache}", flush=True)
    entry = entry_for(settings)
    if not entry.is_dir():
        print(
            f"pmmtalk-image: no export of the model for this stream window in {cache} "
            f"(looked for {entry.name}). The image bakes one for its build-time settings only; "
            "serve with the default PMMTALK_STREAM__* settings, or mount an export made "
            "elsewhere (docs/deploy.md)",
            file=sys.stderr,
        )
        return 2
    command = engine_command(settings)
    print(f"pmmtalk-image: {' '.join(command)}", flush=True)
    built = subprocess.run(command, check=False)
    if built.returncode != 0:
        return built.returncode
    os.execvp("pmmtalk", ["pmmtalk", "serve", *serve_args])
    return 0  # not reached: execvp replaces this process or raises


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pmmtalk-image", description="What the Docker images run around `pmmtalk serve`."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("export", help="export the server's model for its window (build time)")
    commands.add_parser("start-gpu", help="seed the cache, build engines, then pmmtalk serve")
    args, rest = parser.parse_known_args(argv)
    if args.command == "export" and rest:
        parser.error(f"export takes no arguments, got {' '.join(rest)}")
    settings = ServerSettings()
    if args.command == "export":
        print(export(settings), flush=True)
        return 0
    return start_gpu(settings, rest)


if __name__ == "__main__":
    sys.exit(main())

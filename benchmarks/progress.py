"""Progress for long benchmark runs: one interface, a terminal display and a quiet one.

The measuring code only calls `Reporter` methods, so tests run it with `LogReporter` and
`pmmtalk bench` shows a live bar with `RichReporter` (rich ships with typer).
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rich.progress import TaskID

logger = logging.getLogger(__name__)


class Reporter(Protocol):
    def stage(self, description: str, total: float | None = None) -> None:
        """A new stage begins; ``total`` is its length in whatever ``advance`` counts."""

    def advance(self, completed: float, note: str = "") -> None:
        """How far the current stage has come (same unit as its total)."""

    def line(self, text: str) -> None:
        """A result worth keeping on screen (and in the log)."""


class LogReporter:
    """Stages and results as log lines; progress within a stage is not shown."""

    def stage(self, description: str, total: float | None = None) -> None:
        logger.info("%s ...", description)

    def advance(self, completed: float, note: str = "") -> None:
        return None

    def line(self, text: str) -> None:
        logger.info("%s", text)


class RichReporter:
    """A live bar per stage on the terminal; finished stages stay listed above it."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:>6.0f}/{task.total:<6.0f}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[note]}"),
        )
        self._task: TaskID | None = None

    def __enter__(self) -> RichReporter:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._finish()
        self._progress.stop()

    def _finish(self) -> None:
        if self._task is not None:
            task = self._progress.tasks[-1]
            if task.total is not None:
                self._progress.update(self._task, completed=task.total)
            self._progress.stop_task(self._task)

    def stage(self, description: str, total: float | None = None) -> None:
        self._finish()
        self._task = self._progress.add_task(description, total=total or 1.0, note="")

    def advance(self, completed: float, note: str = "") -> None:
        if self._task is not None:
            self._progress.update(self._task, completed=completed, note=note)

    def line(self, text: str) -> None:
        self._progress.console.print(text, highlight=False, markup=False)
        logger.debug("%s", text)

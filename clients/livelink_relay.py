"""Relay a stream's frames to Unreal as Live Link Face packets, one every 1/30 s.

A stream's frames arrive in bursts (one hop's worth at a time), but Unreal shows each Live Link
packet as it lands, so sending a burst at once makes the face jump. `LiveLinkRelay` queues the
frames and a thread sends frame ``i`` at ``t0 + i / fps``, where ``t0`` is when the first frame of
the utterance arrived: the face then moves at the audio's pace, one hop behind the speech.
"""

from __future__ import annotations

import queue
import threading
import time
from types import TracebackType
from typing import Final

import numpy as np

from pmmtalk.rigs.livelink import LiveLinkSink

_STOP: Final = None


class LiveLinkRelay:
    """Paces frames (n, 52) or (n, 61) to a `LiveLinkSink` at the sink's frame rate.

    ``push`` never blocks (it is called from the client's receive loop); ``close`` sends what is
    queued, then stops the thread. A frame already late is sent at once, never dropped.
    """

    def __init__(self, sink: LiveLinkSink) -> None:
        self.sink = sink
        self.sent = 0
        self._queue: queue.SimpleQueue[tuple[int, np.ndarray] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="livelink-relay", daemon=True)
        self._thread.start()

    def push(self, start_index: int, frames: np.ndarray) -> None:
        """Queue frames ``start_index`` ... ``start_index + n - 1`` of the current utterance."""
        for offset, row in enumerate(np.asarray(frames, dtype=np.float32)):
            self._queue.put((start_index + offset, row))

    def _run(self) -> None:
        origin: float | None = None
        while (item := self._queue.get()) is not _STOP:
            index, row = item
            now = time.monotonic()
            if origin is None:
                origin = now - index / self.sink.fps
            delay = origin + index / self.sink.fps - now
            if delay > 0:
                time.sleep(delay)
            self.sink.send(index, row)
            self.sent += 1

    def close(self) -> None:
        """Send every queued frame at its pace, then stop; the sink is closed too."""
        self._queue.put(_STOP)
        self._thread.join()
        self.sink.close()

    def __enter__(self) -> LiveLinkRelay:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

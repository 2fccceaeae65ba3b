"""A background writer thread with a bounded queue.

Why: encoding (checksums) and writing blocks to disk or a remote store take milliseconds per
block; doing it on the decode step would stall every request in the batch. The caller copies the
block bytes out synchronously and hands the copy here; when the queue is full the job is dropped
(counted) rather than blocking the step - a lost write only costs a future recompute.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("pagedkv.tiers")

Job = Callable[[], None]


class BackgroundWriter:
    """Runs jobs in submission order on one daemon thread; never raises from a job."""

    def __init__(self, max_queue: int = 64, name: str = "pagedkv-tier-writer") -> None:
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max(1, max_queue))
        self.dropped = 0
        self.failed = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> bool:
        """Queue ``job``; False (and counted in ``dropped``) when the queue is full or closed."""
        if self._closed:
            self.dropped += 1
            return False
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def flush(self) -> None:
        """Block until every queued job has run."""
        self._queue.join()

    def close(self) -> None:
        """Run what is queued, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                job()
            except Exception:
                self.failed += 1
                if self.failed == 1:
                    log.exception("kv tier background write failed (logged once)")
            finally:
                self._queue.task_done()

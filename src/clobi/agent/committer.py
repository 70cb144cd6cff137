"""One store call at a time on a thread of its own, so the agent's loop keeps reaping and
starting jobs while a report-and-claim is under way.

A commit is the slow part of a short job's cycle: an fsync on SQLite (~0.3 ms, more while
another agent holds the write lock), an HTTP round trip through a server to PostgreSQL in a
shared session (several ms). Done inline, the agent's slots stand idle meanwhile even though
claimed jobs wait in its backlog. The loop hands the call to the committer and goes on; when
the call ends, the committer's file descriptor turns readable (the loop polls it with the
jobs' pidfds) and the loop takes the result and applies it itself: the agent's state is only
ever touched by the loop's thread.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Done:
    """How the call ended: its value, or the exception it raised."""

    value: Any = None
    error: BaseException | None = None


class Committer:
    """Runs submitted calls one at a time on a daemon thread (started on first use)."""

    def __init__(self, name: str = "clobi-commit") -> None:
        self._name = name
        self._cond = threading.Condition()
        self._call: Callable[[], Any] | None = None
        self._done: Done | None = None
        self._busy = False
        self._closing = False
        self._thread: threading.Thread | None = None
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    @property
    def busy(self) -> bool:
        """A call was submitted and its result not taken yet."""
        return self._busy

    def fileno(self) -> int:
        """Readable once the submitted call has ended."""
        return self._read_fd

    def submit(self, call: Callable[[], Any]) -> None:
        """Start `call` on the thread. One at a time: `take` the previous result first."""
        if self._busy:
            raise RuntimeError("the committer is busy")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        with self._cond:
            self._busy = True
            self._call = call
            self._cond.notify()

    def take(self, wait: bool = False) -> Done | None:
        """The ended call's result (once), or None while it runs (`wait`: block until it
        ends) or when nothing was submitted."""
        with self._cond:
            if wait:
                while self._busy and self._done is None:
                    self._cond.wait()
            done, self._done = self._done, None
            if done is None:
                return None
            self._busy = False
            # The byte is written with the result, under the lock: readable iff a result waits.
            with contextlib.suppress(BlockingIOError):
                os.read(self._read_fd, 64)
        return done

    def close(self) -> None:
        """Let a running call end, then stop the thread and release the descriptors."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
        os.close(self._read_fd)
        os.close(self._write_fd)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._call is None and not self._closing:
                    self._cond.wait()
                if self._call is None:
                    return
                call, self._call = self._call, None
            try:
                done = Done(value=call())
            except BaseException as exc:  # handed to the loop, which decides what it means
                done = Done(error=exc)
            with self._cond:
                self._done = done
                with contextlib.suppress(BlockingIOError):
                    os.write(self._write_fd, b"!")
                self._cond.notify_all()

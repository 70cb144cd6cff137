"""Attempt directories, recycled: on ext4 a rename costs ~10 µs where mkdir + rmdir of the
directory and its `job/` cost ~400 µs, a large share of a short job's overhead.

A finished attempt whose `job/` is empty stays where it is and becomes free (its `stdout` and
`stderr` files stay and are truncated when the next job opens them); the next attempt renames
it to its own name: one rename per job. Anything else is removed. Free directories are gone
when the agent closes; an agent killed with -9 leaves them behind, like the directories of
the attempts it was running.
"""

from __future__ import annotations

import contextlib
import os
import shutil

MAX_FREE = 64


class WorkDirs:
    """One agent's attempt directories under `work_dir`."""

    def __init__(self, work_dir: str, owner: str) -> None:
        self.work_dir = work_dir
        self.free: list[str] = []
        # An earlier agent version kept its free directories in a pool of its own.
        shutil.rmtree(f"{work_dir}/.free-{owner}", ignore_errors=True)

    def make(self, root: str) -> None:
        """Provide an empty attempt directory `root` with an empty `root/job`."""
        while self.free:
            with contextlib.suppress(OSError):  # removed behind our back: make a new one
                os.rename(self.free.pop(), root)
                return
        os.mkdir(root)
        os.mkdir(root + "/job")

    def release(self, root: str) -> None:
        """Keep `root` for a later attempt if the job left `job/` empty, else delete it."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(root + "/attempt.log")
        if len(self.free) < MAX_FREE and _is_empty(root + "/job"):
            self.free.append(root)
            return
        shutil.rmtree(root, ignore_errors=True)

    def close(self) -> None:
        for root in self.free:
            shutil.rmtree(root, ignore_errors=True)
        self.free.clear()


def _is_empty(path: str) -> bool:
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is None
    except OSError:
        return False

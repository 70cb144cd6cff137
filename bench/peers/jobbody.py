"""What every Python peer's task does: run `/bin/true` as a process, and record its index in
an append-only file of fixed-size records, so lost and duplicated jobs can be counted."""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from pathlib import Path

RECORD_BYTES = 9  # "%08d\n"
ENV_RESULTS = "BENCH_RESULTS"

_fd: int | None = None


def run(index: int) -> int:
    """The job: one `/bin/true`; its index is recorded when it succeeded."""
    code = subprocess.run(["/bin/true"], check=False).returncode
    if code == 0:
        _record(index)
    return code


def _record(index: int) -> None:
    global _fd
    if _fd is None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        _fd = os.open(os.environ[ENV_RESULTS], flags, 0o644)
    os.write(_fd, b"%08d\n" % index)  # one write under O_APPEND: records never interleave


def count(path: Path) -> int:
    """Records so far (cheap: one stat)."""
    try:
        return path.stat().st_size // RECORD_BYTES
    except FileNotFoundError:
        return 0


def check(path: Path, n: int) -> tuple[int, int, int]:
    """(distinct indexes done, lost, duplicated) among indexes 0..n-1."""
    try:
        seen = Counter(int(line) for line in path.read_bytes().split())
    except FileNotFoundError:
        seen = Counter()
    done = sum(1 for i in range(n) if seen[i] >= 1)
    dups = sum(c - 1 for c in seen.values() if c > 1) + sum(
        c for i, c in seen.items() if not 0 <= i < n
    )
    return done, n - done, dups

"""The machine a run happens on, and P: the physical limit every throughput is a share of.

P = the rate of spawning and reaping `/bin/true` with `os.posix_spawn`, as many in flight as
there are cores, in this process. Its CPU per job (this process + the children) is the least
any system can spend per no-op job; the children's share is the jobs' own CPU.
"""

from __future__ import annotations

import os
import platform
import resource
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

TRUE = "/bin/true"
CLK_TCK = os.sysconf("SC_CLK_TCK")
_ENV = {"PATH": "/usr/bin:/bin"}


def cores() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


@dataclass
class PResult:
    inflight: int
    jobs: int
    seconds: float
    rate: float
    cpu_ms_per_job: float  # spawner + children
    child_cpu_ms_per_job: float  # the jobs' own

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_p(inflight: int, seconds: float = 2.0, warmup: int = 200) -> PResult:
    """Spawn and reap /bin/true for `seconds` with `inflight` at a time. This process must
    have no other children that could exit meanwhile (os.wait reaps any child)."""
    _spawn_batch(inflight, warmup)
    self0, kids0 = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    jobs = _spawn_for(inflight, seconds)
    elapsed = time.perf_counter() - started
    kids = _cpu(resource.RUSAGE_CHILDREN) - kids0
    total = _cpu(resource.RUSAGE_SELF) - self0 + kids
    return PResult(inflight, jobs, elapsed, jobs / elapsed, total / jobs * 1000, kids / jobs * 1000)


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _spawn() -> int:
    return os.posix_spawn(TRUE, [TRUE], _ENV)


def _reap_one() -> None:
    _, status = os.wait()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError("/bin/true failed")


def _spawn_batch(inflight: int, count: int) -> None:
    running = 0
    for _ in range(count):
        if running == inflight:
            _reap_one()
            running -= 1
        _spawn()
        running += 1
    for _ in range(running):
        _reap_one()


def _spawn_for(inflight: int, seconds: float) -> int:
    deadline = time.perf_counter() + seconds
    done = 0
    for _ in range(inflight):
        _spawn()
    while True:
        _reap_one()
        done += 1
        if time.perf_counter() >= deadline:
            break
        _spawn()
    for _ in range(inflight - 1):
        _reap_one()
        done += 1
    return done


def spawn_latency_s(n: int) -> list[float]:
    """The floor for W2: spawn one /bin/true and wait for it, `n` times."""
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        _spawn()
        _reap_one()
        samples.append(time.perf_counter() - t)
    return samples


def info(workdir: Path) -> dict[str, Any]:
    """What the table's reader needs to know about this machine."""
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": cores(),
        "memory_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "sqlite": sqlite3.sqlite_version,
        "workdir_fs": _filesystem(workdir),
        "clobi_source": _source_version(),
        "busy_before": background_busy(),
    }


def _source_version() -> str:
    """The commit the measured Clobi is built from, and whether the tree had local changes."""
    repo = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "src")
    return f"{commit}{' + local changes in src/' if dirty else ''}"


def background_busy(seconds: float = 1.0) -> str:
    """How busy the machine is without us: the CPU share used by others over `seconds`, and
    the load average. Other work on these cores lowers every figure of the run."""
    with Others() as others:
        time.sleep(seconds)
    return f"{others.share:.0%} of all cores; load average {os.getloadavg()[0]:.2f}"


def wait_quiet(timeout_s: float, threshold: float = 0.10) -> None:
    """Wait (up to `timeout_s`) until others use less than `threshold` of the cores."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with Others() as others:
            time.sleep(1.0)
        if others.share < threshold:
            return
        print(f"bench: others use {others.share:.0%} of the cores; waiting", file=sys.stderr)


class Others:
    """Measures the CPU share of all cores that processes other than this one and its
    (reaped) children used while the block ran."""

    share = 0.0

    def __enter__(self) -> Others:
        self._busy, self._ours, self._t = _busy_s(), _ours_s(), time.monotonic()
        return self

    def __exit__(self, *_: object) -> None:
        others = (_busy_s() - self._busy) - (_ours_s() - self._ours)
        self.share = max(0.0, others / (cores() * max(1e-9, time.monotonic() - self._t)))


def _busy_s() -> float:
    """Seconds of CPU all cores spent busy since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / CLK_TCK  # minus idle and iowait


def _ours_s() -> float:
    return _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def _filesystem(path: Path) -> str:
    """The type of the filesystem holding `path` (fsync costs differ: ext4 vs tmpfs)."""
    best, kind = "", "unknown"
    target = str(path.resolve())
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mount = parts[1]
            prefix = mount.rstrip("/") + "/"
            if (target == mount or target.startswith(prefix)) and len(mount) > len(best):
                best, kind = mount, parts[2]
    except OSError:
        pass
    return kind

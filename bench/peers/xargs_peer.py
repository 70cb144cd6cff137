"""`xargs -P <workers>`: no queue, no bookkeeping, no durability; the practical ceiling for
running a list of commands. Checked by its exit status (123 if any command failed)."""

from __future__ import annotations

import resource
import subprocess
import time

from bench.measure import DrainResult
from bench.peers import Counts, PeerContext


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Xargs:
    name = "xargs"

    def __init__(self, ctx: PeerContext) -> None:
        self.ctx = ctx
        self.config = f"-P {ctx.cores} -n 1"
        self.counts = Counts(0, 0, 0)

    def setup(self) -> None:
        pass

    def drain(self, n: int, workers: int) -> DrainResult:
        listing = self.ctx.workdir / "args.txt"
        listing.write_text("".join(f"{i}\n" for i in range(n)))
        result = DrainResult(self.name, f"-P {workers} -n 1", n, verified_by="exit status")
        cpu0 = _children_cpu_s()
        started = time.monotonic()
        with listing.open("rb") as args:
            code = subprocess.run(
                ["xargs", "-P", str(workers), "-n", "1", "/bin/true"], stdin=args, check=False
            ).returncode
        result.wall_s = time.monotonic() - started
        result.cpu_s = result.warm_cpu_s = _children_cpu_s() - cpu0
        result.warm_jobs, result.warm_s = n, result.wall_s
        self.counts = Counts(n, 0, 0) if code == 0 else Counts(0, n, 0)
        return result

    def latency(self, n: int) -> list[float]:
        raise NotImplementedError("xargs is not a queue")

    def verify(self) -> Counts:
        return self.counts

    def teardown(self) -> None:
        pass

"""The peers: other job systems, run on this machine with the same jobs, one module each.

Every peer has the same small interface (`Peer`). The harness runs each one in the peers' own
virtual environment (`bench/.peers/`) through `python -m bench.peers.runner`, which prints the
results as JSON, so the project's environment never imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bench.measure import DrainResult

# name -> "module:Class"
PEERS: dict[str, str] = {
    "xargs": "bench.peers.xargs_peer:Xargs",
    "celery": "bench.peers.celery_peer:CeleryPeer",
    "huey-redis": "bench.peers.huey_peer:HueyRedis",
    "huey-sqlite": "bench.peers.huey_peer:HueySqlite",
    "dramatiq": "bench.peers.dramatiq_peer:DramatiqPeer",
    "parsl-htex": "bench.peers.parsl_peer:ParslHtex",
    "parsl-threads": "bench.peers.parsl_peer:ParslThreads",
}
NEEDS_REDIS = frozenset({"celery", "huey-redis", "dramatiq"})
NO_LATENCY = frozenset({"xargs"})  # not a queue: W2 shows the bare spawn floor instead
PIP_PACKAGES = ("celery[redis]", "huey", "redis", "dramatiq[redis]", "parsl", "py-spy")


@dataclass(frozen=True)
class Counts:
    """What a peer's own record of finished jobs says."""

    done: int
    lost: int
    duplicated: int


@dataclass(frozen=True)
class PeerContext:
    workdir: Path  # scratch space of this peer's run, removed afterwards
    redis_url: str
    redis_pid: int  # 0 when Redis is not used; its CPU counts towards the peer's
    cores: int


class Peer(Protocol):
    name: str
    config: str  # how it was run, as the table shows it

    def setup(self) -> None:
        """Prepare (clean queues, files); start nothing that a workload times."""

    def drain(self, n: int, workers: int) -> DrainResult:
        """Pre-queue `n` no-op jobs, start `workers` workers, time until all are done, stop
        the workers, check the results."""

    def latency(self, n: int) -> list[float]:
        """Start workers, then send `n` jobs one at a time: seconds from submit to result."""

    def verify(self) -> Counts:
        """Check the jobs of the last workload: each done exactly once, none lost."""

    def teardown(self) -> None:
        """Stop whatever is left and clean up."""

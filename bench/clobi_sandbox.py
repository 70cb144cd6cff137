"""W5: jobs that move data through sandboxes. Each job gets a 10 MiB input file and writes a
10 MiB output file (`cat in.bin > out.bin`); 20 MiB per job pass through the sandbox store.
The baseline copies the same bytes with plain `cp` (in → work dir → out), as many at a time
as there are cores.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.clobi_runs import Agents, init_session, wait_registered
from clobi import Client
from clobi.model.states import AttemptState, JobState

FILE_MIB = 10


def sandboxes(workdir: Path, n: int, cores: int) -> dict[str, Any]:
    session = init_session(workdir / "w5")
    inputs = workdir / "w5-inputs"
    inputs.mkdir()
    data = os.urandom(FILE_MIB << 20)
    (inputs / "in.bin").write_bytes(data)
    spec = {
        "command": "cat in.bin > out.bin",
        "shell": True,
        "inputs": ["in.bin"],
        "outputs": ["out.bin"],
        "array": {"count": n},
    }
    agents = Agents(session, cores, 1)
    with Client(session) as client:
        agents.start()
        try:
            wait_registered(client, cores)
            started = time.perf_counter()
            ids = client.submit(spec, base_dir=inputs)
            _wait(client, ids)
            seconds = time.perf_counter() - started
        finally:
            agents.stop()
        counts = _check(client, ids, hashlib.sha256(data).digest())
    cp_s = _cp_baseline(inputs / "in.bin", workdir / "w5-cp", n, cores)
    mib = n * 2 * FILE_MIB
    return {
        "jobs": n,
        "mib": mib,
        "seconds": seconds,
        "mib_s": mib / seconds,
        "cp_seconds": cp_s,
        "cp_mib_s": mib / cp_s,
        **counts,
    }


def _wait(client: Client, ids: list[int], timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        counts = client.counts(ids)
        if sum(v for s, v in counts.items() if s.terminal) == len(ids):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"W5: jobs unfinished after {timeout_s:g} s: {counts}")
        time.sleep(0.005)


def _check(client: Client, ids: list[int], digest: bytes) -> dict[str, int]:
    """Succeeded once each, and each output is the input, byte for byte."""
    done = lost = dup = failed = 0
    for job_id in ids:
        job = client.store.get_job(job_id)
        if job.state is not JobState.SUCCEEDED:
            failed += job.state.terminal
            lost += not job.state.terminal
            continue
        if job.attempts > 1:
            wins = [a for a in client.store.attempts(job_id) if a.state is AttemptState.SUCCEEDED]
            dup += len(wins) > 1
        out = client.read_output_file(job_id, "out.bin")
        ok = hashlib.sha256(out).digest() == digest
        done += ok
        failed += not ok
    return {"done": done, "lost": lost, "duplicated": dup, "failed": failed}


def _cp_baseline(src: Path, scratch: Path, n: int, cores: int) -> float:
    scratch.mkdir()

    def one(i: int) -> None:
        work = scratch / str(i)
        work.mkdir()
        subprocess.run(["cp", str(src), str(work / "in.bin")], check=True)
        subprocess.run(["cp", str(work / "in.bin"), str(work / "out.bin")], check=True)

    started = time.perf_counter()
    with ThreadPoolExecutor(cores) as pool:
        list(pool.map(one, range(n)))
    return time.perf_counter() - started

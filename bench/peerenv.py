"""The peers' own virtual environment (`bench/.peers/`, never the project's), made on first use
with `python -m venv` and pip, and the way the harness runs a peer's workload in it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.peers import PIP_PACKAGES
from bench.peers.runner import MARKER

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PEERS_DIR = BENCH / ".peers"
STAMP = PEERS_DIR / "bench-packages.txt"
RUN_TIMEOUT_S = 900.0


def python() -> Path:
    return PEERS_DIR / "bin" / "python"


def ensure() -> Path:
    """The peers' interpreter, creating the venv and installing the peers if needed."""
    wanted = "\n".join(PIP_PACKAGES) + "\n"
    if python().exists() and STAMP.exists() and STAMP.read_text() == wanted:
        return python()
    PEERS_DIR.mkdir(parents=True, exist_ok=True)
    log = PEERS_DIR / "install.log"
    print(f"bench: installing the peers into {PEERS_DIR} (log: {log}) ...", file=sys.stderr)
    with log.open("wb") as sink:
        if not python().exists():
            _run([sys.executable, "-m", "venv", str(PEERS_DIR)], sink, log)
        _run([str(python()), "-m", "pip", "install", "-q", *PIP_PACKAGES], sink, log)
    STAMP.write_text(wanted)
    return python()


def _run(argv: list[str], sink: Any, log: Path) -> None:
    if subprocess.run(argv, stdout=sink, stderr=subprocess.STDOUT, check=False).returncode:
        raise RuntimeError(f"`{' '.join(argv[:4])} …` failed; see {log}")


def run_peer(interpreter: Path, request: dict[str, Any], log: Path) -> dict[str, Any]:
    """Run one workload of one peer in `interpreter`; its result as a dict (raises on error)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PATH": f"{interpreter.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    with log.open("ab") as sink:
        proc = subprocess.run(
            [str(interpreter), "-m", "bench.peers.runner", json.dumps(request)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=sink,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
    lines = [x for x in proc.stdout.decode(errors="replace").splitlines() if x.startswith(MARKER)]
    if not lines:
        raise RuntimeError(f"{request['peer']}: runner exited {proc.returncode}; see {log}")
    reply: dict[str, Any] = json.loads(lines[-1][len(MARKER) :])
    if not reply["ok"]:
        raise RuntimeError(f"{request['peer']}: {reply['error']} (see {log})")
    result: dict[str, Any] = reply["result"]
    return result

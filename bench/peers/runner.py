"""Run one workload of one peer in this (the peers') interpreter and print its result.

`python -m bench.peers.runner '{"peer": "celery", "workload": "drain", "n": 3000, ...}'`
prints one line `BENCH-RESULT {json}` last; everything else on stdout/stderr is the peer's own.
"""

from __future__ import annotations

import importlib
import json
import sys
import traceback
from pathlib import Path
from typing import Any

from bench import procs
from bench.measure import LatencyResult, to_dict
from bench.peers import PEERS, Peer, PeerContext

MARKER = "BENCH-RESULT "


def load(name: str, ctx: PeerContext) -> Peer:
    module, cls = PEERS[name].split(":")
    peer: Peer = getattr(importlib.import_module(module), cls)(ctx)
    return peer


def run(req: dict[str, Any]) -> dict[str, Any]:
    ctx = PeerContext(Path(req["workdir"]), req["redis_url"], req["redis_pid"], req["cores"])
    peer = load(req["peer"], ctx)
    try:
        peer.setup()
        if req["workload"] == "drain":
            result: Any = peer.drain(req["n"], req["workers"])
        else:
            result = LatencyResult(peer.name, peer.config, peer.latency(req["n"]))
        counts = peer.verify()
        if req["workload"] == "drain":
            result.done = counts.done
        result.lost, result.duplicated = counts.lost, counts.duplicated
        return to_dict(result)
    finally:
        peer.teardown()


def main() -> int:
    procs.become_subreaper()
    req = json.loads(sys.argv[1])
    try:
        reply = {"ok": True, "result": run(req)}
    except Exception as exc:
        traceback.print_exc()
        reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.flush()
    print(MARKER + json.dumps(reply), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

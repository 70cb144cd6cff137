"""Services the peers need (Redis), started on 127.0.0.1 only when not already running and
stopped again only if this run started them. Speaks just enough RESP to ping, flush and ask
for the server's pid, so the harness needs no Redis client library.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

HOST, PORT = "127.0.0.1", 6379
BENCH_DB = 7  # a Redis db of its own, flushed before and after


@dataclass
class Redis:
    host: str = HOST
    port: int = PORT
    db: int = BENCH_DB
    started_here: bool = False

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"

    def call(self, *args: str) -> object:
        """One command on db `db`; returns the decoded reply (errors raise RuntimeError)."""
        with socket.create_connection((self.host, self.port), timeout=5) as sock:
            f = sock.makefile("rwb")
            for cmd in (("SELECT", str(self.db)), args):
                f.write(_encode(cmd))
                f.flush()
                reply = _read(f)
            return reply

    def ping(self) -> bool:
        try:
            return self.call("PING") == "PONG"
        except OSError:
            return False

    def flush(self) -> None:
        self.call("FLUSHDB")

    def pid(self) -> int:
        info = self.call("INFO", "server")
        assert isinstance(info, bytes)
        for line in info.decode().splitlines():
            if line.startswith("process_id:"):
                return int(line.split(":")[1])
        raise RuntimeError("redis: INFO has no process_id")


def _encode(args: tuple[str, ...]) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _read(f: io.BufferedRWPair) -> object:
    line = f.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(f"redis: {rest.decode()}")
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else f.read(size + 2)[:-2]
    if kind == b"*":
        return [_read(f) for _ in range(int(rest))]
    raise RuntimeError(f"redis: unexpected reply {line!r}")


@contextlib.contextmanager
def redis() -> Iterator[Redis]:
    """A reachable Redis with the bench db flushed; started (and later shut down) if needed."""
    server = Redis()
    if not server.ping():
        _start(server)
    server.flush()
    try:
        yield server
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            server.flush()
            if server.started_here:
                server.call("SHUTDOWN", "NOSAVE")


def _start(server: Redis) -> None:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    scratch = tempfile.mkdtemp(prefix="bench-redis-")
    subprocess.run(
        [
            exe,
            "--daemonize",
            "yes",
            "--bind",
            server.host,
            "--port",
            str(server.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            scratch,
            "--logfile",
            f"{scratch}/redis.log",
        ],
        check=True,
    )
    server.started_here = True
    deadline = time.monotonic() + 10
    while not server.ping():
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not answer; see {scratch}/redis.log")
        time.sleep(0.05)

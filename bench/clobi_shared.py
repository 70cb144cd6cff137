"""Clobi's shared session under W1 (drain) and W2 (latency), set up on this machine as a team
would: a fresh PostgreSQL database, `clobi server --db … --storage … --bind 127.0.0.1:0`, an
admin token made on the session directory, a user token and one bootstrap token per agent made
through the server, jobs submitted through the URL, and agents that join over HTTP
(`clobi agent --join URL --cpus 1`, their bootstrap token in `CLOBI_TOKEN`).

The sandbox store is a local directory (`file:`), served by the server like S3 would be; the
no-op jobs have no inputs and tiny outputs, which go inline into PostgreSQL either way.

A drain is watched, and checked, on a PostgreSQL connection of the bench's own (named
`clobi-bench-watch`, so that its backend is left out of the CPU count); W2's client is a remote
one, as a user's. The database is dropped, the agents and the server stopped (their process
groups killed) whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench import procs
from bench.clobi_runs import (
    CLOBI,
    IDLE_GAP_S,
    WARMUP_JOBS,
    Agents,
    Probe,
    probe,
    terminal_count,
    verify,
    wait_registered,
)
from bench.measure import DrainResult, LatencyResult, Unavailable, drain_from_watch, watch
from clobi import Client
from clobi.session import Session, load_session

# Where the bench makes its databases (needs CREATEDB); the tests' variable is honoured too.
PG_URL = os.environ.get(
    "CLOBI_BENCH_PG_URL",
    os.environ.get("CLOBI_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"),
)
DB_PREFIX = "clobi_bench_"
WATCHER = "clobi-bench-watch"  # application_name of the bench's own connection
SERVER_START_S = 30.0


def config(count: int, cpus: float = 1) -> str:
    """The row's config column."""
    return f"shared, {count} agents × --cpus {cpus:g} over HTTP; PostgreSQL, local sandbox"


# --- PostgreSQL -------------------------------------------------------------------------------
def _pg_admin(sql: str, *params: Any) -> list[Any]:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(sql.encode(), params or None)
        return cur.fetchall() if cur.description else []


def _db_url(name: str, **query: str) -> str:
    parts = urlsplit(PG_URL)
    extra = "&".join(f"{k}={v}" for k, v in query.items())
    return parts._replace(path=f"/{name}", query=extra).geturl()


@contextlib.contextmanager
def database(tag: str) -> Iterator[str]:
    """A new empty database `clobi_bench_<pid>_<tag>`; yields its name, drops it afterwards
    (and first drops those left behind by bench runs that no longer exist)."""
    try:
        _drop_stale()
    except ImportError as exc:
        raise Unavailable(f"shared mode needs psycopg: pip install '.[postgres]' ({exc})") from None
    except Exception as exc:
        reason = " ".join(str(exc).split())
        raise Unavailable(
            f"shared mode needs PostgreSQL; {_redacted(PG_URL)} is not usable "
            f"({type(exc).__name__}: {reason}); set CLOBI_BENCH_PG_URL to a server where "
            "this user may create databases"
        ) from None
    name = f"{DB_PREFIX}{os.getpid()}_{tag}"
    _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    _pg_admin(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _drop_stale() -> None:
    rows = _pg_admin("SELECT datname FROM pg_database WHERE datname LIKE %s", DB_PREFIX + "%")
    for (name,) in rows:
        found = re.fullmatch(rf"{DB_PREFIX}(\d+)_\w+", name)
        if found and not _alive(int(found.group(1))):
            _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    return parts._replace(netloc=f"{parts.username or ''}@{host}:{parts.port or 5432}").geturl()


class BackendCpu:
    """CPU of the PostgreSQL backends serving one database (the bench's own left out). A
    backend's CPU counts from the first reading; one that ended keeps its last reading."""

    def __init__(self, dbname: str) -> None:
        self.dbname = dbname
        self.seen: dict[int, float] = {}

    def pids(self) -> list[int]:
        rows = _pg_admin(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name <> %s",
            self.dbname,
            WATCHER,
        )
        return [int(pid) for (pid,) in rows]

    def __call__(self) -> float:
        for pid in self.pids():
            self.seen[pid] = max(self.seen.get(pid, 0.0), procs.own_cpu_s(pid))
        return sum(self.seen.values())


# --- the session ------------------------------------------------------------------------------
@dataclass
class Shared:
    """A running shared session: the server's URL, the tokens, and the bench's handles."""

    root: Path
    dbname: str
    store_url: str
    sandbox_url: str
    url: str
    admin: str
    user: str
    server: subprocess.Popen[bytes]

    def env(self, token: str | None = None) -> dict[str, str]:
        return _env(self.root / "home", token)

    def token(self, role: str, *extra: str) -> str:
        args = ("token", "create", "--role", role, *extra, "--session", self.url)
        return _clobi(*args, env=self.env(self.admin))

    def remote_client(self) -> Client:
        """A user's client, over HTTP."""
        return Client(load_session(self.url, token=self.user))

    def store_client(self) -> Client:
        """The bench's own client straight on the database (not counted)."""
        url = _db_url(self.dbname, application_name=WATCHER)
        return Client(Session(root=self.root, store_url=url, sandbox_url=self.sandbox_url))

    def server_cpu_s(self) -> float:
        return procs.tree_cpu_s([self.server.pid])


def _env(home: Path, token: str | None = None) -> dict[str, str]:
    """This environment without Clobi settings, with config and cache under `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOBI_", "XDG_"))}
    env.update(XDG_CONFIG_HOME=str(home / "config"), XDG_CACHE_HOME=str(home / "cache"))
    if token is not None:
        env["CLOBI_TOKEN"] = token
    return env


def _clobi(*args: str, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [*CLOBI, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"clobi {args[0]} {args[1]}: exit {proc.returncode}: {proc.stderr}")
    return proc.stdout.strip()


@contextlib.contextmanager
def shared_session(workdir: Path, tag: str) -> Iterator[Shared]:
    """A fresh database and `clobi server` on it; stopped and dropped on leaving."""
    root = workdir / f"shared-{tag}"
    root.mkdir()
    with database(tag) as dbname:
        store_url, sandbox_url = _db_url(dbname), f"file:{root / 'sandbox'}"
        (root / "clobi.toml").write_text(
            f'[session]\nstore = "{store_url}"\nsandbox = "{sandbox_url}"\n'
        )
        with serve(root, "--db", store_url, "--storage", sandbox_url) as (url, admin, server):
            shared = Shared(root, dbname, store_url, sandbox_url, url, admin, "", server)
            shared.user = shared.token("user", "--name", "bench")
            yield shared


@contextlib.contextmanager
def serve(root: Path, *args: str) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    """`clobi server --session ROOT ARGS --bind 127.0.0.1:0` on the session in `root`, with an
    admin token made on the session directory; yields (URL, admin token, server), stops it
    on leaving."""
    admin = _clobi("token", "create", "--role", "admin", "--session", str(root),
                   env=_env(root / "home"))  # fmt: skip
    argv = [*CLOBI, "server", "--session", str(root), *args, "--bind", "127.0.0.1:0"]
    with (root / "server.log").open("wb") as log:
        server = subprocess.Popen(
            argv,
            cwd=root,
            env=_env(root / "server"),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield _wait_for_url(root / "server.log", server), admin, server
    finally:
        procs.stop(server, grace_s=20.0)


def _wait_for_url(log: Path, proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        found = re.search(r"listening on (http://\S+)", log.read_text(errors="replace"))
        if found:
            return found.group(1)
        if proc.poll() is not None:
            raise RuntimeError(f"clobi server exited with {proc.returncode}: {_tail(log)}")
        time.sleep(0.05)
    raise RuntimeError(f"clobi server did not listen within {SERVER_START_S:g} s: {_tail(log)}")


def _tail(path: Path, lines: int = 5) -> str:
    return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])


class RemoteAgents(Agents):
    """`count` agents joining the server over HTTP, each with a bootstrap token of its own
    (a bootstrap token works once), all made before any agent starts."""

    def __init__(self, shared: Shared, count: int, cpus: float) -> None:
        super().__init__(shared.root, count, cpus)
        self.shared = shared
        self.tokens = [shared.token("bootstrap") for _ in range(count)]

    def argv(self, k: int) -> list[str]:
        return [*CLOBI, "agent", "--join", self.shared.url, "--cpus", f"{self.cpus:g}",
                "--name", f"bench-{k}"]  # fmt: skip

    def env(self, k: int) -> dict[str, str]:
        return self.shared.env(self.tokens[k])


# --- the workloads ----------------------------------------------------------------------------
def drain(workdir: Path, n: int, count: int, cpus: float = 1) -> DrainResult:
    """W1: `n` `/bin/true` jobs submitted through the server, then `count` remote agents."""
    result = DrainResult("clobi", config(count, cpus), n, verified_by="store")
    with shared_session(workdir, "w1") as shared, shared.store_client() as client:
        _clobi("submit", "--session", shared.url, "-n", str(n), "--", "/bin/true",
               env=shared.env(shared.user))  # fmt: skip
        agents = RemoteAgents(shared, count, cpus)
        backends = BackendCpu(shared.dbname)

        def cpu() -> float:
            return procs.tree_cpu_s(agents.pids) + shared.server_cpu_s() + backends()

        parts0 = (shared.server_cpu_s(), backends())
        started = time.monotonic()
        agents.start()
        try:
            seen = watch(lambda: terminal_count(client), n, started, cpu=cpu, alive=agents.alive)
            rss = [procs.rss_mib(pid) for pid in agents.pids]
            server_s, db_s = shared.server_cpu_s() - parts0[0], backends() - parts0[1]
            server_rss = procs.rss_mib(shared.server.pid)
        finally:
            agents.stop()
        drain_from_watch(result, seen, sum(parts0))
        result.rss_mib = {
            "agent_rss": round(max(r[0] for r in rss), 1),
            "agent_peak": round(max(r[1] for r in rss), 1),
            "server_peak": round(server_rss[1], 1),
        }
        verify(client, n, result)
    result.note += (
        f"of the CPU, the server used {server_s * 1000 / n:.2f} ms/job and PostgreSQL's "
        f"backends {db_s * 1000 / n:.2f} ms/job; server peak RSS {server_rss[1]:.0f} MiB"
    )
    return result


def latency(workdir: Path, n: int, cores: int) -> LatencyResult:
    """W2: one `/bin/true` at a time into idle remote agents, submit → succeeded as the remote
    client sees it (polling the job over HTTP every 0.5 ms)."""
    result = LatencyResult("clobi", config(cores))
    probes: list[Probe] = []
    with shared_session(workdir, "w2") as shared, shared.store_client() as store:
        agents = RemoteAgents(shared, cores, 1)
        agents.start()
        try:
            wait_registered(store, cores)
            with shared.remote_client() as client:
                for i in range(WARMUP_JOBS + n):
                    found = probe(client)
                    if i >= WARMUP_JOBS:
                        probes.append(found)
                    time.sleep(IDLE_GAP_S)
        finally:
            agents.stop()
        result.samples_s = [p.seconds for p in probes]
        verify(store, WARMUP_JOBS + n, result)
        result.note += phases(store, probes)
    return result


def phases(client: Client, probes: list[Probe]) -> str:
    """Where a probe's time went (medians, from the store's timestamps): the submit request,
    queued until an agent claimed it, claimed until its report was stored, and until the
    polling client saw it."""
    cuts: list[list[float]] = [[], [], [], []]
    for p in probes:
        job = client.store.get_job(p.job_id)
        attempt = client.store.attempts(p.job_id)[-1]
        if attempt.ended_at is None:
            continue
        marks = (p.submitted, job.created_at, attempt.started_at, attempt.ended_at, p.seen)
        for k in range(4):
            cuts[k].append(marks[k + 1] - marks[k])
    names = ("submit", "queued", "run + report", "seen")
    shown = ", ".join(f"{name} {_median_ms(c):.1f}" for name, c in zip(names, cuts, strict=True))
    return f"medians in ms: {shown}"


def _median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000 if values else float("nan")

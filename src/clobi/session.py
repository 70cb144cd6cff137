"""The composition root: find a session, read its settings, and pick engines from URLs.

This is the only module that imports engines (lazily, so a missing optional dependency is
named with the extra that provides it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from clobi.errors import MissingExtra, SessionError

if TYPE_CHECKING:
    from clobi.remote.http import Credentials
    from clobi.sandbox.base import SandboxStore
    from clobi.store.base import Store

CONFIG_NAME = "clobi.toml"
ENV_SESSION = "CLOBI_SESSION"


@dataclass(frozen=True)
class Settings:
    """Tunables of a session (the `[agent]` table of clobi.toml)."""

    lease_s: float = 20.0
    heartbeat_s: float = 2.0
    lost_cap: int = 3
    agent_timeout_s: float = 60.0
    kill_grace_s: float = 5.0
    inline_output_max_bytes: int = 256 * 1024
    sweep_interval_s: float = 1.0


@dataclass(frozen=True)
class Session:
    """Where a session's state lives and how it behaves."""

    root: Path
    store_url: str
    sandbox_url: str
    settings: Settings = field(default_factory=Settings)
    # URL sessions: the token, in memory only, shared by the store and sandbox engines.
    credentials: Credentials | None = field(default=None, repr=False, compare=False)

    @property
    def work_dir(self) -> Path:
        """Where local agents make attempts' work directories."""
        return self.root / "work"

    def open_store(self) -> Store:
        if self.credentials is not None:
            return cast("Store", _open_remote(self.store_url, self.credentials, store=True))
        return open_store(self.store_url, self.root)

    def open_sandbox(self) -> SandboxStore:
        if self.credentials is not None:
            return cast("SandboxStore", _open_remote(self.sandbox_url, self.credentials, False))
        return open_sandbox(self.sandbox_url, self.root)


def _open_remote(url: str, credentials: Credentials, store: bool) -> Any:
    """The remote engines of a URL session (`http(s)://`: a Clobi server)."""
    try:
        from clobi.remote.http import Connection
        from clobi.remote.sandbox import RemoteSandbox
        from clobi.remote.store import RemoteStore
    except ImportError as exc:
        if (exc.name or "").split(".")[0] != "httpx":
            raise
        raise MissingExtra("server sessions need httpx: `pip install clobi[server]`") from None
    connection = Connection(url, credentials)
    return RemoteStore(connection) if store else RemoteSandbox(connection)


def open_store(url: str, base: Path) -> Store:
    """A store engine for `url`: `sqlite:…` or `postgresql://…` (also `postgres://…`)."""
    scheme = url.split(":", 1)[0]
    if scheme == "sqlite":
        from clobi.store.sqlite import SqliteStore

        return SqliteStore.from_url(url, base)
    if scheme in ("postgres", "postgresql"):
        return _open_postgres_store(url)
    raise SessionError(
        f"store {url!r}: unknown scheme {scheme!r} (expected sqlite: or postgresql:)"
    )


def _open_postgres_store(url: str) -> Store:
    try:
        from clobi.store.postgres import PostgresStore
    except ImportError as exc:
        if (exc.name or "").split(".")[0] != "psycopg":
            raise
        # No URL in the message: it may hold a password.
        raise MissingExtra(
            "PostgreSQL stores need psycopg: `pip install clobi[postgres]`"
        ) from None
    return PostgresStore.from_url(url)


def open_sandbox(url: str, base: Path) -> SandboxStore:
    """A sandbox engine for `url`: `file:…` or `s3://bucket/prefix?endpoint=…&region=…`."""
    scheme = url.split(":", 1)[0]
    if scheme == "file":
        from clobi.sandbox.local import LocalSandbox

        path = url[len("file:") :]
        path = path[2:] if path.startswith("//") else path
        return LocalSandbox(Path(path) if path.startswith("/") else base / path)
    if scheme == "s3":
        return _open_s3_sandbox(url)
    raise SessionError(f"sandbox {url!r}: unknown scheme {scheme!r} (expected file: or s3:)")


def _open_s3_sandbox(url: str) -> SandboxStore:
    """`s3://bucket/prefix?endpoint=…&region=…`; credentials come from the AWS environment and
    config files (or an instance role), never from the URL."""
    try:
        from clobi.sandbox.s3 import S3Sandbox
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in ("boto3", "botocore"):
            raise
        raise MissingExtra("S3 sandboxes need boto3: `pip install clobi[s3]`") from None
    return S3Sandbox.from_url(url)


def init_session(directory: Path, settings: Settings | None = None) -> Session:
    """Create an embedded session in `directory` (kept if it already is one)."""
    directory = directory.expanduser().resolve()
    config = directory / CONFIG_NAME
    if config.exists():
        return load_session(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        config.write_text(_config_text(settings or Settings()), encoding="utf-8")
    except OSError as exc:
        raise SessionError(f"session {directory}: cannot create: {exc.strerror}") from None
    session = load_session(directory)
    session.open_store().close()  # creates and migrates the database now, not on first use
    return session


def load_session(directory: Path | str, token: str | None = None) -> Session:
    """Read `directory/clobi.toml`; every problem names the file and key. An `http(s)://` URL
    gives a session served by that Clobi server (with `token`, else `$CLOBI_TOKEN`, else the
    one saved by `clobi login`)."""
    if isinstance(directory, str) and directory.startswith(("http://", "https://")):
        from clobi.remote.connect import url_session

        return url_session(directory, token)
    directory = Path(directory).expanduser().resolve()
    config = directory / CONFIG_NAME
    try:
        text = config.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SessionError(
            f"{directory}: not a Clobi session (no {CONFIG_NAME}); "
            f"create one with `clobi session init {directory}`"
        ) from None
    except OSError as exc:
        raise SessionError(f"{config}: {exc}") from None
    data = _parse_config(text, config)
    table = data.get("session", {})
    return Session(
        root=directory,
        store_url=str(table.get("store", "sqlite:clobi.db")),
        sandbox_url=str(table.get("sandbox", "file:sandbox")),
        settings=_settings(data.get("agent", {}), config),
    )


def find_session(
    explicit: str | os.PathLike[str] | None = None,
    cwd: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Session:
    """The session named by `--session`, else `CLOBI_SESSION`, else the nearest clobi.toml."""
    environ = os.environ if environ is None else environ
    if explicit:
        return load_session(os.fspath(explicit))
    if environ.get(ENV_SESSION):
        return load_session(environ[ENV_SESSION])
    here = (cwd or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG_NAME).is_file():
            return load_session(folder)
    raise SessionError(
        "no session: pass --session DIR, set CLOBI_SESSION, or create one with "
        "`clobi session init DIR`"
    )


def _settings(table: Mapping[str, Any], config: Path) -> Settings:
    known = {f.name: f.type for f in fields(Settings)}
    problems = [f"{config}: agent.{k}: unknown key" for k in table if k not in known]
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key in known:
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                problems.append(f"{config}: agent.{key}: must be a positive number")
            else:
                values[key] = int(value) if known[key] == "int" else float(value)
    if problems:
        raise SessionError("\n".join(problems))
    settings = replace(Settings(), **values)
    if settings.heartbeat_s * 2 > settings.lease_s:
        raise SessionError(f"{config}: agent.heartbeat_s must be at most half of agent.lease_s")
    return settings


def _parse_config(text: str, config: Path) -> dict[str, Any]:
    """clobi.toml as data. A file as `init_session` wrote it is known without parsing: every
    command reads it, and importing tomllib costs ~2 ms of a `clobi ls`."""
    if text == _default_config_text():
        return _default_config()
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SessionError(f"{config}: {exc}") from None


@cache
def _default_config_text() -> str:
    return _config_text(Settings())


def _default_config() -> dict[str, Any]:
    """What tomllib reads from `_default_config_text()` (a unit test holds them together)."""
    defaults = Settings()
    return {
        "session": {"store": "sqlite:clobi.db", "sandbox": "file:sandbox"},
        "agent": {f.name: getattr(defaults, f.name) for f in fields(Settings)},
    }


def _config_text(settings: Settings) -> str:
    lines = [
        "# A Clobi session. Paths are relative to this file's directory.",
        "[session]",
        'store = "sqlite:clobi.db"',
        'sandbox = "file:sandbox"',
        "",
        "[agent]",
    ]
    lines += [f"{f.name} = {getattr(settings, f.name)!r}" for f in fields(Settings)]
    return "\n".join(lines) + "\n"

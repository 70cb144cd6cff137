"""Tokens saved by `clobi login`, one per server URL, in `$XDG_CONFIG_HOME/clobi/credentials.toml`
(default `~/.config/clobi/`), readable by its owner only (0600, in a 0700 folder).

```toml
[servers."https://clobi.example.org"]
token = "clobi_…"
```
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import tomllib
from collections.abc import Mapping
from pathlib import Path

from clobi.errors import SessionError
from clobi.remote.http import normalize_url

FILE_NAME = "credentials.toml"
ENV_TOKEN = "CLOBI_TOKEN"


def credentials_path(environ: Mapping[str, str] | None = None) -> Path:
    """Where `clobi login` keeps tokens."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "clobi" / FILE_NAME


def _read(path: Path) -> dict[str, str]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SessionError(f"{path}: cannot read: {exc}") from None
    servers = data.get("servers", {})
    return {
        str(url): str(entry["token"])
        for url, entry in servers.items()
        if isinstance(entry, dict) and isinstance(entry.get("token"), str)
    }


def load_token(url: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The token for `url`: `$CLOBI_TOKEN`, else the one saved by `clobi login`."""
    environ = os.environ if environ is None else environ
    if environ.get(ENV_TOKEN):
        return environ[ENV_TOKEN].strip()
    return _read(credentials_path(environ)).get(normalize_url(url))


def save_token(url: str, token: str, environ: Mapping[str, str] | None = None) -> Path:
    """Save (or replace) the token for `url`; the file is written whole, atomically, 0600."""
    path = credentials_path(environ)
    servers = _read(path)
    servers[normalize_url(url)] = token
    text = "# Clobi server tokens, written by `clobi login`. Keep this file private.\n"
    for server, saved in sorted(servers.items()):
        # JSON strings of these characters are valid TOML basic strings.
        text += f"\n[servers.{json.dumps(server)}]\ntoken = {json.dumps(saved)}\n"
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_private(path, text)
    except OSError as exc:
        raise SessionError(f"{path}: cannot write: {exc.strerror}") from None
    return path


def _write_private(path: Path, text: str) -> None:
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=".credentials-")  # mode 0600
    try:
        with open(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(name, 0o600)
        os.replace(name, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)

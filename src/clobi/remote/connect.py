"""URL sessions: what `clobi.session` builds for `--session https://…`.

The token comes from the caller (an agent's bootstrap token), `$CLOBI_TOKEN`, or `clobi login`.
The session's settings (leases, heartbeats) come from the server, which also checks the token
before anything else is done. Agents of a URL session work in a local cache folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from clobi.errors import NotFound, SessionError, Unauthorized
from clobi.remote.credentials import load_token
from clobi.remote.http import Connection, Credentials, normalize_url
from clobi.session import Session, Settings


def is_url(text: str) -> bool:
    """True for `http://…` and `https://…`."""
    return text.startswith(("http://", "https://"))


def url_session(
    url: str, token: str | None = None, environ: Mapping[str, str] | None = None
) -> Session:
    """A session served by the Clobi server at `url`."""
    url = normalize_url(url)
    token = token or load_token(url, environ)
    if not token:
        raise SessionError(f"{url}: no token; run `clobi login {url}` or set CLOBI_TOKEN")
    credentials = Credentials(token)
    info = server_info(url, credentials)
    return Session(
        root=cache_root(url, environ),
        store_url=url,
        sandbox_url=url,
        settings=_settings(info.get("settings", {})),
        credentials=credentials,
    )


def server_info(url: str, credentials: Credentials) -> dict[str, Any]:
    """`GET /api/v1/session`: the settings and who the token belongs to."""
    connection = Connection(url, credentials)
    try:
        info = connection.call("GET", "/session", idempotent=True)
    except NotFound:
        raise SessionError(f"{url}: not a Clobi server (no /api/v1/session)") from None
    except Unauthorized as exc:
        raise SessionError(
            f"{url}: the server refused the token ({exc.message}); "
            f"log in again with `clobi login {url}`"
        ) from None
    finally:
        connection.close()
    if not isinstance(info, dict):
        raise SessionError(f"{url}: not a Clobi server (unexpected answer)")
    return info


def cache_root(url: str, environ: Mapping[str, str] | None = None) -> Path:
    """A local folder for one server's session (agents' work directories)."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "clobi" / re.sub(r"[^A-Za-z0-9.-]+", "_", url.split("://", 1)[1])


def _settings(data: Mapping[str, Any]) -> Settings:
    known = {f.name for f in fields(Settings)}
    return Settings(**{k: v for k, v in data.items() if k in known})

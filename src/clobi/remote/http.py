"""One HTTP connection to a Clobi server: the bearer token, retries, and errors translated back
into Clobi's exception tree (with the server's message).

The token travels only in the `Authorization` header; no message raised here contains it.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from clobi import __version__, errors

API = "/api/v1"
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
RETRIES = 3
BACKOFF_S = 0.25

_BY_NAME: dict[str, type[errors.ClobiError]] = {
    cls.__name__: cls
    for cls in (
        errors.Unauthorized,
        errors.Forbidden,
        errors.NotFound,
        errors.Conflict,
        errors.StaleAttempt,
        errors.UsageError,
        errors.StoreUnavailable,
        errors.SandboxError,
        errors.UnsafeArchive,
        errors.SessionError,
        errors.MissingExtra,
    )
}
_BY_STATUS: dict[int, type[errors.ClobiError]] = {
    401: errors.Unauthorized,
    403: errors.Forbidden,
    404: errors.NotFound,
    409: errors.Conflict,
    413: errors.UsageError,
    422: errors.UsageError,
    503: errors.StoreUnavailable,
}
_RETRY_STATUSES = frozenset({502, 503, 504})


class Credentials:
    """Who this client is on the server, held in memory and shared by the engines of one URL
    session: when an agent joins, its bootstrap token is swapped for the agent token, and the
    agent's id recorded, in both at once."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self.agent_id: int | None = None

    def __repr__(self) -> str:
        return "Credentials(<hidden>)"


def normalize_url(url: str) -> str:
    """`https://Host:8443/` -> `https://host:8443`: the key of a server in credentials."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise errors.SessionError(f"{url!r}: not a server URL (http://… or https://…)")
    return urlunsplit((parts.scheme, parts.netloc.lower(), parts.path.rstrip("/"), "", ""))


class Connection:
    """Requests to one server, with retries for calls that are safe to repeat."""

    def __init__(
        self,
        url: str,
        credentials: Credentials,
        *,
        retries: int = RETRIES,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = normalize_url(url)
        self.credentials = credentials
        self.retries = retries
        self._transport = transport
        timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        self._http = httpx.Client(
            base_url=self.url + API,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": f"clobi/{__version__}"},
        )

    def clone(self) -> Connection:
        """A connection of its own (for another thread), sharing the credentials."""
        return Connection(
            self.url, self.credentials, retries=self.retries, transport=self._transport
        )

    def close(self) -> None:
        self._http.close()

    def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Any = None,
        idempotent: bool = False,
        timeout_s: float | None = None,
    ) -> Any:
        """Send a JSON request; return the decoded JSON answer (None for 204)."""
        response = self.send(
            self._http.build_request(
                method, path, json=json, params=params, timeout=self._timeout(timeout_s)
            ),
            idempotent=idempotent,
        )
        return None if response.status_code == 204 else response.json()

    def send(
        self, request: httpx.Request, *, idempotent: bool, stream: bool = False
    ) -> httpx.Response:
        """Send with the token; retry connection failures (all of them when `idempotent`,
        else only those where nothing reached the server). Raises Clobi errors."""
        self._authorize(request)
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                if last or not (idempotent or isinstance(exc, httpx.ConnectError)):
                    raise errors.StoreUnavailable(f"{self.url}: {_describe(exc)}") from None
            else:
                if not (idempotent and response.status_code in _RETRY_STATUSES and not last):
                    raise_for_status(response)
                    return response
                response.close()
            time.sleep(BACKOFF_S * 2**attempt)
        raise AssertionError("unreachable")

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Request:
        """A request to build on (streamed bodies, raw downloads)."""
        timeout = self._timeout(kwargs.pop("timeout_s", None))
        return self._http.build_request(method, path, timeout=timeout, **kwargs)

    def _authorize(self, request: httpx.Request) -> None:
        if self.credentials.token:
            request.headers["Authorization"] = f"Bearer {self.credentials.token}"

    def _timeout(self, seconds: float | None) -> Any:
        if seconds is None:
            return httpx.USE_CLIENT_DEFAULT  # (None would mean: no timeout at all)
        return httpx.Timeout(seconds, connect=CONNECT_TIMEOUT_S)


def raise_for_status(response: httpx.Response) -> None:
    """Turn an error response into the Clobi error the server raised."""
    if response.is_success:
        return
    body = _error_body(response)
    name, message = str(body.get("error", "")), str(body.get("message") or "")
    message = message or str(body.get("detail") or response.reason_phrase or "error")
    if name == "SpecError":
        raise errors.SpecError([str(p) for p in body.get("problems") or [message]])
    cls = _BY_NAME.get(name) or _BY_STATUS.get(response.status_code, errors.ClobiError)
    if cls is errors.ClobiError:
        message = f"server error {response.status_code}: {message}"
    raise cls(message)


def _error_body(response: httpx.Response) -> dict[str, Any]:
    try:
        response.read()
        body = response.json()
    except (ValueError, httpx.HTTPError):
        return {}
    finally:
        response.close()
    return body if isinstance(body, dict) else {}


def _describe(exc: httpx.TransportError) -> str:
    kind = {
        httpx.ConnectError: "cannot connect",
        httpx.ConnectTimeout: "connection timed out",
        httpx.ReadTimeout: "no answer in time",
    }.get(type(exc), "connection failed")
    detail = str(exc)
    return f"{kind} ({detail})" if detail else kind

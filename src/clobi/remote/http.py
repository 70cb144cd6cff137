"""One HTTP connection to a Clobi server: the bearer token, retries, and errors translated back
into Clobi's exception tree (with the server's message).

JSON calls (`Connection.call`: what agents and clients do all the time) go over kept-alive
`http.client` connections, which cost a fraction of httpx's CPU per request; streamed bodies
(sandboxes) and servers reached through a proxy from the environment use httpx.

The token travels only in the `Authorization` header; no message raised here contains it.
"""

from __future__ import annotations

import contextlib
import http.client
import json as jsonlib
import select
import socket
import ssl
import threading
import time
import urllib.request
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
    """Requests to one server, with retries for calls that are safe to repeat. Safe to use
    from several threads."""

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
        self._client: httpx.Client | None = None  # made on first use (its TLS setup costs)
        self._lock = threading.Lock()
        parts = urlsplit(self.url)
        direct = transport is None and not _proxied(parts.scheme, parts.hostname or "")
        self._wires = _Wires(parts) if direct else None
        self._prefix = parts.path + API
        self._agent = f"clobi/{__version__}"

    @property
    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(
                    base_url=self.url + API,
                    timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
                    transport=self._transport,
                    headers={"User-Agent": self._agent},
                )
            return self._client

    def clone(self) -> Connection:
        """A connection of its own (for another thread), sharing the credentials."""
        return Connection(
            self.url, self.credentials, retries=self.retries, transport=self._transport
        )

    def close(self) -> None:
        """Close every connection, breaking off requests in flight."""
        if self._wires is not None:
            self._wires.close()
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

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
        if self._wires is not None:
            return self._call_direct(method, path, json, params, idempotent, timeout_s)
        response = self.send(
            self._http.build_request(
                method, path, json=json, params=params, timeout=self._timeout(timeout_s)
            ),
            idempotent=idempotent,
        )
        return None if response.status_code == 204 else response.json()

    def _call_direct(  # noqa: PLR0917 - call()'s arguments, passed on
        self,
        method: str,
        path: str,
        json: Any,
        params: Any,
        idempotent: bool,
        timeout_s: float | None,
    ) -> Any:
        assert self._wires is not None
        target, body, headers = self._prepare(path, json, params)
        read_s = READ_TIMEOUT_S if timeout_s is None else timeout_s
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                status, data, content_type = self._wires.request(
                    method, target, body, headers, read_s
                )
            except _NotSent as exc:  # nothing reached the server: always safe to repeat
                if last or self._wires.closed:
                    raise errors.StoreUnavailable(f"{self.url}: {exc}") from None
            except _Failed as exc:
                if last or not idempotent:
                    raise errors.StoreUnavailable(f"{self.url}: {exc}") from None
            else:
                if not (idempotent and status in _RETRY_STATUSES and not last):
                    return _answer(status, data, content_type)
            time.sleep(BACKOFF_S * 2**attempt)
        raise AssertionError("unreachable")

    def _prepare(
        self, path: str, json: Any, params: Any
    ) -> tuple[str, bytes | None, dict[str, str]]:
        target = self._prefix + path
        if params:
            target += "?" + str(httpx.QueryParams(params))  # encoded as httpx would
        headers = {"User-Agent": self._agent, "Accept": "application/json"}
        if self.credentials.token:
            headers["Authorization"] = f"Bearer {self.credentials.token}"
        if json is None:
            return target, None, headers
        headers["Content-Type"] = "application/json"
        text = jsonlib.dumps(json, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return target, text.encode(), headers

    def send(
        self, request: httpx.Request, *, idempotent: bool, stream: bool = False
    ) -> httpx.Response:
        """Send with the token; retry connection failures (all of them when `idempotent`,
        else only those where nothing reached the server). Raises Clobi errors."""
        self._authorize(request)
        client = self._http
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = client.send(request, stream=stream)
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


class _NotSent(Exception):
    """The request never reached the server (no connection could be made)."""


class _Failed(Exception):
    """The connection failed after the request may have reached the server."""


class _Wires:
    """Kept-alive HTTP/1.1 connections to one server, one per request in flight (threads may
    share a `Connection`); idle ones are reused, unless the server closed them meanwhile."""

    IDLE_MAX = 4

    def __init__(self, parts: Any) -> None:
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname or "", parts.port or (443 if self.https else 80)
        self._lock = threading.Lock()
        self._idle: list[http.client.HTTPConnection] = []
        self._busy: set[http.client.HTTPConnection] = set()
        self._closed = False
        self._tls: ssl.SSLContext | None = None

    def request(
        self, method: str, target: str, body: bytes | None, headers: dict[str, str], read_s: float
    ) -> tuple[int, bytes, str]:
        """Status, body and content type of the answer (raises `_NotSent` or `_Failed`)."""
        conn = self._take()
        try:
            assert conn.sock is not None
            conn.sock.settimeout(read_s)
            conn.request(method, target, body=body, headers=headers)
            answer = conn.getresponse()
            data = answer.read()
        except (OSError, http.client.HTTPException) as exc:
            self._drop(conn)
            raise _Failed(_failure(exc, "no answer in time")) from None
        if answer.will_close:
            self._drop(conn)
        else:
            self._give_back(conn)
        return answer.status, data, answer.getheader("Content-Type") or ""

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close idle connections and break off those in flight."""
        with self._lock:
            self._closed = True
            conns, self._idle = [*self._idle, *self._busy], []
        for conn in conns:
            if conn.sock is not None:
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading
            conn.close()

    def _take(self) -> http.client.HTTPConnection:
        while True:
            with self._lock:
                if self._closed:
                    raise _NotSent("connection closed")
                conn = self._idle.pop() if self._idle else None
                if conn is not None:
                    self._busy.add(conn)
            if conn is None:
                return self._connect()
            if conn.sock is not None and not _readable(conn.sock):
                return conn
            self._drop(conn)  # the server ended it while idle: try the next one

    def _connect(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self.https:
            conn = http.client.HTTPSConnection(
                self.host, self.port, timeout=CONNECT_TIMEOUT_S, context=self._tls_context()
            )
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=CONNECT_TIMEOUT_S)
        try:
            conn.connect()  # (sets TCP_NODELAY)
        except OSError as exc:
            conn.close()
            raise _NotSent(_failure(exc, "connection timed out")) from None
        with self._lock:
            self._busy.add(conn)
        return conn

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = httpx.create_ssl_context()  # verifies as httpx does (certifi, env)
        return self._tls

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._busy.discard(conn)
            if not self._closed and len(self._idle) < self.IDLE_MAX:
                self._idle.append(conn)
                return
        conn.close()

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._busy.discard(conn)
        conn.close()


def _readable(sock: socket.socket) -> bool:
    """An idle kept-alive connection is readable only when the server closed it (or broke
    the protocol): either way it must not carry another request."""
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def _failure(exc: BaseException, timed_out: str) -> str:
    if isinstance(exc, TimeoutError):
        kind = timed_out
    elif isinstance(exc, (ConnectionRefusedError, socket.gaierror)):
        kind = "cannot connect"
    else:
        kind = "connection failed"
    detail = str(exc)
    return f"{kind} ({detail})" if detail else kind


def _proxied(scheme: str, host: str) -> bool:
    """Whether the environment sends requests to `host` through a proxy (httpx does them)."""
    proxies = urllib.request.getproxies_environment()
    if not (proxies.get(scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(host)


def _answer(status: int, data: bytes, content_type: str) -> Any:
    """The decoded JSON of a direct call's answer, or the Clobi error it carries."""
    if status >= 400:
        headers = {"Content-Type": content_type} if content_type else {}
        raise_for_status(httpx.Response(status, content=data, headers=headers))
    return None if status == 204 else jsonlib.loads(data)


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

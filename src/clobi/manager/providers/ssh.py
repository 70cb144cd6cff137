"""The `ssh` provider: hosts we can log in to, one agent per host entry, started over SSH
(paramiko). Hosts are Linux machines with Clobi installed for `python` (Python >= 3.11).

```toml
[pools.lab]
provider = "ssh"
hosts = ["clobi@node1:22", "node2"]     # user@host:port; default user: ours, port 22
key_file = "~/.ssh/clobi_ed25519"       # default: the ssh agent and ~/.ssh/id_*
known_hosts = "~/.clobi/known_hosts"    # default ~/.ssh/known_hosts
python = "/opt/clobi/bin/python"        # the host's interpreter with Clobi; default python3
work_dir = "~/.clobi-agent"             # on the host: pid files and agents' logs
connect_timeout = "10s"
unreachable_timeout = "5m"              # how long an unreachable host's agent stays PENDING
# insecure_accept_new_host_keys = true  # test hosts only: trust a host key never seen before
```

Host keys are checked against `known_hosts` (read only, never written) and an unknown or changed
key is refused, unless `insecure_accept_new_host_keys` lets an unknown one in.

The manager keeps nothing: the provider id `<host>#<instance id>` names the host entry (a host
since dropped from `hosts` is still described and terminated), and the host keeps a pid file per
instance in `<work_dir>/<session id>/<pool>/`, recording the agent's pid, its start time, the
boot id and the host entry, so a recycled pid is never taken for our agent. Each host entry runs
at most one agent of a pool (two entries may name one machine, e.g. with other users or ports):
`launch` takes the first entry without a live agent (checked under a lock on the host) and
answers `error="no free host"` when there is none. Only the pool's own pid files are ever
looked at, so nothing of another pool, session or person is touched.

Each call runs a small helper on the host with the host's `python` (stdlib only, Linux; its
program is in `ssh_remote`, sent as `python -I -c SOURCE REQUEST`). To launch, it
reads the bootstrap token from its stdin, never argv, and starts the agent with the token in its
environment (`CLOBI_TOKEN`, which the agent removes at once), in a new session (setsid), with
stdin from /dev/null and its output appended to `<instance id>.log`. Neither the command line
nor any log ever holds the token, nor any file; errors are scrubbed of it too. (Like any
process's environment, the agent's is readable by its own user and root only.) On hosts where
systemd-logind kills a user's processes at logout, enable lingering for the user.

`describe`: RUNNING while that agent lives, GONE once it has exited. A host that cannot be
reached (or whose helper fails) reads PENDING until it has been unreachable for
`unreachable_timeout` (counted by this provider object), then GONE: the agent may well still
run there, and a blip must not make the manager forget it. `terminate`: SIGTERM to the agent's
process group (an idle agent drains and exits 0), then after a short grace the agent and every
descendant (its jobs lead sessions of their own) are stopped and SIGKILLed. A host still
unreachable raises `ProviderError`, until `unreachable_timeout` has passed.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import posixpath
import re
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import paramiko  # the `ssh` extra (the registry names it when missing)

from clobi.errors import ConfigError, ProviderError
from clobi.manager.plan import ProviderState
from clobi.manager.providers import ssh_remote
from clobi.manager.providers.base import JoinInfo, Launched, LaunchRequest, Provider
from clobi.model.pools import PoolSpec
from clobi.model.units import parse_duration_s

log = logging.getLogger("clobi.manager.ssh")

TERM_GRACE_S = 5.0  # from SIGTERM (an idle agent drains and exits) to SIGKILL
SETTLE_S = 0.5  # an agent that exits this soon after its start is a failed launch
_HOST_THREADS = 8  # hosts talked to at once by describe and terminate
_ANSWER_MAX_S = 30.0  # beyond the connect timeout and the grace, for the helper to answer
_T = TypeVar("_T")


# --- settings ---------------------------------------------------------------------------------

_HOST = re.compile(
    r"(?:(?P<user>[A-Za-z0-9_][A-Za-z0-9_.-]{0,63})@)?"
    r"(?P<host>\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9_][A-Za-z0-9_.-]{0,252})"
    r"(?::(?P<port>[0-9]{1,5}))?"
)


@dataclass(frozen=True)
class SshHost:
    """One entry of `hosts`, as written (`text`, which provider ids carry) and as parsed."""

    text: str
    user: str
    hostname: str
    port: int = 22

    @classmethod
    def parse(cls, text: str) -> SshHost:
        """`user@host:port`, `host`, `[::1]:22`; raises ValueError saying what is wrong."""
        found = _HOST.fullmatch(text)
        if found is None:
            raise ValueError(f"{text!r} is not user@host:port (IPv6: user@[addr]:port)")
        port = int(found.group("port") or 22)
        if not 1 <= port <= 65535:
            raise ValueError(f"{text!r}: the port must be from 1 to 65535")
        return cls(
            text, found.group("user") or _local_user(), found.group("host").strip("[]"), port
        )

    def provider_id(self, instance_id: int) -> str:
        return f"{self.text}#{instance_id}"


def _local_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        raise ValueError("no user given, and the local user's name is unknown") from None


@dataclass(frozen=True)
class SshSettings:
    """A pool's `ssh` settings, checked."""

    hosts: tuple[SshHost, ...]
    key_file: str | None = None  # None: the ssh agent and ~/.ssh/id_*
    known_hosts: str | None = None  # None: ~/.ssh/known_hosts, if there is one
    insecure_accept_new_host_keys: bool = False
    python: str = "python3"
    work_dir: str = "~/.clobi-agent"
    connect_timeout_s: float = 10.0
    unreachable_timeout_s: float = 300.0


def _hosts(value: object) -> tuple[SshHost, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError('must be a list of hosts, e.g. ["clobi@node1:22", "node2"]')
    if len(set(value)) < len(value):
        raise ValueError("lists a host twice")
    return tuple(SshHost.parse(v) for v in value)


def _path(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or any(c in value for c in "\0\n\r"):
        raise ValueError("must be a path, e.g. ~/.ssh/clobi_ed25519")
    return value


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _python(value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_./+-]{1,255}", value):
        raise ValueError("must be an interpreter's path or name, e.g. python3")
    return value


def _timeout(limit_s: float) -> Callable[[object], float]:
    def check(value: object) -> float:
        seconds = parse_duration_s(value)
        if not 0 < seconds <= limit_s:
            raise ValueError(f'must be more than 0 and at most {limit_s:g}s, e.g. "10s"')
        return seconds

    return check


_CHECKS: dict[str, tuple[str, Callable[[object], Any]]] = {
    "hosts": ("hosts", _hosts),
    "key_file": ("key_file", _path),
    "known_hosts": ("known_hosts", _path),
    "insecure_accept_new_host_keys": ("insecure_accept_new_host_keys", _bool),
    "python": ("python", _python),
    "work_dir": ("work_dir", _path),
    "connect_timeout": ("connect_timeout_s", _timeout(600.0)),
    "unreachable_timeout": ("unreachable_timeout_s", _timeout(7 * 86400.0)),
}


def parse_settings(settings: Mapping[str, Any]) -> tuple[SshSettings | None, list[str]]:
    """The checked settings (None when any is wrong) and every problem as "key: message".
    Unknown keys are the base class's to report."""
    values: dict[str, Any] = {}
    problems = [] if "hosts" in settings else ["hosts: missing (provider ssh needs it)"]
    for key, (field, check) in _CHECKS.items():
        if key in settings:
            try:
                values[field] = check(settings[key])
            except ValueError as exc:
                problems.append(f"{key}: {exc}")
    return (None if problems else SshSettings(**values)), problems


# --- errors -----------------------------------------------------------------------------------


class _HostError(Exception):
    """One host could not be used; the others may be fine."""


class _UnknownHostKey(paramiko.SSHException):
    pass


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        raise _UnknownHostKey(hostname)


def _reason(exc: BaseException, host: SshHost, timeout_s: float) -> str:
    """One line for people saying why `host` could not be used."""
    if isinstance(exc, _UnknownHostKey):
        return (
            "its host key is not in known_hosts: add it (ssh-keyscan), or set "
            "insecure_accept_new_host_keys = true on test hosts only"
        )
    if isinstance(exc, paramiko.BadHostKeyException):
        return "its host key differs from known_hosts: refusing to connect (changed host or attack)"
    if isinstance(exc, paramiko.AuthenticationException):
        return f"authentication as {host.user} failed"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g}s"
    if isinstance(exc, socket.gaierror):
        return f"unknown host name ({exc.strerror})"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return f"cannot connect to port {host.port} (connection refused)"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    if isinstance(exc, EOFError):
        return "the connection was closed"
    return str(exc) or type(exc).__name__


def _scrub(message: str, secret: str) -> str:
    return message.replace(secret, "***") if secret else message


# --- the provider -----------------------------------------------------------------------------


class SshProvider(Provider):
    """Starts and stops the agents of one pool on SSH hosts, one agent per host."""

    name: ClassVar[str] = "ssh"
    settings_keys: ClassVar[frozenset[str]] = frozenset(_CHECKS)
    term_grace_s: float = TERM_GRACE_S

    def __init__(self, pool: PoolSpec, join: JoinInfo) -> None:
        super().__init__(pool, join)
        settings, problems = parse_settings(pool.settings)
        if settings is None:
            raise ConfigError(problems, f"pools.{pool.name}")
        if not join.url or not join.session_id:
            raise ProviderError(
                f"pool {pool.name}: agents on ssh hosts join a Clobi server: run `clobi server` "
                "(an embedded session cannot be reached from other machines)"
            )
        self.settings = settings
        self.url = join.url
        session = re.sub(r"[^A-Za-z0-9_.-]", "_", join.session_id).lstrip(".")
        self.remote_dir = posixpath.join(settings.work_dir, session or "_", pool.name)
        self._lock = threading.Lock()
        self._clients: dict[SshHost, paramiko.SSHClient] = {}
        self._key: paramiko.PKey | None = None
        self._unreachable_since: dict[SshHost, float] = {}

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> list[str]:
        """Unknown keys, then each wrong or missing setting, as "key: message"."""
        return super().check_settings(settings) + parse_settings(settings)[1]

    def launch(self, requests: Sequence[LaunchRequest]) -> list[Launched]:
        """One agent per request, each on the first host of `hosts` that has no live agent of
        this pool (a host that fails is skipped for the rest of the call). A request for an
        instance whose agent already runs on a host tried answers that host."""
        skip: set[SshHost] = set()
        return [self._launch_one(request, skip) for request in requests]

    def describe(self, provider_ids: Sequence[str]) -> dict[str, ProviderState]:
        """RUNNING while the agent started for the instance lives, GONE after; PENDING while
        its host is unreachable (GONE once it has been for `unreachable_timeout`). Ids not of
        the form `<host>#<instance id>` are GONE."""
        states = dict.fromkeys(provider_ids, ProviderState.GONE)
        groups = _by_host(provider_ids)
        for found in self._each_host(groups, self._describe_host):
            states.update(found)
        return states

    def terminate(self, provider_ids: Sequence[str]) -> None:
        """SIGTERM each agent's process group, SIGKILL it with all its descendants after
        `TERM_GRACE_S`. Raises `ProviderError` naming the hosts that could not be reached
        (and have not been unreachable for `unreachable_timeout` yet)."""
        problems = [p for p in self._each_host(_by_host(provider_ids), self._stop_host) if p]
        if problems:
            raise ProviderError(f"pool {self.pool.name}: cannot terminate: " + "; ".join(problems))

    def close(self) -> None:
        """Close the SSH connections kept between calls."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    # --- the three calls, one host at a time ------------------------------------------------

    def _launch_one(self, request: LaunchRequest, skip: set[SshHost]) -> Launched:
        problems = []
        for host in self.settings.hosts:
            if host in skip:
                continue
            skip.add(host)  # taken now, busy or failing: not for the next requests either
            try:
                launch = {**self._launch_request(request), "slot": host.text}
                answer = self._call(host, launch, request.bootstrap + "\n")
            except _HostError as exc:
                problems.append(_scrub(str(exc), request.bootstrap))
                continue
            if "pid" in answer:
                provider_id = host.provider_id(request.instance_id)
                return Launched(request.instance_id, provider_id=provider_id)
            if "exited" in answer:
                tail = _scrub(str(answer.get("log", "")), request.bootstrap)
                problems.append(
                    f"{host.text}: the agent exited at once ({answer['exited']}): {tail}"
                )
        error = "no free host" + (": " + "; ".join(problems) if problems else "")
        return Launched(request.instance_id, error=error)

    def _launch_request(self, request: LaunchRequest) -> dict[str, Any]:
        pool = self.pool
        args = ["--join", self.url, "--cpus", f"{pool.cpus:g}", "--memory", str(pool.memory_bytes)]
        args += ["--gpus", str(pool.gpus), "--name", f"{pool.name}-{request.instance_id}"]
        if pool.labels:
            args += ["--labels", ",".join(sorted(pool.labels))]
        return {"op": "launch", "id": request.instance_id, "args": args, "settle_s": SETTLE_S}

    def _describe_host(self, host: SshHost, ids: dict[str, int]) -> dict[str, ProviderState]:
        try:
            answer = self._call(host, {"op": "status", "ids": sorted(set(ids.values()))})
        except _HostError as exc:
            if self._unreachable_for(host) < self.settings.unreachable_timeout_s:
                log.warning("%s; its agents read as pending", exc)
                return dict.fromkeys(ids, ProviderState.PENDING)
            log.warning("%s; its agents read as gone", exc)
            return dict.fromkeys(ids, ProviderState.GONE)
        running = set(answer.get("running", []))
        return {
            pid: ProviderState.RUNNING if n in running else ProviderState.GONE
            for pid, n in ids.items()
        }

    def _stop_host(self, host: SshHost, ids: dict[str, int]) -> str:
        grace_s = self.term_grace_s
        request = {"op": "stop", "ids": sorted(set(ids.values())), "grace_s": grace_s}
        try:
            answer = self._call(host, request, answer_s=grace_s)
        except _HostError as exc:
            if self._unreachable_for(host) < self.settings.unreachable_timeout_s:
                return str(exc)
            return ""  # long gone as far as describe is concerned
        if answer.get("killed"):
            log.info(
                "%s: instances %s killed %gs after SIGTERM", host.text, answer["killed"], grace_s
            )
        if answer.get("survivors"):
            return f"{host.text}: agents of instances {answer['survivors']} survive SIGKILL"
        return ""

    def _unreachable_for(self, host: SshHost) -> float:
        now = time.monotonic()
        with self._lock:
            return now - self._unreachable_since.setdefault(host, now)

    def _each_host(
        self,
        groups: Mapping[SshHost, dict[str, int]],
        work: Callable[[SshHost, dict[str, int]], _T],
    ) -> list[_T]:
        if len(groups) <= 1:
            return [work(host, ids) for host, ids in groups.items()]
        with ThreadPoolExecutor(min(_HOST_THREADS, len(groups))) as threads:
            return list(threads.map(work, groups.keys(), groups.values()))

    # --- talking to a host -------------------------------------------------------------------

    def _call(
        self, host: SshHost, request: dict[str, Any], stdin: str = "", answer_s: float = 0.0
    ) -> dict[str, Any]:
        """Run the helper on the host with `request`, feed it `stdin`, return its answer.
        Raises `_HostError` when the host cannot be used."""
        request = {**request, "dir": self.remote_dir}
        command = shlex.join([self.settings.python, "-I", "-c", ssh_remote.source()])
        command += " " + shlex.quote(json.dumps(request))
        timeout_s = self.settings.connect_timeout_s + answer_s + _ANSWER_MAX_S
        try:
            channel = self._channel(host)
            out, err, code = _exec(channel, command, stdin, timeout_s)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self._drop(host)
            reason = _reason(exc, host, self.settings.connect_timeout_s)
            raise _HostError(f"{host.text}: {reason}") from None
        if code == 127:  # the shell's "command not found"
            raise _HostError(f"{host.text}: no {self.settings.python} there (see `python`)")
        if code != 0:
            lines = err.decode("utf-8", "replace").strip().splitlines() or [f"exit status {code}"]
            raise _HostError(f"{host.text}: the helper failed: {lines[-1][:300]}")
        try:
            answer = json.loads(out)
        except ValueError:
            raise _HostError(f"{host.text}: the helper gave no answer") from None
        with self._lock:
            self._unreachable_since.pop(host, None)
        return dict(answer)

    def _channel(self, host: SshHost) -> paramiko.Channel:
        """A new session channel on a kept connection, else on a new one (a kept one may
        have been closed by the host meanwhile: one more try, on a fresh connection)."""
        with self._lock:
            kept = self._clients.get(host)
        if kept is not None:
            try:
                return _open_session(kept, self.settings.connect_timeout_s)
            except (paramiko.SSHException, OSError, EOFError):
                self._drop(host)
        client = self._connect(host)
        with self._lock:
            self._clients[host] = client
        return _open_session(client, self.settings.connect_timeout_s)

    def _connect(self, host: SshHost) -> paramiko.SSHClient:
        s = self.settings
        client = paramiko.SSHClient()
        known = os.path.expanduser(s.known_hosts or "~/.ssh/known_hosts")
        if s.known_hosts is not None or os.path.exists(known):
            try:
                client.load_system_host_keys(known)  # read only: never written back
            except OSError as exc:
                raise ProviderError(f"known_hosts: {known}: {exc.strerror}") from None
        accept = paramiko.AutoAddPolicy() if s.insecure_accept_new_host_keys else _RefuseUnknown()
        client.set_missing_host_key_policy(accept)
        key = self._private_key()
        t = s.connect_timeout_s
        try:
            client.connect(
                host.hostname,
                host.port,
                username=host.user,
                pkey=key,
                allow_agent=key is None,
                look_for_keys=key is None,
                timeout=t,
                banner_timeout=t,
                auth_timeout=t,
                channel_timeout=t,
            )
        except BaseException:
            client.close()
            raise
        return client

    def _private_key(self) -> paramiko.PKey | None:
        path = self.settings.key_file
        if path is None:
            return None
        with self._lock:
            if self._key is None:
                self._key = _load_key(os.path.expanduser(path))
            return self._key

    def _drop(self, host: SshHost) -> None:
        with self._lock:
            client = self._clients.pop(host, None)
        if client is not None:
            client.close()


def _load_key(path: str) -> paramiko.PKey:
    try:
        return paramiko.PKey.from_path(path)
    except paramiko.PasswordRequiredException:
        raise ProviderError(
            f"key_file: {path} is encrypted: load it into an ssh agent and leave key_file unset"
        ) from None
    except OSError as exc:
        raise ProviderError(f"key_file: {path}: {exc.strerror or exc}") from None
    except (paramiko.SSHException, ValueError) as exc:
        raise ProviderError(
            f"key_file: {path}: not a private key paramiko can read ({exc})"
        ) from None


def _open_session(client: paramiko.SSHClient, timeout_s: float) -> paramiko.Channel:
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise paramiko.SSHException("the connection was closed")
    return transport.open_session(timeout=timeout_s)


def _exec(
    channel: paramiko.Channel, command: str, stdin: str, timeout_s: float
) -> tuple[bytes, bytes, int]:
    """Run `command`, send `stdin` then EOF; its stdout, stderr and exit status."""
    with channel:
        channel.settimeout(timeout_s)
        channel.exec_command(command)
        if stdin:
            with contextlib.suppress(OSError):  # a helper that failed at once tells why below
                channel.sendall(stdin.encode())
        channel.shutdown_write()
        out = channel.makefile("rb").read()
        err = channel.makefile_stderr("rb").read()
        return out, err, channel.recv_exit_status()


def _by_host(provider_ids: Iterable[str]) -> dict[SshHost, dict[str, int]]:
    """The well-formed ids by host: provider id -> instance id."""
    groups: dict[SshHost, dict[str, int]] = {}
    for provider_id in provider_ids:
        text, _, number = provider_id.rpartition("#")
        try:
            host = SshHost.parse(text)
        except ValueError:
            continue
        if number.isdigit():
            groups.setdefault(host, {})[provider_id] = int(number)
    return groups

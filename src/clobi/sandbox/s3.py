"""The `s3` sandbox store: archives in an S3-compatible bucket (AWS S3, SeaweedFS, MinIO).

URL: `s3://bucket/optional/prefix?endpoint=http://host:port&region=eu-west-1`. Both options are
optional (no endpoint means AWS; an endpoint means path-style addressing). Credentials come from
the standard AWS chain (environment, shared config and credentials files, SSO, instance role),
never from the URL or the command line.

Layout under the prefix, as in the `local` engine: `inputs/<sha[:2]>/<sha>.tar` and
`outputs/<attempt_id>.tar`; every object carries its sha256 as `x-amz-meta-sha256`.

Writes spool the stream to a local temporary file while hashing it, then upload that file.
The key of an input is its sha256, known only at the end, and spooling was chosen over a
streamed multipart upload to a temporary key followed by a server-side copy because:
- a duplicate costs one HEAD request instead of a whole upload, a copy and a delete;
- boto3's managed transfer retries a failed part by re-reading the file, whereas a one-pass
  stream forces every part in flight (at least 5 MiB each) to be held in memory;
- a crash leaves no temporary object or unfinished multipart upload in the bucket, only a
  local temporary file, and there is no 5 GiB limit of CopyObject to work around;
- the final key only ever appears whole, with its metadata.
The price is local disk space for one archive while it uploads (`spool_dir`, default the
system's temporary directory). After an upload, a HEAD checks the size and the sha256 metadata.
Reads stream the response body and recompute the sha256; reaching the end of a stream whose
bytes do not match raises `SandboxError`.
"""

from __future__ import annotations

import hashlib
import io
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO
from urllib.parse import parse_qsl, unquote, urlsplit

import boto3  # type: ignore[import-untyped, unused-ignore]
from boto3.exceptions import Boto3Error  # type: ignore[import-untyped, unused-ignore]
from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped, unused-ignore]
from botocore.config import Config  # type: ignore[import-untyped, unused-ignore]
from botocore.exceptions import (  # type: ignore[import-untyped, unused-ignore]
    BotoCoreError,
    ClientError,
    NoCredentialsError,
)

from clobi.errors import ClobiError, NotFound, SandboxError
from clobi.sandbox.base import SandboxStore, StoredBlob

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

_SPOOL_CHUNK_BYTES = 256 * 1024
_PART_BYTES = 8 * 1024 * 1024
# Memory of an upload is about 1 MiB per transfer thread (botocore reads parts in 1 MiB chunks
# to hash them for SigV4 over plain http), whatever the archive's size.
_TRANSFER_THREADS = 2
_READ_BUFFER_BYTES = 256 * 1024
_MAX_PRESIGN_S = 7 * 24 * 3600  # the limit of SigV4 presigned URLs
_SHA_META = "sha256"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_INPUT_KEY = re.compile(r"inputs/([0-9a-f]{2})/\1[0-9a-f]{62}\.tar")
_OUTPUT_KEY = re.compile(r"outputs/(?:0|[1-9][0-9]*)\.tar")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX_SEGMENT = re.compile(r"[^\x00-\x1f\x7f\\]+")
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "403"}


@dataclass(frozen=True)
class S3Location:
    """Where a sandbox lives: a bucket, a key prefix ("" or ending in "/"), and optionally a
    non-AWS endpoint and a region."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """Parse `s3://bucket/prefix?endpoint=…&region=…`; raises `SandboxError`."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or parts.fragment:
            raise SandboxError(f"not an s3://bucket/prefix URL: {url}")
        if "@" in parts.netloc:  # do not echo the URL: it may hold a secret
            raise SandboxError(
                "an s3:// sandbox URL must not hold credentials: use the AWS environment "
                "variables, ~/.aws/credentials or an instance role"
            )
        if not _BUCKET.fullmatch(parts.netloc) or ".." in parts.netloc:
            raise SandboxError(f"not a valid S3 bucket name: {parts.netloc!r} (in {url})")
        options = _options(parts.query, url)
        return cls(
            bucket=parts.netloc,
            prefix=_prefix(unquote(parts.path), url),
            endpoint=_endpoint(options.get("endpoint"), url),
            region=options.get("region") or None,
        )

    def uri(self, key: str) -> str:
        """`s3://bucket/prefix/key`, for messages."""
        return f"s3://{self.bucket}/{self.prefix}{key}"


def _options(query: str, url: str) -> dict[str, str]:
    pairs = parse_qsl(query, keep_blank_values=True)
    names = [name for name, _ in pairs]
    unknown = sorted(set(names) - {"endpoint", "region"})
    if unknown or len(set(names)) != len(names):
        raise SandboxError(
            f"{url}: only the options endpoint= and region= are known, each at most once"
        )
    return dict(pairs)


def _prefix(path: str, url: str) -> str:
    segments = path.strip("/").split("/") if path.strip("/") else []
    for segment in segments:
        if segment in ("", ".", "..") or not _PREFIX_SEGMENT.fullmatch(segment):
            raise SandboxError(f"{url}: invalid key prefix {path!r}")
    return "".join(f"{segment}/" for segment in segments)


def _endpoint(endpoint: str | None, url: str) -> str | None:
    if endpoint is None:
        return None
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        raise SandboxError(f"{url}: endpoint must be an http(s)://host[:port] URL")
    if parts.query or parts.fragment:
        raise SandboxError(f"{url}: endpoint must not have a query or a fragment")
    return endpoint.rstrip("/")


class S3Sandbox(SandboxStore):
    """A sandbox store in an S3 bucket, under an optional key prefix."""

    def __init__(
        self,
        location: S3Location,
        *,
        boto_session: Any = None,
        max_attempts: int = 3,
        spool_dir: Path | None = None,
    ) -> None:
        """`boto_session` defaults to a new `boto3.session.Session()` (the standard credential
        chain); `max_attempts` bounds retries of each request."""
        session = boto_session or boto3.session.Session()
        self._location = location
        self._spool_dir = spool_dir
        self._bucket_seen = False
        self._client = session.client(
            "s3",
            endpoint_url=location.endpoint,
            region_name=location.region or session.region_name or "us-east-1",
            config=_client_config(location, max_attempts),
        )
        self._transfer = TransferConfig(
            multipart_threshold=_PART_BYTES,
            multipart_chunksize=_PART_BYTES,
            max_concurrency=_TRANSFER_THREADS,
        )

    @classmethod
    def from_url(cls, url: str, *, boto_session: Any = None) -> S3Sandbox:
        """The store at `s3://bucket/prefix?endpoint=…&region=…`."""
        return cls(S3Location.parse(url), boto_session=boto_session)

    @property
    def location(self) -> S3Location:
        return self._location

    def put_input(self, src: BinaryIO) -> StoredBlob:
        """Store an input archive under its sha256; storing the same bytes again uploads
        nothing and keeps one copy."""
        with _spooled(src, self._spool_dir) as (path, size, sha):
            key = f"inputs/{sha[:2]}/{sha}.tar"
            if not _holds(self._head(key), sha, size):
                self._upload(path, key, size, sha)
        return StoredBlob(key=key, size=size, sha256=sha)

    def has_input(self, sha256: str) -> bool:
        """True when the input archive with this digest is stored (whole, with its digest)."""
        head = self._head(_input_key(sha256))
        if head is None:
            self._require_bucket()  # a missing bucket is an error, not a missing input
        return _holds(head, sha256)

    def open_input(self, sha256: str) -> BinaryIO:
        """A readable stream of a stored input archive, checked against its digest at the end;
        raises `NotFound`."""
        return self._open(_input_key(sha256), sha256)

    def put_output(self, attempt_id: int, src: BinaryIO) -> StoredBlob:
        """Store (or replace) the output archive of an attempt."""
        if isinstance(attempt_id, bool) or not isinstance(attempt_id, int) or attempt_id < 0:
            raise SandboxError(f"invalid attempt id: {attempt_id!r}")
        key = f"outputs/{attempt_id}.tar"
        with _spooled(src, self._spool_dir) as (path, size, sha):
            self._upload(path, key, size, sha)
        return StoredBlob(key=key, size=size, sha256=sha)

    def open_output(self, key: str) -> BinaryIO:
        """A readable stream of a stored output archive, checked against the digest stored
        with it; raises `NotFound`."""
        return self._open(_output_key(key), None)

    def delete_output(self, key: str) -> None:
        """Forget an output archive; missing keys are ignored (S3 deletes are idempotent)."""
        key = _output_key(key)
        with self._boundary("delete", key):
            self._client.delete_object(Bucket=self._location.bucket, Key=self._full(key))

    def presigned_url(self, key: str, expires_s: float) -> str:
        """A URL that lets anyone holding it GET the archive `key` (an input or output key as
        returned in a `StoredBlob`) for `expires_s` seconds, without credentials."""
        if not (_INPUT_KEY.fullmatch(key) or _OUTPUT_KEY.fullmatch(key)):
            raise SandboxError(f"invalid sandbox key: {key!r}")
        if not 1 <= expires_s <= _MAX_PRESIGN_S:
            raise SandboxError(f"expires_s must be within 1..{_MAX_PRESIGN_S}: {expires_s}")
        params = {"Bucket": self._location.bucket, "Key": self._full(key)}
        with self._boundary("sign a URL for", key):
            url: str = self._client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=int(expires_s)
            )
        return url

    # --- requests -------------------------------------------------------------------------

    def _full(self, key: str) -> str:
        return self._location.prefix + key

    def _head(self, key: str) -> dict[str, Any] | None:
        """The object's HEAD response, or None when there is none."""
        head: dict[str, Any] | None = None
        try:
            with self._boundary("check", key):
                head = self._client.head_object(Bucket=self._location.bucket, Key=self._full(key))
        except NotFound:
            return None
        return head

    def _require_bucket(self) -> None:
        """Raise `SandboxError` unless the bucket exists (checked once per store)."""
        if self._bucket_seen:
            return
        try:
            with self._boundary("find the bucket of", ""):
                self._client.head_bucket(Bucket=self._location.bucket)
        except NotFound:
            where = f" at {self._location.endpoint}" if self._location.endpoint else ""
            raise SandboxError(
                f"the bucket of {self._location.uri('')}{where} does not exist"
            ) from None
        self._bucket_seen = True

    def _upload(self, path: str, key: str, size: int, sha256: str) -> None:
        extra = {"Metadata": {_SHA_META: sha256}, "ContentType": "application/x-tar"}
        with self._boundary("store", key):
            self._client.upload_file(
                path, self._location.bucket, self._full(key), ExtraArgs=extra, Config=self._transfer
            )
        if not _holds(self._head(key), sha256, size):
            raise SandboxError(
                f"{self._location.uri(key)} does not hold what was sent "
                f"({size} bytes, sha256 {sha256}) right after it was stored"
            )

    def _open(self, key: str, sha256: str | None) -> BinaryIO:
        with self._boundary("read", key):
            response = self._client.get_object(Bucket=self._location.bucket, Key=self._full(key))
        expected = sha256 or response.get("Metadata", {}).get(_SHA_META)
        boundary = partial(self._boundary, "read", key)
        raw = _VerifiedBody(response["Body"], expected, self._location.uri(key), boundary)
        return io.BufferedReader(raw, _READ_BUFFER_BYTES)

    @contextmanager
    def _boundary(self, action: str, key: str) -> Iterator[None]:
        """Translate boto errors into `NotFound` / `SandboxError` naming the bucket and key."""
        try:
            yield
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            raise self._translated(exc, action, key) from None

    def _translated(self, exc: Exception, action: str, key: str) -> ClobiError:
        inner = exc.__cause__ or exc.__context__
        if isinstance(exc, Boto3Error) and isinstance(inner, ClientError | BotoCoreError):
            exc = inner  # upload_file wraps the real error (without `from`)
        where = f"cannot {action} {self._location.uri(key)}"
        if self._location.endpoint:
            where += f" at {self._location.endpoint}"
        if isinstance(exc, NoCredentialsError):
            return SandboxError(
                f"{where}: no AWS credentials found (set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or use an instance role)"
            )
        if not isinstance(exc, ClientError):
            return SandboxError(f"{where}: {exc}")
        return _client_error(exc, where, self._location)


def _client_error(exc: Any, where: str, location: S3Location) -> ClobiError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code == "NoSuchBucket":
        return SandboxError(f"{where}: the bucket {location.bucket!r} does not exist")
    if code in ("NoSuchKey", "NotFound", "404") or status == 404:
        return NotFound(f"{where}: no such object")
    if code in _DENIED or status == 403:
        return SandboxError(f"{where}: access denied ({code}); check the AWS credentials")
    return SandboxError(f"{where}: {code or status} {error.get('Message', '')}".rstrip())


def _client_config(location: S3Location, max_attempts: int) -> Any:
    style = "path" if location.endpoint else "auto"  # SeaweedFS/MinIO: no bucket subdomains
    return Config(
        signature_version="s3v4",
        s3={"addressing_style": style},
        retries={"mode": "standard", "max_attempts": max_attempts},
        connect_timeout=10,
        read_timeout=60,
    )


def _input_key(sha256: str) -> str:
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise SandboxError(f"not a sha256 digest: {sha256!r}")
    return f"inputs/{sha256[:2]}/{sha256}.tar"


def _output_key(key: str) -> str:
    """Only keys of the shape this engine writes, so that none can leave the prefix."""
    if not isinstance(key, str) or not _OUTPUT_KEY.fullmatch(key):
        raise SandboxError(f"invalid output key: {key!r}")
    return key


def _holds(head: dict[str, Any] | None, sha256: str, size: int | None = None) -> bool:
    """Whether a HEAD response is of an object with this digest (and size)."""
    if head is None or head.get("Metadata", {}).get(_SHA_META) != sha256:
        return False
    return size is None or head.get("ContentLength") == size


@contextmanager
def _spooled(src: BinaryIO, directory: Path | None) -> Iterator[tuple[str, int, str]]:
    """Copy `src` into a local temporary file while hashing it; yield its path, size and
    sha256; remove it afterwards."""
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix="clobi-upload-", suffix=".tar")
    except OSError as exc:
        raise SandboxError(f"cannot spool an archive for upload: {exc}") from None
    try:
        with open(fd, "wb") as spool:
            size, sha256 = _copy_hashing(src, spool, name)
        yield name, size, sha256
    finally:
        Path(name).unlink(missing_ok=True)


def _copy_hashing(src: BinaryIO, spool: IO[bytes], name: str) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    try:
        while chunk := src.read(_SPOOL_CHUNK_BYTES):
            digest.update(chunk)
            spool.write(chunk)
            size += len(chunk)
        spool.flush()
    except OSError as exc:
        raise SandboxError(f"cannot spool an archive for upload in {name}: {exc}") from None
    return size, digest.hexdigest()


class _VerifiedBody(io.RawIOBase):
    """A GetObject body as a raw stream that checks the sha256 once it reaches the end."""

    def __init__(
        self,
        body: Any,
        sha256: str | None,
        uri: str,
        boundary: Callable[[], AbstractContextManager[None]],
    ) -> None:
        super().__init__()
        self._body = body
        self._expected = sha256
        self._digest = hashlib.sha256()
        self._uri = uri
        self._boundary = boundary  # translates boto errors met while reading
        self._checked = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        with self._boundary():
            data = self._body.read(len(view))
        view[: len(data)] = data
        self._digest.update(data)
        if not data and len(view):
            self._check()
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()

    def _check(self) -> None:
        if self._checked or self._expected is None:
            return
        self._checked = True
        if self._digest.hexdigest() != self._expected:
            raise SandboxError(
                f"{self._uri} is corrupt: its bytes have sha256 "
                f"{self._digest.hexdigest()}, expected {self._expected}"
            )

"""Streaming archives to and from the server with sha256 checked end to end.

Uploads are read from the caller's file in chunks while hashing; downloads are read from the
response in chunks while hashing, and a mismatch with the server's `X-Content-SHA256` raises
`SandboxError`. Neither holds an archive in memory.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from typing import BinaryIO

import httpx

from clobi.errors import SandboxError

CHUNK_BYTES = 1024 * 1024
SHA_HEADER = "X-Content-SHA256"
# A reader closed before the end (a tar reader stops at the end-of-archive blocks) still
# verifies the digest when at most about this much was left: the rest is read and hashed.
VERIFY_TAIL_BYTES = 256 * 1024


class HashingUpload:
    """The chunks of `src` for a request body, hashed as they are sent."""

    def __init__(self, src: BinaryIO) -> None:
        self.src = src
        self.digest = hashlib.sha256()
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.src.read(CHUNK_BYTES):
            self.digest.update(chunk)
            self.size += len(chunk)
            yield chunk

    def check(self, what: str, size: int, sha256: str) -> None:
        """Compare what the server stored with what was sent."""
        if size != self.size or sha256 != self.digest.hexdigest():
            raise SandboxError(
                f"{what}: the server stored {size} bytes with sha256 {sha256}, "
                f"but {self.size} bytes with sha256 {self.digest.hexdigest()} were sent"
            )


class VerifiedDownload(io.RawIOBase):
    """A readable stream over a streamed response, checking its sha256 at the end."""

    def __init__(self, response: httpx.Response, what: str) -> None:
        self._response = response
        self._chunks = response.iter_bytes(CHUNK_BYTES)
        self._pending = b""
        self._digest = hashlib.sha256()
        self._expected = response.headers.get(SHA_HEADER, "")
        self._read = 0
        self._done = False
        self.what = what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._pending and not self._done:
            self._pending = self._next_chunk()
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _next_chunk(self) -> bytes:
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self._done = True
            self._verify()
            return b""
        except httpx.HTTPError as exc:
            raise SandboxError(f"{self.what}: the download broke off: {exc}") from None
        self._digest.update(chunk)
        self._read += len(chunk)
        return chunk

    def _verify(self) -> None:
        if self._expected and self._digest.hexdigest() != self._expected:
            raise SandboxError(
                f"{self.what}: received {self._read} bytes with sha256 "
                f"{self._digest.hexdigest()}, expected {self._expected}"
            )

    def close(self) -> None:
        if self.closed:
            return
        try:
            budget = VERIFY_TAIL_BYTES
            while not self._done and budget > 0:
                budget -= len(self._next_chunk())
        finally:
            self._response.close()
            super().close()


def download(response: httpx.Response, what: str) -> BinaryIO:
    """A buffered, verified binary stream over a streamed response."""
    return io.BufferedReader(VerifiedDownload(response, what), CHUNK_BYTES)

"""Streaming request and response bodies between the event loop and blocking sandbox calls.

An upload is read by the sandbox engine in a worker thread through `BodyReader`, which pulls
the request's chunks from the event loop one at a time: a 1 GiB upload never sits in memory.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from typing import BinaryIO

import anyio.from_thread
from starlette.requests import ClientDisconnect, Request

from clobi.errors import UsageError

CHUNK_BYTES = 1024 * 1024


class BodyReader(io.RawIOBase):
    """A blocking, read-only file over a request body, for use in a worker thread."""

    def __init__(self, request: Request) -> None:
        self._chunks: AsyncIterator[bytes] = request.stream().__aiter__()
        self._pending = b""
        self._eof = False
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._pending and not self._eof:
            chunk = anyio.from_thread.run(self._next)
            if chunk is None:
                self._eof = True
            else:
                self._pending = chunk
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        self.size += n
        return n

    async def _next(self) -> bytes | None:
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            return None
        except ClientDisconnect:
            raise UsageError("the client went away during the upload") from None


def body_file(request: Request) -> BinaryIO:
    """The request body as a buffered binary file (read it from a worker thread)."""
    return io.BufferedReader(BodyReader(request), CHUNK_BYTES)


def file_chunks(src: BinaryIO) -> Iterator[bytes]:
    """The contents of `src` in chunks, closing it at the end (starlette iterates this in a
    worker thread)."""
    try:
        while chunk := src.read(CHUNK_BYTES):
            yield chunk
    finally:
        src.close()

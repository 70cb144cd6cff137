"""The sandbox store contract. Engines: `local` (a directory), later `s3`.

Archives are plain tar streams written and read by `clobi.sandbox.archive`. Inputs are keyed by
the sha256 of the archive bytes, stored once and shared by every job of an array. Outputs are
keyed by attempt. Everything streams: no archive is held in memory whole.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import BinaryIO


@dataclass(frozen=True)
class StoredBlob:
    key: str
    size: int
    sha256: str


class SandboxStore(ABC):
    """Contract of a sandbox store."""

    @abstractmethod
    def put_input(self, src: BinaryIO) -> StoredBlob:
        """Store an input archive read from `src` (streamed) under its sha256; storing the
        same bytes twice keeps one copy. Durable when it returns."""

    @abstractmethod
    def has_input(self, sha256: str) -> bool:
        """True when the input archive with this digest is stored."""

    @abstractmethod
    def open_input(self, sha256: str) -> BinaryIO:
        """A readable stream of a stored input archive; raises `NotFound`."""

    @abstractmethod
    def put_output(self, attempt_id: int, src: BinaryIO) -> StoredBlob:
        """Store the output archive of an attempt (streamed); durable when it returns."""

    @abstractmethod
    def open_output(self, key: str) -> BinaryIO:
        """A readable stream of a stored output archive; raises `NotFound`."""

    @abstractmethod
    def delete_output(self, key: str) -> None:
        """Forget an output archive; missing keys are ignored."""

    def close(self) -> None:  # noqa: B027 - optional: most engines hold nothing to release
        """Release connections; the engine is not used afterwards."""

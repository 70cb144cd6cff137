"""The `local` sandbox store: archives in a directory (`file:///abs/path`).

Layout: `inputs/<sha[:2]>/<sha>.tar` (content-addressed) and `outputs/<attempt_id>.tar`. Writes
go to a temporary file in the same file system, are fsynced, renamed into place and the directory
is fsynced, so an archive is either whole and durable or absent.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from clobi.errors import NotFound, SandboxError
from clobi.sandbox.base import SandboxStore, StoredBlob

_CHUNK_BYTES = 1024 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")


class LocalSandbox(SandboxStore):
    """A sandbox store over the directory `root` (created on first write)."""

    def __init__(self, root: Path) -> None:
        self._root = Path(os.path.abspath(root))

    @classmethod
    def from_url(cls, url: str) -> LocalSandbox:
        """The store at `file:///abs/path`."""
        parts = urlsplit(url)
        path = unquote(parts.path)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost") or path[:1] != "/":
            raise SandboxError(f"not a file:///absolute/path URL: {url}")
        return cls(Path(path))

    @property
    def root(self) -> Path:
        return self._root

    def put_input(self, src: BinaryIO) -> StoredBlob:
        """Store an input archive under its sha256; storing the same bytes again keeps one copy."""
        directory = self._root / "inputs"
        with _durable_dir(directory), _temp_copy(src, directory) as (tmp, size, sha):
            key = f"inputs/{sha[:2]}/{sha}.tar"
            final = self._root / key
            if not final.exists():  # else it is this very content: the temp is dropped
                with _durable_dir(final.parent):
                    os.replace(tmp, final)
        return StoredBlob(key=key, size=size, sha256=sha)

    def has_input(self, sha256: str) -> bool:
        """True when the input archive with this digest is stored."""
        return self._input_path(sha256).is_file()

    def open_input(self, sha256: str) -> BinaryIO:
        """A readable stream of a stored input archive; raises `NotFound`."""
        return _open(self._input_path(sha256), f"input archive {sha256}")

    def put_output(self, attempt_id: int, src: BinaryIO) -> StoredBlob:
        """Store (or replace) the output archive of an attempt."""
        if isinstance(attempt_id, bool) or not isinstance(attempt_id, int) or attempt_id < 0:
            raise SandboxError(f"invalid attempt id: {attempt_id!r}")
        key = f"outputs/{attempt_id}.tar"
        directory = self._root / "outputs"
        with _durable_dir(directory), _temp_copy(src, directory) as (tmp, size, sha):
            os.replace(tmp, self._root / key)
        return StoredBlob(key=key, size=size, sha256=sha)

    def open_output(self, key: str) -> BinaryIO:
        """A readable stream of a stored output archive; raises `NotFound`."""
        return _open(self._output_path(key), f"output archive {key}")

    def delete_output(self, key: str) -> None:
        """Forget an output archive; missing keys are ignored."""
        path = self._output_path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as e:
            raise SandboxError(f"cannot delete {path}: {e.strerror}") from None

    def _input_path(self, sha256: str) -> Path:
        if not _SHA256.fullmatch(sha256):
            raise SandboxError(f"not a sha256 digest: {sha256!r}")
        return self._root / "inputs" / sha256[:2] / f"{sha256}.tar"

    def _output_path(self, key: str) -> Path:
        """The file of an output key, refusing keys that could name anything else."""
        parts = PurePosixPath(key).parts
        path = self._root.joinpath(*parts)
        if (
            len(parts) != 2
            or parts[0] != "outputs"
            or parts[1] in ("", ".", "..")
            or "\x00" in key
            # a symlink inside the root must not lead out of it either
            or not path.resolve().is_relative_to(self._root.resolve())
        ):
            raise SandboxError(f"invalid output key: {key!r}")
        return path


def _open(path: Path, what: str) -> BinaryIO:
    try:
        return open(path, "rb")
    except (FileNotFoundError, NotADirectoryError):
        raise NotFound(f"no such {what}") from None
    except OSError as e:
        raise SandboxError(f"cannot open {path}: {e.strerror}") from None


@contextmanager
def _durable_dir(directory: Path) -> Iterator[None]:
    """Make `directory` (and missing parents) exist, durably, and fsync it after the body, so
    that entries renamed into it survive a crash."""
    try:
        _make_dirs(directory)
        yield
        _fsync_dir(directory)
    except OSError as e:
        raise SandboxError(f"cannot write in {directory}: {e.strerror}") from None


def _make_dirs(directory: Path) -> None:
    if directory.is_dir():
        return
    _make_dirs(directory.parent)
    try:
        directory.mkdir()
    except FileExistsError:  # made meanwhile by a concurrent writer
        return
    _fsync_dir(directory.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _temp_copy(src: BinaryIO, directory: Path) -> Iterator[tuple[Path, int, str]]:
    """Stream `src` into a fsynced temporary file in `directory` while hashing it; yield its
    path, size and sha256, and remove it afterwards unless it was renamed away."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=".incoming-", suffix=".tar")
    tmp = Path(name)
    try:
        digest, size = hashlib.sha256(), 0
        with open(fd, "wb") as out:
            while chunk := src.read(_CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        yield tmp, size, digest.hexdigest()
    finally:
        tmp.unlink(missing_ok=True)

"""Safe reading of plain (uncompressed) tar streams; packing is in `packing`.

Archives cross a trust boundary both ways: inputs come from users and are unpacked by agents
(which may run as root), outputs are collected from a workdir the job controlled. So archives
hold regular files and directories only, packing never follows a symlink, unpacking never writes
outside its destination, and members and bytes are counted while streaming.
"""

from __future__ import annotations

import errno
import os
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, Self

from clobi.errors import SandboxError, UnsafeArchive

_CHUNK_BYTES = 1024 * 1024
# tarfile reads pax and GNU long-name headers into memory whole and parses pax headers with
# regexes that are quadratic on hostile input before Python 3.11.10 (CVE-2024-6232): bound their
# size and how many may precede one member. A real one holds a path and a few numbers.
_MAX_META_BYTES = 8 * 1024
_MAX_HEADERS_PER_MEMBER = 6
_META_TYPES = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)
_MEMBER_TYPES = (*_FILE_TYPES, tarfile.DIRTYPE)
_TAR_KINDS = {
    tarfile.SYMTYPE: "symlinks",
    tarfile.LNKTYPE: "hardlinks",
    tarfile.CHRTYPE: "character devices",
    tarfile.BLKTYPE: "block devices",
    tarfile.FIFOTYPE: "FIFOs",
    tarfile.CONTTYPE: "contiguous files",
    tarfile.GNUTYPE_SPARSE: "sparse files",
}
# O_NONBLOCK so that opening a FIFO swapped in after the lstat cannot hang the packer.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Limits:
    """Bounds on one archive, enforced while it streams."""

    max_total_bytes: int = 8 * 1024**3
    max_members: int = 100_000


class _Budget:
    """Counts members and file bytes against `Limits`."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._members = 0
        self._bytes = 0

    def count_member(self, name: str) -> None:
        self._members += 1
        if self._members > self._limits.max_members:
            raise UnsafeArchive(f"{name}: more than {self._limits.max_members} members (limit)")

    def check_fits(self, name: str, size: int) -> None:
        """Refuse `size` more bytes if they would pass the limit."""
        if self._bytes + size > self._limits.max_total_bytes:
            raise UnsafeArchive(
                f"{name}: {size} more bytes exceed the {self._limits.max_total_bytes} byte limit"
            )

    def spend(self, name: str, size: int) -> None:
        """Count `size` more bytes, refusing before they pass the limit."""
        self.check_fits(name, size)
        self._bytes += size


# ---------------------------------------------------------------------------------------------
# Reading


class _GuardedTarInfo(tarfile.TarInfo):
    """Checks each raw header before tarfile acts on it: tarfile would otherwise read GNU sparse
    maps and chains of oversized extended headers into memory, and silently end the archive at
    a corrupt or truncated header that is not the first."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> Self:
        if isinstance(tar, _StreamReader):
            tar.headers_read += 1
            if tar.headers_read > _MAX_HEADERS_PER_MEMBER:
                raise UnsafeArchive("too many extended headers before one member")
        return super().fromtarfile(tar)

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        try:
            info = super().frombuf(buf, encoding, errors)
        except tarfile.HeaderError as e:
            if len(buf) == tarfile.BLOCKSIZE and not any(buf):
                raise  # the end marker: tarfile ends the archive there
            if len(buf) < tarfile.BLOCKSIZE:
                raise SandboxError(
                    "the archive is truncated: it ends without its end marker"
                ) from None
            raise SandboxError(f"the archive is corrupt: {e}") from None
        if info.type in _META_TYPES:
            if info.size > _MAX_META_BYTES:
                raise UnsafeArchive(f"{info.name}: an extended header of {info.size} bytes")
        else:
            _check_type(info)
        return info

    def _proc_gnusparse_10(self, *_: object) -> None:
        # Its sparse map declares its own length and tarfile reads it without bound.
        raise UnsafeArchive("sparse files are not allowed")


class _StreamReader(tarfile.TarFile):
    """A forward-only reader whose memory stays flat (tarfile remembers every member read)."""

    tarinfo = _GuardedTarInfo
    members: list[tarfile.TarInfo]
    headers_read = 0  # since the last member, counted by `_GuardedTarInfo`

    def next(self) -> tarfile.TarInfo | None:
        self.members.clear()
        self.headers_read = 0
        return super().next()


def _check_type(info: tarfile.TarInfo) -> None:
    if info.type not in _MEMBER_TYPES or info.issparse():
        kind = _TAR_KINDS.get(info.type, f"members of type {info.type!r}")
        raise UnsafeArchive(f"{info.name!r}: {kind} are not allowed")
    if info.size < 0:
        raise SandboxError(f"{info.name!r}: the archive is corrupt: a negative size")


def _stream(src: BinaryIO) -> Iterator[tuple[tarfile.TarInfo, IO[bytes] | None]]:
    """Each member with a reader of its data (None for directories), strictly in order."""
    with _StreamReader.open(fileobj=src, mode="r|") as tar:
        while (member := tar.next()) is not None:
            _check_type(member)  # again, now that pax headers have been applied
            yield member, tar.extractfile(member) if member.type in _FILE_TYPES else None


@contextmanager
def _reading(what: str) -> Iterator[None]:
    """Turn tarfile's and the OS's errors into ours."""
    try:
        yield
    except SandboxError as e:
        raise type(e)(f"{what}: {e.message}") from None
    except (tarfile.TarError, ValueError) as e:  # tarfile lets some ValueErrors through
        raise SandboxError(f"{what}: the archive is corrupt or truncated: {e}") from None
    except OSError as e:
        raise SandboxError(f"{what}: {e}") from None


def _parts(name: str) -> tuple[str, ...]:
    return tuple(p for p in name.split("/") if p not in ("", "."))


def _member_parts(member: tarfile.TarInfo) -> tuple[str, ...]:
    """The path components of a member, refusing any name that could leave the destination."""
    name = member.name
    if not name or name.startswith("/") or "\x00" in name:
        raise UnsafeArchive(f"{name!r}: empty or absolute names are not allowed")
    parts = _parts(name)
    if ".." in parts:
        raise UnsafeArchive(f"{name!r}: '..' is not allowed in names")
    if not parts and not member.isdir():
        raise UnsafeArchive(f"{name!r}: a file needs a name")
    return parts


def _file_mode(mode: int) -> int:
    return 0o755 if mode & 0o111 else 0o644


class _Tree:
    """Creates directories and files under a root through directory fds opened one component
    at a time with O_NOFOLLOW, so no symlink, planted before or raced in, is ever traversed."""

    def __init__(self, root: Path) -> None:
        self._root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._last: tuple[tuple[str, ...], int] | None = None  # tars group files by directory

    def close(self) -> None:
        self._forget_last()
        os.close(self._root_fd)

    def make_dir(self, parts: tuple[str, ...]) -> None:
        self._dir_fd(parts)

    def write_file(
        self, parts: tuple[str, ...], data: IO[bytes], mode: int, budget: _Budget
    ) -> None:
        """Create a new file (never an existing one) and copy `data` into it, counted."""
        parent, name, shown = self._dir_fd(parts[:-1]), parts[-1], "/".join(parts)
        try:
            fd = os.open(name, _CREATE_FLAGS, 0o600, dir_fd=parent)
        except FileExistsError:
            raise UnsafeArchive(f"{shown}: already exists (a duplicate member?)") from None
        done = False
        try:
            with open(fd, "wb") as out:
                os.fchmod(fd, mode)  # exact, whatever the umask
                while chunk := data.read(_CHUNK_BYTES):
                    budget.spend(shown, len(chunk))
                    out.write(chunk)
            done = True
        finally:
            if not done:  # leave no half-written file behind
                os.unlink(name, dir_fd=parent)

    def _dir_fd(self, parts: tuple[str, ...]) -> int:
        """An fd of directory `parts`, created as needed; valid until the next call."""
        if self._last is not None and self._last[0] == parts:
            return self._last[1]
        self._forget_last()
        fd = os.dup(self._root_fd)
        for i, part in enumerate(parts):
            fd = _enter_dir(fd, part, "/".join(parts[: i + 1]))
        self._last = (parts, fd)
        return fd

    def _forget_last(self) -> None:
        if self._last is not None:
            os.close(self._last[1])
            self._last = None


def _enter_dir(parent_fd: int, name: str, shown: str) -> int:
    """Open (creating it if missing) directory `name` under `parent_fd`, which is closed."""
    try:
        try:
            os.mkdir(name, 0o755, dir_fd=parent_fd)
            created = True
        except FileExistsError:
            created = False
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeArchive(f"{shown}: a file or symlink is in the way") from None
        raise
    finally:
        os.close(parent_fd)
    if created:
        os.fchmod(fd, 0o755)  # mkdir's mode is masked by the umask
    return fd


def unpack(src: BinaryIO, dest_dir: Path, limits: Limits = Limits()) -> list[str]:
    """Extract the tar stream `src` into `dest_dir` (created if missing) and return the names
    of the files and directories extracted, in archive order.

    Each member is checked before anything is written for it; a member that is not a regular
    file or directory, a name that is absolute or holds `..`, an existing file or symlink in the
    way, or exceeding `limits` raises `UnsafeArchive`; a corrupt or truncated archive raises
    `SandboxError`. Members before the bad one stay extracted: discard `dest_dir` on error.
    """
    budget, names = _Budget(limits), []
    with _reading(f"unpack into {dest_dir}"):
        dest_dir.mkdir(parents=True, exist_ok=True)
        tree = _Tree(dest_dir)
        try:
            for member, data in _stream(src):
                budget.count_member(member.name)
                parts = _member_parts(member)
                if data is None:
                    tree.make_dir(parts)
                else:
                    budget.check_fits(member.name, member.size)  # before reading any of it
                    tree.write_file(parts, data, _file_mode(member.mode), budget)
                if parts:
                    names.append("/".join(parts))
        finally:
            tree.close()
    return names


def read_member(src: BinaryIO, name: str, max_bytes: int = 64 * 1024**2) -> bytes | None:
    """The first `max_bytes` bytes of the regular member `name`, or None when the stream holds
    no such member (used to show a job's stdout)."""
    wanted = _parts(name)
    with _reading(f"read {name}"):
        for member, data in _stream(src):
            if data is not None and _parts(member.name) == wanted:
                return data.read(max_bytes)
    return None


def list_members(src: BinaryIO) -> list[tuple[str, int]]:
    """The name and size of every member of the stream, in order."""
    with _reading("list members"):
        return [(member.name, member.size) for member, _ in _stream(src)]


# ---------------------------------------------------------------------------------------------
# Writing

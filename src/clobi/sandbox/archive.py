"""Safe packing and unpacking of plain (uncompressed) tar streams.

Archives cross a trust boundary both ways: inputs come from users and are unpacked by agents
(which may run as root), outputs are collected from a workdir the job controlled. So archives
hold regular files and directories only, packing never follows a symlink, unpacking never writes
outside its destination, and members and bytes are counted while streaming.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import IO, BinaryIO, Self

from clobi.errors import SandboxError, UnsafeArchive
from clobi.model.spec import InputItem

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


def _mode_kind(mode: int) -> str | None:
    """What a file that may not be packed is, in words; None for regular files and dirs."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kinds = (
        (stat.S_ISLNK, "symlinks"),
        (stat.S_ISFIFO, "FIFOs"),
        (stat.S_ISSOCK, "sockets"),
        (stat.S_ISCHR, "character devices"),
        (stat.S_ISBLK, "block devices"),
    )
    return next((kind for test, kind in kinds if test(mode)), "special files")


def _os_error(what: str, e: OSError, shown: str) -> SandboxError:
    if e.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink that appeared after the lstat
        return UnsafeArchive(f"{what}: {shown}: symlinks are not allowed")
    if e.errno == errno.ENOENT:
        return SandboxError(f"{what}: no such file: {shown}")
    return SandboxError(f"{what}: {shown}: {e.strerror or e}")  # tarfile's own lack strerror


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def _tar_info(name: str, kind: bytes, mtime: float, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode = kind, mode
    info.mtime = int(mtime)  # a fractional mtime would cost a pax header per member
    return info


class _Packer:
    """Writes files and directories into a tar stream without following any symlink: each is
    lstat'ed, opened relative to its parent's fd with O_NOFOLLOW and checked to be the file that
    was lstat'ed, so a job swapping a file for a link or a FIFO meanwhile gains nothing."""

    def __init__(
        self, tar: tarfile.TarFile, limits: Limits, what: str, *, skip_duplicates: bool
    ) -> None:
        self.names: list[str] = []
        self.what = what
        self._tar, self._skip_duplicates = tar, skip_duplicates
        self._budget = _Budget(limits)
        self._seen: set[str] = set()

    def add_path(self, path: Path, arcname: str, shown: str) -> None:
        """Pack `path` at `arcname`; links above its last component are followed (they are
        the caller's own), the last component and everything below it are not."""
        try:
            parent_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise _os_error(self.what, e, shown) from None
        try:
            self.add(parent_fd, path.name, arcname, shown)
        finally:
            os.close(parent_fd)

    def add(self, dir_fd: int, name: str, arcname: str, shown: str) -> None:
        """Pack `name` (in directory `dir_fd`) at `arcname`, directories recursively."""
        try:
            fd = self._open(dir_fd, name, shown)
            try:
                if stat.S_ISDIR(os.fstat(fd).st_mode):
                    self.add_dir(fd, arcname, shown)
                else:
                    self._add_file(fd, arcname, shown)
            finally:
                os.close(fd)
        except OSError as e:
            raise _os_error(self.what, e, shown) from None

    def add_dir(self, fd: int, arcname: str, shown: str) -> None:
        """Pack the open directory `fd` at `arcname`; "" packs its entries at the top."""
        if arcname and arcname not in self._seen:
            info = _tar_info(arcname, tarfile.DIRTYPE, os.fstat(fd).st_mtime, 0o755)
            self._emit(info, None, shown)
        for child in sorted(os.listdir(fd)):  # sorted: the same inputs give the same bytes
            self.add(fd, child, _join(arcname, child), _join(shown, child))

    def _add_file(self, fd: int, arcname: str, shown: str) -> None:
        if not arcname:
            raise UnsafeArchive(f"{self.what}: {shown}: a file needs a name in the archive")
        if arcname in self._seen:
            if self._skip_duplicates:
                return
            raise SandboxError(f"{self.what}: {shown}: {arcname} is packed twice")
        st = os.fstat(fd)
        info = _tar_info(arcname, tarfile.REGTYPE, st.st_mtime, _file_mode(st.st_mode))
        info.size = st.st_size  # tarfile copies exactly this much, even if the file grows
        self._budget.spend(shown, st.st_size)
        with open(fd, "rb", closefd=False) as data:
            self._emit(info, data, shown)

    def _emit(self, info: tarfile.TarInfo, data: IO[bytes] | None, shown: str) -> None:
        self._budget.count_member(shown)
        self._tar.addfile(info, data)
        self._seen.add(info.name)
        self.names.append(info.name)

    def _open(self, dir_fd: int, name: str, shown: str) -> int:
        before = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        kind = _mode_kind(before.st_mode)
        if kind is not None:
            raise UnsafeArchive(f"{self.what}: {shown}: {kind} are not allowed")
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
        after = os.fstat(fd)
        if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            os.close(fd)
            raise UnsafeArchive(f"{self.what}: {shown}: replaced while being packed")
        return fd


@contextmanager
def _packing(
    dest: BinaryIO, limits: Limits, what: str, *, skip_duplicates: bool
) -> Iterator[_Packer]:
    """A packer writing a tar stream to `dest`, with tarfile's and the OS's errors made ours."""
    try:
        with tarfile.open(fileobj=dest, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            yield _Packer(tar, limits, what, skip_duplicates=skip_duplicates)
    except RecursionError:
        raise UnsafeArchive(f"{what}: the directory tree is too deep") from None
    except OSError as e:
        raise SandboxError(f"{what}: {e}") from None


def _relative_parts(path: str, what: str) -> tuple[str, ...]:
    parts = _parts(path)
    if path.startswith("/") or ".." in parts or "\x00" in path:
        raise UnsafeArchive(f"{what} {path!r} must be a relative path without '..'")
    return parts


def pack_inputs(
    inputs: Sequence[InputItem], base_dir: Path, dest: BinaryIO, limits: Limits = Limits()
) -> int:
    """Write a tar stream of `inputs` to `dest` and return its number of members.

    Each item's `source` (relative to `base_dir`, or absolute) is packed at `dest`, a relative
    path ("." puts a directory's entries at the top); directories are packed recursively, in
    name order so that the same inputs give the same bytes. A missing source raises
    `SandboxError`; a symlink, FIFO, socket or device anywhere in a source, a bad destination
    or exceeding `limits` raises `UnsafeArchive`.
    """
    with _packing(dest, limits, "inputs", skip_duplicates=False) as packer:
        for item in inputs:
            arcname = "/".join(_relative_parts(item.dest, "inputs: destination"))
            source = Path(os.path.normpath(base_dir / item.source))
            packer.add_path(source, arcname, item.source)
    return len(packer.names)


def collect_outputs(
    workdir: Path,
    patterns: Sequence[str],
    dest: BinaryIO,
    extra: Sequence[tuple[Path, str]] = (),
    limits: Limits = Limits(),
) -> list[str]:
    """Write a tar stream of a job's outputs to `dest` and return the names packed.

    `extra` (path, name) pairs are packed first; then what the glob `patterns` match under
    `workdir` (`**` is any number of directories, `*` does not match a leading dot, a matched
    directory is packed recursively, no match is fine), each name once. The workdir is the
    job's, so nothing in it is followed: a symlink, FIFO, socket or device that a pattern
    matches or must pass through, an absolute pattern or one with `..`, or exceeding `limits`
    raises `UnsafeArchive`.
    """
    globs = [_relative_parts(p, "outputs: pattern") for p in patterns]
    arcnames = ["/".join(_relative_parts(a, "outputs: name")) for _, a in extra]
    with _packing(dest, limits, "outputs", skip_duplicates=True) as packer:
        for (path, _), arcname in zip(extra, arcnames, strict=True):
            packer.add_path(path, arcname, str(path))  # first, so they win a name clash
        root_fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for parts in globs:
                _expand(packer, root_fd, "", parts)
        finally:
            os.close(root_fd)
    return packer.names


def _is_literal(part: str) -> bool:
    return not any(c in part for c in "*?[")


def _expand(packer: _Packer, dir_fd: int, prefix: str, parts: tuple[str, ...]) -> None:
    """Pack what the glob `parts` matches under the directory `dir_fd`, found at `prefix`."""
    if not parts:
        packer.add_dir(dir_fd, prefix, prefix or ".")
        return
    head, rest = parts[0], parts[1:]
    if head == "**":
        _expand(packer, dir_fd, prefix, rest)
        if rest:  # a trailing `**` has just packed everything below
            for name in sorted(os.listdir(dir_fd)):
                _descend(packer, dir_fd, name, _join(prefix, name), parts, explicit=False)
        return
    for name in _matching(dir_fd, head):
        path = _join(prefix, name)
        if rest:
            _descend(packer, dir_fd, name, path, rest, explicit=_is_literal(head))
        else:
            packer.add(dir_fd, name, path, path)


def _matching(dir_fd: int, part: str) -> list[str]:
    """Names in `dir_fd` matching one glob component, in order."""
    if _is_literal(part):
        try:
            os.stat(part, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return []
        return [part]
    hidden = part.startswith(".")
    names = sorted(os.listdir(dir_fd))
    return [n for n in names if fnmatchcase(n, part) and (hidden or not n.startswith("."))]


def _descend(
    packer: _Packer, dir_fd: int, name: str, path: str, parts: tuple[str, ...], *, explicit: bool
) -> None:
    """Expand `parts` inside the subdirectory `name`. Wildcards pass over what is not a
    directory; a symlink where the pattern names a directory raises."""
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
        if explicit and stat.S_ISLNK(mode):
            raise UnsafeArchive(f"{packer.what}: {path}: symlinks are not allowed")
        if not stat.S_ISDIR(mode):
            return
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        raise _os_error(packer.what, e, path) from None
    try:
        _expand(packer, fd, path, parts)
    finally:
        os.close(fd)

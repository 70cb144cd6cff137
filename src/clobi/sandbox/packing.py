"""Safe packing: user inputs into an input archive, a job's outputs into an output archive.

Packing never follows a symlink (the job controlled its work directory and may have planted
`out -> /etc`), refuses links, devices, FIFOs and sockets, and counts members and bytes against
the limits while it streams. Reading archives is in `archive`.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from fnmatch import fnmatchcase
from pathlib import Path
from typing import IO, BinaryIO

from clobi.errors import SandboxError, UnsafeArchive
from clobi.model.spec import InputItem
from clobi.sandbox.archive import _DIR_FLAGS, _READ_FLAGS, Limits, _Budget, _file_mode, _parts


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

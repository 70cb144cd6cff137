"""A minimal ustar writer for the agent's hot path: a handful of small in-memory members
(stdout, stderr, the attempt log) packed without `tarfile`'s per-member overhead.

Output is a plain POSIX ustar stream that `tarfile` and `archive.unpack` read like any other.
"""

from __future__ import annotations

from collections.abc import Iterable

_BLOCK = 512
_MAX_NAME = 100
_MAX_SIZE = 8**11 - 1  # what an 11-digit octal size field holds


def small_tar(members: Iterable[tuple[str, bytes]], mtime: int) -> bytes:
    """A tar stream of regular files `(name, data)`, mode 0644, owned by 0:0."""
    out = bytearray()
    for name, data in members:
        out += header(name, len(data), mtime)
        out += data
        out += bytes(-len(data) % _BLOCK)
    out += bytes(2 * _BLOCK)
    return bytes(out)


def header(name: str, size: int, mtime: int, mode: int = 0o644) -> bytes:
    """One ustar header block for a regular file."""
    raw = name.encode()
    if not raw or len(raw) >= _MAX_NAME or name.startswith("/") or ".." in name.split("/"):
        raise ValueError(f"tar member name not allowed here: {name!r}")
    if not 0 <= size <= _MAX_SIZE:
        raise ValueError(f"tar member too large for a ustar header: {size}")
    # name, mode, uid, gid, size, mtime (bytes 0-147); the checksum field (148-155) counts
    # as eight spaces while summing; then the constant rest: type '0', magic and version.
    head = b"%s%07o\0%s%011o\0%011o\0" % (
        raw.ljust(_MAX_NAME, b"\0"),
        mode,
        _OWNER,
        size,
        max(0, mtime),
    )
    return head + b"%06o\0 " % (sum(head) + _TAIL_SUM) + _TAIL


_OWNER = b"%07o\0%07o\0" % (0, 0)  # uid, gid
_TAIL = (b"0" + bytes(100) + b"ustar\x0000").ljust(_BLOCK - 156, b"\0")  # bytes 156-511
_TAIL_SUM = sum(_TAIL) + 8 * ord(" ")  # the tail plus the checksum field as spaces

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from clobi.sandbox import archive
from clobi.sandbox.tarwriter import header, small_tar


def test_a_small_tar_reads_back_with_tarfile_byte_for_byte() -> None:
    members = [("stdout", b"hello\n"), ("stderr", b""), ("attempt.log", b"x" * 1000)]
    data = small_tar(members, mtime=1_700_000_000)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        got = [(m.name, tar.extractfile(m).read(), m.mode, m.mtime) for m in tar]  # type: ignore[union-attr]
    assert got == [(n, d, 0o644, 1_700_000_000) for n, d in members]


def test_a_small_tar_passes_the_safe_unpacker(tmp_path: Path) -> None:
    data = small_tar([("stdout", b"5\n")], mtime=0)
    assert archive.unpack(io.BytesIO(data), tmp_path) == ["stdout"]
    assert (tmp_path / "stdout").read_bytes() == b"5\n"


@pytest.mark.parametrize("name", ["", "/abs", "a/../../x", "x" * 100])
def test_names_that_could_escape_or_do_not_fit_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not allowed"):
        header(name, 0, 0)


@pytest.mark.parametrize(
    ("name", "size", "mtime", "mode"),
    [
        ("stdout", 0, 1_700_000_000, 0o644),
        ("a/b.txt", 12_345, 0, 0o755),
        ("x" * 99, 8**11 - 1, 1, 0o600),
    ],
)
def test_a_header_is_the_one_tarfile_writes_for_the_same_member(
    name: str, size: int, mtime: int, mode: int
) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, mode
    info.uname = info.gname = ""
    expected = info.tobuf(format=tarfile.USTAR_FORMAT)
    assert header(name, size, mtime, mode) == expected

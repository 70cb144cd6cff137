"""Safe packing and unpacking of tar streams (`clobi.sandbox.archive`)."""

from __future__ import annotations

import io
import os
import re
import tarfile
from pathlib import Path

import pytest

from clobi.errors import SandboxError, UnsafeArchive
from clobi.model.spec import InputItem
from clobi.sandbox.archive import Limits, list_members, read_member, unpack
from clobi.sandbox.packing import collect_outputs, pack_inputs

# --- factories --------------------------------------------------------------------------------


Member = tuple[tarfile.TarInfo, bytes]


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **attrs: object) -> Member:
    """A hand-made tar member: tarfile writes whatever it is given, hostile or not."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    for attr, value in attrs.items():
        setattr(info, attr, value)
    return info, data


def tar_bytes(*members: Member) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """An unpack destination inside a sentinel parent, to see anything written beside it."""
    return tmp_path / "sentinel" / "dest"


def everything_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def assert_nothing_escaped(dest: Path) -> None:
    assert everything_under(dest.parent) - {"dest"} == {
        f"dest/{name}" for name in everything_under(dest)
    }


def packed(tmp_path: Path, *items: InputItem, limits: Limits | None = None) -> bytes:
    out = io.BytesIO()
    pack_inputs(list(items), tmp_path, out, limits or Limits())
    return out.getvalue()


def collected(workdir: Path, *patterns: str, **kwargs: object) -> tuple[list[str], bytes]:
    out = io.BytesIO()
    names = collect_outputs(workdir, list(patterns), out, **kwargs)  # type: ignore[arg-type]
    return names, out.getvalue()


def names_in(archive: bytes) -> list[str]:
    return [name for name, _ in list_members(io.BytesIO(archive))]


def write(path: Path, text: str = "x", mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


# --- unpack: hostile members --------------------------------------------------------------------

HOSTILE = {
    "parent": member("../escaped", data=b"boom"),
    "absolute": member(f"/tmp/clobi-test-absolute-{os.getpid()}", data=b"boom"),
    "inner parent": member("a/../../escaped", data=b"boom"),
    "empty name": member("", data=b"boom"),
    "symlink": member("link", tarfile.SYMTYPE, linkname="/etc"),
    "hardlink": member("hard", tarfile.LNKTYPE, linkname="/etc/passwd"),
    "fifo": member("fifo", tarfile.FIFOTYPE),
    "char device": member("null", tarfile.CHRTYPE, devmajor=1, devminor=3),
    "block device": member("disk", tarfile.BLKTYPE, devmajor=8, devminor=0),
    "contiguous": member("contig", tarfile.CONTTYPE),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_member_is_rejected_before_anything_is_written(case: str, dest: Path) -> None:
    archive = tar_bytes(HOSTILE[case])

    with pytest.raises(UnsafeArchive):
        unpack(io.BytesIO(archive), dest)

    assert everything_under(dest.parent) == {"dest"}
    assert not Path(f"/tmp/clobi-test-absolute-{os.getpid()}").exists()


def test_a_symlink_member_is_rejected_before_anything_is_written(dest: Path) -> None:
    archive = tar_bytes(member("link", tarfile.SYMTYPE, linkname="/etc"), member("link/x"))

    with pytest.raises(UnsafeArchive, match="symlinks are not allowed"):
        unpack(io.BytesIO(archive), dest)

    assert everything_under(dest.parent) == {"dest"}


def test_members_before_a_hostile_one_stay_but_nothing_leaves_the_destination(
    dest: Path,
) -> None:
    archive = tar_bytes(member("ok.txt", data=b"fine"), member("../../escaped", data=b"boom"))

    with pytest.raises(UnsafeArchive, match=re.escape("'..' is not allowed")):
        unpack(io.BytesIO(archive), dest)

    assert (dest / "ok.txt").read_bytes() == b"fine"
    assert_nothing_escaped(dest)


def test_a_symlink_already_in_the_destination_is_not_followed(tmp_path: Path, dest: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest.mkdir(parents=True)
    (dest / "planted").symlink_to(outside)
    archive = tar_bytes(member("planted/x.txt", data=b"boom"))

    with pytest.raises(UnsafeArchive, match="planted"):
        unpack(io.BytesIO(archive), dest)

    assert list(outside.iterdir()) == []


def test_a_duplicate_member_does_not_overwrite_the_first(dest: Path) -> None:
    archive = tar_bytes(member("a.txt", data=b"first"), member("a.txt", data=b"second"))

    with pytest.raises(UnsafeArchive, match="already exists"):
        unpack(io.BytesIO(archive), dest)

    assert (dest / "a.txt").read_bytes() == b"first"


SPARSE_PAX_HEADERS = {
    "1.0": {"GNU.sparse.major": "1", "GNU.sparse.minor": "0"},
    "0.1": {"GNU.sparse.map": "0,4"},
    "0.0": {"GNU.sparse.size": "4"},
}


@pytest.mark.parametrize("version", sorted(SPARSE_PAX_HEADERS))
def test_a_pax_sparse_member_is_rejected(version: str, dest: Path) -> None:
    sparse_map = b"99999999999999\n"  # a 1.0 map: tarfile would read that many numbers
    info, _ = member("sparse", data=sparse_map)
    info.pax_headers = SPARSE_PAX_HEADERS[version]

    with pytest.raises(UnsafeArchive, match="sparse"):
        unpack(io.BytesIO(tar_bytes((info, sparse_map))), dest)

    assert everything_under(dest) == set()


def test_a_garbled_sparse_map_is_a_corrupt_archive_not_a_raw_error(dest: Path) -> None:
    info, data = member("sparse", data=b"x")
    info.pax_headers = {"GNU.sparse.map": "zero,four"}

    with pytest.raises(SandboxError, match="corrupt"):
        unpack(io.BytesIO(tar_bytes((info, data))), dest)


def test_a_chain_of_extended_headers_is_rejected(dest: Path) -> None:
    chain = [member(f"pax{i}", tarfile.XHDTYPE) for i in range(20)]

    with pytest.raises(UnsafeArchive, match="too many extended headers"):
        unpack(io.BytesIO(tar_bytes(*chain, member("x.txt", data=b"x"))), dest)


def test_an_oversized_extended_header_is_rejected(dest: Path) -> None:
    info, data = member("x.txt", data=b"x")
    info.pax_headers = {"comment": "y" * (128 * 1024)}

    with pytest.raises(UnsafeArchive, match="extended header"):
        unpack(io.BytesIO(tar_bytes((info, data))), dest)


# --- unpack: limits and corruption ---------------------------------------------------------------


class CountingReader(io.RawIOBase):
    """Counts the bytes read from it."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = self._data.readinto(buffer)
        self.bytes_read += n
        return n


def test_a_huge_declared_size_is_rejected_before_its_data_is_read(dest: Path) -> None:
    header = tarfile.TarInfo("big")
    header.size = 1024**3
    stream = CountingReader(header.tobuf(tarfile.PAX_FORMAT) + b"\0" * (4 * 1024 * 1024))

    with pytest.raises(UnsafeArchive, match="limit"):
        unpack(stream, dest, Limits(max_total_bytes=1024**2))  # type: ignore[arg-type]

    assert stream.bytes_read < 64 * 1024
    assert everything_under(dest) == set()


def test_the_size_limit_counts_all_members_together(dest: Path) -> None:
    archive = tar_bytes(*(member(f"f{i}", data=b"x" * 400) for i in range(3)))

    with pytest.raises(UnsafeArchive, match="1000 byte limit"):
        unpack(io.BytesIO(archive), dest, Limits(max_total_bytes=1000))

    assert sorted(everything_under(dest)) == ["f0", "f1"]


def test_the_member_limit_is_enforced_while_streaming(dest: Path) -> None:
    archive = tar_bytes(*(member(f"f{i}", data=b"x") for i in range(5)))

    with pytest.raises(UnsafeArchive, match="more than 3 members"):
        unpack(io.BytesIO(archive), dest, Limits(max_members=3))

    assert len(everything_under(dest)) == 3


@pytest.mark.parametrize("cut", [100, 512, 700, 1536])
def test_a_truncated_archive_gives_a_clean_error(cut: int, dest: Path) -> None:
    archive = tar_bytes(member("a.txt", data=b"a" * 600), member("b.txt", data=b"b"))

    with pytest.raises(SandboxError, match="truncated") as raised:
        unpack(io.BytesIO(archive[:cut]), dest)

    assert not isinstance(raised.value.__cause__, tarfile.TarError)


@pytest.mark.parametrize("data", [b"", b"not a tar archive at all" * 100])
def test_an_empty_or_garbage_stream_is_not_an_archive(data: bytes, dest: Path) -> None:
    with pytest.raises(SandboxError, match=r"corrupt|truncated"):
        unpack(io.BytesIO(data), dest)


# --- pack_inputs and round trips -----------------------------------------------------------------


def test_packed_inputs_unpack_to_the_same_contents_and_exec_bits(
    tmp_path: Path, dest: Path
) -> None:
    write(tmp_path / "src/data/table.csv", "a,b\n")
    write(tmp_path / "src/data/deep/run.sh", "#!/bin/sh\n", mode=0o750)
    write(tmp_path / "config.yaml", "k: v\n", mode=0o600)
    archive = packed(
        tmp_path, InputItem("src/data", "data"), InputItem(str(tmp_path / "config.yaml"), "c.yaml")
    )

    names = unpack(io.BytesIO(archive), dest)

    assert names == ["data", "data/deep", "data/deep/run.sh", "data/table.csv", "c.yaml"]
    assert (dest / "data/table.csv").read_text() == "a,b\n"
    assert (dest / "data/deep/run.sh").stat().st_mode & 0o777 == 0o755
    assert (dest / "c.yaml").stat().st_mode & 0o777 == 0o644
    assert (dest / "data/deep").stat().st_mode & 0o777 == 0o755


def test_pack_inputs_returns_the_member_count(tmp_path: Path) -> None:
    write(tmp_path / "d/a")
    write(tmp_path / "d/b")

    assert pack_inputs([InputItem("d", "d")], tmp_path, io.BytesIO()) == 3


def test_the_same_inputs_pack_to_the_same_bytes(tmp_path: Path) -> None:
    for name in ("b", "a", "c/d"):
        write(tmp_path / "in" / name)

    first = packed(tmp_path, InputItem("in", "in"))

    assert packed(tmp_path, InputItem("in", "in")) == first


def test_a_long_non_ascii_name_survives_a_round_trip(tmp_path: Path, dest: Path) -> None:
    name = "d" * 120 + "/é" * 3 + "/" + "f" * 150
    write(tmp_path / "in" / name, "deep")

    unpack(io.BytesIO(packed(tmp_path, InputItem("in", "in"))), dest)

    assert (dest / "in" / name).read_text() == "deep"


def test_a_missing_input_is_named(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match=re.escape("inputs: no such file: data/x.csv")):
        packed(tmp_path, InputItem("data/x.csv", "x.csv"))


def test_pack_inputs_rejects_a_symlink_inside_an_input_dir(tmp_path: Path) -> None:
    write(tmp_path / "in/ok.txt")
    (tmp_path / "in/link").symlink_to("/etc/passwd")

    with pytest.raises(UnsafeArchive, match="in/link: symlinks"):
        packed(tmp_path, InputItem("in", "in"))


def test_pack_inputs_rejects_a_fifo_inside_an_input_dir_without_blocking(tmp_path: Path) -> None:
    write(tmp_path / "in/ok.txt")
    os.mkfifo(tmp_path / "in/pipe")

    with pytest.raises(UnsafeArchive, match="in/pipe: FIFOs"):
        packed(tmp_path, InputItem("in", "in"))


def test_pack_inputs_rejects_a_symlinked_source(tmp_path: Path) -> None:
    write(tmp_path / "real.txt")
    (tmp_path / "alias.txt").symlink_to(tmp_path / "real.txt")

    with pytest.raises(UnsafeArchive, match=re.escape("alias.txt")):
        packed(tmp_path, InputItem("alias.txt", "a.txt"))


@pytest.mark.parametrize("bad", ["../x", "/abs", "a/../../x"])
def test_pack_inputs_rejects_a_destination_outside_the_sandbox(tmp_path: Path, bad: str) -> None:
    write(tmp_path / "a.txt")

    with pytest.raises(UnsafeArchive, match="destination"):
        packed(tmp_path, InputItem("a.txt", bad))


def test_two_inputs_at_the_same_destination_are_refused(tmp_path: Path) -> None:
    write(tmp_path / "a.txt")
    write(tmp_path / "b.txt")

    with pytest.raises(SandboxError, match="packed twice"):
        packed(tmp_path, InputItem("a.txt", "x.txt"), InputItem("b.txt", "x.txt"))


def test_pack_inputs_enforces_limits(tmp_path: Path) -> None:
    write(tmp_path / "in/a", "x" * 100)
    write(tmp_path / "in/b", "x" * 100)

    with pytest.raises(UnsafeArchive, match="members"):
        packed(tmp_path, InputItem("in", "in"), limits=Limits(max_members=2))
    with pytest.raises(UnsafeArchive, match="byte limit"):
        packed(tmp_path, InputItem("in", "in"), limits=Limits(max_total_bytes=150))


# --- collect_outputs -----------------------------------------------------------------------------


def test_a_planted_symlink_to_etc_is_refused_and_nothing_of_etc_is_packed(tmp_path: Path) -> None:
    (tmp_path / "out").symlink_to("/etc")
    out = io.BytesIO()

    with pytest.raises(UnsafeArchive, match="out: symlinks"):
        collect_outputs(tmp_path, ["out/*"], out)

    assert b"passwd" not in out.getvalue()
    assert b"root:" not in out.getvalue()


def test_a_matched_symlink_file_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "results/a.txt")
    (tmp_path / "results/b.txt").symlink_to("/etc/passwd")

    with pytest.raises(UnsafeArchive, match=re.escape("results/b.txt")):
        collected(tmp_path, "**/*.txt")


def test_a_symlink_inside_a_matched_directory_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "results/a.txt")
    (tmp_path / "results/etc").symlink_to("/etc")

    with pytest.raises(UnsafeArchive, match="results/etc"):
        collected(tmp_path, "results")


def test_a_matched_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "out.log")

    with pytest.raises(UnsafeArchive, match=re.escape("out.log: FIFOs")):
        collected(tmp_path, "*.log")


def test_an_unmatched_symlink_is_left_alone(tmp_path: Path) -> None:
    write(tmp_path / "results/a.csv")
    (tmp_path / "venv").symlink_to("/usr")

    names, _ = collected(tmp_path, "**/*.csv")

    assert names == ["results/a.csv"]


@pytest.mark.parametrize("bad", ["/etc/*", "../*", "results/../../x"])
def test_an_absolute_or_parent_pattern_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UnsafeArchive, match="pattern"):
        collected(tmp_path, bad)


def test_double_star_matches_at_any_depth(tmp_path: Path) -> None:
    for name in ("a.csv", "results/b.csv", "results/x/y/c.csv", "results/x/notes.txt"):
        write(tmp_path / name)

    assert collected(tmp_path, "**/*.csv")[0] == ["a.csv", "results/b.csv", "results/x/y/c.csv"]
    assert collected(tmp_path, "results/**/*.csv")[0] == ["results/b.csv", "results/x/y/c.csv"]


def test_a_pattern_matching_a_directory_packs_it_whole(tmp_path: Path, dest: Path) -> None:
    write(tmp_path / "results/x/one.txt", "1")
    write(tmp_path / "results/two.txt", "2")

    names, archive = collected(tmp_path, "res*")
    unpack(io.BytesIO(archive), dest)

    assert names == ["results", "results/two.txt", "results/x", "results/x/one.txt"]
    assert (dest / "results/x/one.txt").read_text() == "1"


def test_overlapping_patterns_pack_each_file_once(tmp_path: Path) -> None:
    write(tmp_path / "results/a.txt")

    names, archive = collected(tmp_path, "results", "results/*.txt", "**/a.txt")

    assert names == ["results", "results/a.txt"]
    assert names_in(archive) == names


def test_patterns_matching_nothing_give_an_empty_archive(tmp_path: Path) -> None:
    names, archive = collected(tmp_path, "missing/*.txt", "nothing")

    assert names == []
    assert names_in(archive) == []


def test_a_star_does_not_match_hidden_files(tmp_path: Path) -> None:
    write(tmp_path / "seen.txt")
    write(tmp_path / ".hidden.txt")

    assert collected(tmp_path, "*.txt")[0] == ["seen.txt"]
    assert collected(tmp_path, ".*.txt")[0] == [".hidden.txt"]


def test_extra_files_are_packed_under_their_names_and_win_a_clash(tmp_path: Path) -> None:
    agent = write(tmp_path / "agent/stdout.log", "agent's")
    write(tmp_path / "work/stdout", "job's")

    names, archive = collected(tmp_path / "work", "*", extra=[(agent, "stdout")])

    assert names == ["stdout"]
    assert read_member(io.BytesIO(archive), "stdout") == b"agent's"


def test_output_limits_are_enforced(tmp_path: Path) -> None:
    write(tmp_path / "big.bin", "x" * 2000)

    with pytest.raises(UnsafeArchive, match="byte limit"):
        collected(tmp_path, "*.bin", limits=Limits(max_total_bytes=1000))


# --- reading ------------------------------------------------------------------------------------


def test_read_member_finds_one_member_by_name(tmp_path: Path) -> None:
    archive = tar_bytes(member("stdout", data=b"hello\n"), member("stderr", data=b"oops\n"))

    assert read_member(io.BytesIO(archive), "stderr") == b"oops\n"
    assert read_member(io.BytesIO(archive), "./stdout") == b"hello\n"
    assert read_member(io.BytesIO(archive), "missing") is None


def test_read_member_returns_at_most_max_bytes(tmp_path: Path) -> None:
    archive = tar_bytes(member("stdout", data=b"0123456789"))

    assert read_member(io.BytesIO(archive), "stdout", max_bytes=4) == b"0123"


def test_list_members_gives_names_and_sizes() -> None:
    archive = tar_bytes(member("d", tarfile.DIRTYPE), member("d/a", data=b"abc"))

    assert list_members(io.BytesIO(archive)) == [("d", 0), ("d/a", 3)]


def test_reading_a_hostile_archive_is_refused() -> None:
    archive = tar_bytes(member("link", tarfile.SYMTYPE, linkname="/etc/passwd"))

    with pytest.raises(UnsafeArchive):
        read_member(io.BytesIO(archive), "link")


def test_a_file_swapped_for_a_symlink_while_packing_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = write(tmp_path / "result.txt", "mine")
    real_stat = os.stat

    def stat_then_swap(path: str, *args: object, **kwargs: object) -> os.stat_result:
        st = real_stat(path, *args, **kwargs)  # type: ignore[arg-type]
        if path == "result.txt" and not result.is_symlink():  # the job wins the race
            result.unlink()
            result.symlink_to("/etc/passwd")
        return st

    monkeypatch.setattr(os, "stat", stat_then_swap)
    out = io.BytesIO()

    with pytest.raises(UnsafeArchive, match=re.escape("result.txt: symlinks")):
        collect_outputs(tmp_path, ["result.txt"], out)

    assert b"root:" not in out.getvalue()

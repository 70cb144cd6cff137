"""The agent's log tails: what running jobs wrote since the last push, read from their files."""

from __future__ import annotations

from pathlib import Path

from clobi.agent.logtail import LogTails
from clobi.store.base import LogTail


def _attempt(tmp_path: Path, name: str, stdout: bytes = b"", stderr: bytes = b"") -> str:
    root = tmp_path / name
    root.mkdir()
    (root / "stdout").write_bytes(stdout)
    (root / "stderr").write_bytes(stderr)
    return str(root)


def test_the_first_collect_gives_everything_written_so_far(tmp_path: Path) -> None:
    root = _attempt(tmp_path, "a", b"out\n", b"err\n")
    tails = LogTails().collect([(7, root)])
    assert tails == [LogTail(7, "stdout", 0, b"out\n"), LogTail(7, "stderr", 0, b"err\n")]


def test_after_a_push_only_new_bytes_are_collected(tmp_path: Path) -> None:
    root = _attempt(tmp_path, "a", b"one\n")
    logs = LogTails()
    logs.sent(logs.collect([(7, root)]))
    assert logs.collect([(7, root)]) == []
    with open(f"{root}/stdout", "ab") as f:
        f.write(b"two\n")
    assert logs.collect([(7, root)]) == [LogTail(7, "stdout", 4, b"two\n")]


def test_a_failed_push_is_collected_again_whole(tmp_path: Path) -> None:
    root = _attempt(tmp_path, "a", b"one\n")
    logs = LogTails()
    first = logs.collect([(7, root)])  # never marked sent
    with open(f"{root}/stdout", "ab") as f:
        f.write(b"two\n")
    assert first == [LogTail(7, "stdout", 0, b"one\n")]
    assert logs.collect([(7, root)]) == [LogTail(7, "stdout", 0, b"one\ntwo\n")]


def test_a_fast_writer_gives_only_its_newest_bytes(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40
    root = _attempt(tmp_path, "a", data)
    (tail,) = LogTails(push_max_bytes=1000).collect([(7, root)])
    assert tail == LogTail(7, "stdout", len(data) - 1000, data[-1000:])


def test_attempts_no_longer_running_are_forgotten_and_missing_files_skipped(
    tmp_path: Path,
) -> None:
    a, b = _attempt(tmp_path, "a", b"x"), _attempt(tmp_path, "b", b"y")
    logs = LogTails()
    logs.sent(logs.collect([(1, a), (2, b)]))
    assert logs.collect([(2, b)]) == []
    assert set(logs.pushed) == {(2, "stdout")}
    assert logs.collect([(3, str(tmp_path / "gone"))]) == []

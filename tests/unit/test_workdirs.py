"""Attempt directories: recycled when the job left nothing, removed otherwise."""

from __future__ import annotations

from pathlib import Path

from clobi.agent.workdirs import WorkDirs


def test_a_released_directory_with_an_empty_job_area_is_reused_by_the_next_attempt(
    tmp_path: Path,
) -> None:
    dirs = WorkDirs(str(tmp_path), "host-1")
    dirs.make(f"{tmp_path}/7")
    (tmp_path / "7" / "stdout").write_bytes(b"old")
    inode = (tmp_path / "7").stat().st_ino
    dirs.release(f"{tmp_path}/7")
    dirs.make(f"{tmp_path}/8")
    assert not (tmp_path / "7").exists()
    assert (tmp_path / "8").stat().st_ino == inode  # renamed, not made anew
    assert list((tmp_path / "8" / "job").iterdir()) == []


def test_a_directory_whose_job_left_files_is_removed_not_reused(tmp_path: Path) -> None:
    dirs = WorkDirs(str(tmp_path), "host-1")
    dirs.make(f"{tmp_path}/7")
    (tmp_path / "7" / "job" / "result.txt").write_text("x")
    dirs.release(f"{tmp_path}/7")
    assert not (tmp_path / "7").exists()
    dirs.make(f"{tmp_path}/8")
    assert list((tmp_path / "8" / "job").iterdir()) == []


def test_closing_removes_every_free_directory_and_the_attempt_log(tmp_path: Path) -> None:
    dirs = WorkDirs(str(tmp_path), "host-1")
    for k in (1, 2, 3):
        dirs.make(f"{tmp_path}/{k}")
        (tmp_path / str(k) / "attempt.log").write_text("log")
    for k in (1, 2, 3):
        dirs.release(f"{tmp_path}/{k}")
    assert not any((tmp_path / str(k) / "attempt.log").exists() for k in (1, 2, 3))
    dirs.close()
    assert list(tmp_path.iterdir()) == []


def test_a_free_directory_removed_behind_the_agents_back_is_made_anew(tmp_path: Path) -> None:
    dirs = WorkDirs(str(tmp_path), "host-1")
    dirs.make(f"{tmp_path}/1")
    dirs.release(f"{tmp_path}/1")
    (tmp_path / "1" / "job").rmdir()
    (tmp_path / "1").rmdir()
    dirs.make(f"{tmp_path}/2")
    assert (tmp_path / "2" / "job").is_dir()

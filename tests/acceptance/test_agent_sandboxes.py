"""Sandboxes through a real agent: inputs reach the job, hostile archives fail the job as a
user error (no retry) and write nothing outside the work directory."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from clobi.model.records import Submission
from clobi.model.spec import JobSpec, Retries
from clobi.model.states import JobState
from clobi.session import Session
from tests.acceptance.harness import Agents, client_of

pytestmark = pytest.mark.slow


def _hostile_tar(name: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        data = b"pwned"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_inputs_are_unpacked_into_the_work_directory_of_every_array_member(
    session: Session, agents: Agents, tmp_path: Path
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.txt").write_text("hello\n")
    with client_of(session) as client:
        ids = client.submit(
            {
                "command": ["sh", "-c", "cat data/x.txt > out-{index}.txt"],
                "inputs": ["data"],
                "outputs": ["out-*.txt"],
                "array": {"count": 3},
            },
            base_dir=tmp_path,
        )
        specs = {client.get(i).input_sha256 for i in ids}
        assert len(specs) == 1 and None not in specs  # one shared, content-addressed input
        agents.start(cpus=3)
        client.wait(ids, timeout_s=60)
        for i in ids:
            index = client.get(i).job.array_index
            assert client.read_output_file(i, f"out-{index}.txt") == b"hello\n"


@pytest.mark.parametrize("member", ["../escaped.txt", "/tmp/clobi-abs-escape.txt"])
def test_a_hostile_input_archive_fails_the_job_without_retry_or_escape(
    session: Session, agents: Agents, member: str
) -> None:
    with client_of(session) as client:
        blob = client.sandbox.put_input(io.BytesIO(_hostile_tar(member)))
        spec = JobSpec(command=("true",), retries=Retries(count=2, backoff_s=0))
        (job_id,) = client.store.submit(Submission(spec, input_sha256=blob.sha256))
        agents.start(cpus=1)
        client.wait([job_id], timeout_s=30)
        job = client.get(job_id).job
        assert job.state is JobState.FAILED and job.attempts == 1
        assert "UnsafeArchive" in job.reason
    assert not (session.work_dir / "escaped.txt").exists()
    assert not Path("/tmp/clobi-abs-escape.txt").exists()


def test_an_output_glob_through_a_planted_symlink_fails_as_a_user_error(
    session: Session, agents: Agents, tmp_path: Path
) -> None:
    with client_of(session) as client:
        (job_id,) = client.submit(
            {
                "command": ["sh", "-c", "ln -s /etc out; echo made"],
                "outputs": ["out/*"],
                "retries": 2,
            }
        )
        agents.start(cpus=1)
        client.wait([job_id], timeout_s=30)
        job = client.get(job_id).job
        assert job.state is JobState.FAILED and job.attempts == 1
        assert "output rejected" in job.reason
        client.output(job_id, tmp_path / "got")
        names = sorted(p.name for p in (tmp_path / "got").iterdir())
        assert names == ["attempt.log", "stderr", "stdout"]
        assert (tmp_path / "got" / "stdout").read_text() == "made\n"


def test_a_missing_executable_fails_the_job_with_its_name(session: Session, agents: Agents) -> None:
    with client_of(session) as client:
        (job_id,) = client.submit({"command": ["/no/such/program", "x"], "retries": 3})
        agents.start(cpus=1)
        client.wait([job_id], timeout_s=30)
        job = client.get(job_id).job
        assert job.state is JobState.FAILED and job.attempts == 1
        assert "/no/such/program" in job.reason


def test_large_outputs_go_to_the_sandbox_store_and_come_back_intact(
    session: Session, agents: Agents, tmp_path: Path
) -> None:
    with client_of(session) as client:
        (job_id,) = client.submit(
            {
                "command": [
                    "sh",
                    "-c",
                    "head -c 3000000 /dev/urandom > big.bin; sha256sum big.bin",
                ],
                "outputs": ["big.bin"],
            }
        )
        agents.start(cpus=1)
        client.wait([job_id], timeout_s=30)
        assert client.get(job_id).job.state is JobState.SUCCEEDED
        client.output(job_id, tmp_path / "o")
        import hashlib

        digest = hashlib.sha256((tmp_path / "o" / "big.bin").read_bytes()).hexdigest()
        assert (tmp_path / "o" / "stdout").read_text().split()[0] == digest
        assert list((session.root / "sandbox" / "outputs").glob("*.tar"))


def test_a_tiny_inline_limit_sends_every_output_through_the_sandbox_store(
    tmp_path: Path,
) -> None:
    from tests.acceptance.harness import fast_session

    session = fast_session(tmp_path / "s", inline_output_max_bytes=1)
    pool = Agents(session, tmp_path)
    try:
        with client_of(session) as client:
            (job_id,) = client.submit({"command": ["echo", "hello"]})
            pool.start(cpus=1)
            client.wait([job_id], timeout_s=30)
            assert client.get(job_id).job.state is JobState.SUCCEEDED, pool.log_text()
            assert client.read_output_file(job_id, "stdout") == b"hello\n"
            assert list((session.root / "sandbox" / "outputs").glob("*.tar"))
    finally:
        pool.stop_all()

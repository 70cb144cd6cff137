"""Specs and records on the wire: what the remote engines send is what the server parses."""

from __future__ import annotations

import pytest

from clobi.model.records import Outcome
from clobi.model.spec import ArraySpec, InputItem, JobSpec, Resources, Retries
from clobi.model.specparse import parse_spec
from clobi.model.states import AttemptState, JobState
from clobi.remote import wire

SPECS = [
    JobSpec(command=("true",)),
    JobSpec(command=("echo $X > log",), shell=True, env={"X": "{value}"}),
    JobSpec(
        command=("python3", "fit.py", "{index}"),
        name="fit",
        workdir="run",
        inputs=(InputItem("fit.py", "fit.py"), InputItem("conf/prod.yaml", "config.yaml")),
        outputs=("results/*.csv",),
        resources=Resources(cpus=2.5, memory_bytes=3 << 30, gpus=1, walltime_s=5400.0),
        requires=("ssd",),
        priority=-3,
        retries=Retries(count=2, backoff_s=0.0, max_backoff_s=60.0),
        array=ArraySpec(count=7),
        tags=("paper-3", "fit"),
    ),
    JobSpec(command=("echo", "{value}"), array=ArraySpec(values=("a", "b", "1.5"))),
]


@pytest.mark.parametrize("spec", SPECS, ids=range(len(SPECS)))
def test_a_spec_sent_to_the_server_parses_back_to_itself(spec: JobSpec) -> None:
    assert parse_spec(wire.spec_to_dict(spec)) == spec


def test_records_from_a_newer_server_ignore_keys_they_do_not_know() -> None:
    data = {
        "id": 1, "spec_id": 1, "name": "", "state": "queued", "priority": 0,
        "array_index": None, "created_at": 1.0, "updated_at": 1.0, "attempts": 0,
        "retries_left": 0, "lost_count": 0, "exit_code": None, "reason": "", "tags": ["t"],
        "owner": "alice", "current_attempt": None, "cancel_requested": False,
        "not_before": 0.0, "colour": "blue",
    }  # fmt: skip
    job = wire.job(data)
    assert job.state is JobState.QUEUED and job.tags == ("t",)


def test_inline_outputs_travel_as_base64() -> None:
    sent = wire.outcome(Outcome(5, AttemptState.SUCCEEDED, 0, output_inline=b"\x00tar\xff"))
    assert sent["output_inline"] == "AHRhcv8="
    assert sent["state"] == "succeeded"

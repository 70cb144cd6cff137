"""Records to and from the JSON the API speaks (plain dicts: the client needs no pydantic).

A submitted spec travels as a user would write it, so the server validates it with the same
parser as a spec file; everything the server sends back is trusted and rebuilt directly.
"""

from __future__ import annotations

import base64
from dataclasses import fields
from typing import Any, TypeVar

from clobi.model.auth import Role, TokenRecord
from clobi.model.instances import InstanceRecord, InstanceState
from clobi.model.records import (
    AgentRecord,
    AttemptRecord,
    Capacity,
    Claim,
    Event,
    HeartbeatReply,
    JobRecord,
    Outcome,
)
from clobi.model.spec import JobSpec, spec_from_dict
from clobi.model.states import AttemptState, JobState
from clobi.store.base import ClaimRequest, LogTail

T = TypeVar("T")


def spec_to_dict(spec: JobSpec) -> dict[str, Any]:
    """A spec in the form `parse_spec` reads; `parse_spec(spec_to_dict(s)) == s`."""
    data: dict[str, Any] = {
        "command": spec.command[0] if spec.shell else list(spec.command),
        "shell": spec.shell,
        "name": spec.name,
        "env": dict(spec.env),
        "workdir": spec.workdir,
        "inputs": [{"from": i.source, "to": i.dest} for i in spec.inputs],
        "outputs": list(spec.outputs),
        "resources": _resources(spec),
        "requires": list(spec.requires),
        "priority": spec.priority,
        "retries": {
            "count": spec.retries.count,
            "backoff": spec.retries.backoff_s,
            "max_backoff": spec.retries.max_backoff_s,
        },
        "tags": list(spec.tags),
    }
    if spec.array is not None:
        array = spec.array
        data["array"] = (
            {"values": list(array.values)} if array.values is not None else {"count": array.count}
        )
    return data


def _resources(spec: JobSpec) -> dict[str, Any]:
    res = spec.resources
    out: dict[str, Any] = {"cpus": res.cpus, "gpus": res.gpus, "memory": res.memory_bytes}
    if res.walltime_s is not None:
        out["walltime"] = res.walltime_s
    return out


def record(cls: type[T], data: dict[str, Any], **values: Any) -> T:
    """A record dataclass from JSON, ignoring keys it does not know (newer servers)."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{**{k: v for k, v in data.items() if k in names}, **values})


def job(data: dict[str, Any]) -> JobRecord:
    return record(JobRecord, data, state=JobState(data["state"]), tags=tuple(data["tags"]))


def attempt(data: dict[str, Any]) -> AttemptRecord:
    return record(AttemptRecord, data, state=AttemptState(data["state"]))


def event(data: dict[str, Any]) -> Event:
    return record(Event, data)


def agent(data: dict[str, Any]) -> AgentRecord:
    return record(AgentRecord, data, labels=tuple(data["labels"]))


def instance(data: dict[str, Any]) -> InstanceRecord:
    return record(InstanceRecord, data, state=InstanceState(data["state"]))


def token(data: dict[str, Any]) -> TokenRecord:
    return record(TokenRecord, data, role=Role(data["role"]))


def claim(data: dict[str, Any]) -> Claim:
    return record(Claim, data, spec=spec_from_dict(data["spec"]))


def heartbeat(data: dict[str, Any]) -> HeartbeatReply:
    return HeartbeatReply(
        renewed=frozenset(data["renewed"]),
        cancel=frozenset(data["cancel"]),
        drain=bool(data["drain"]),
        lease_until=float(data["lease_until"]),
    )


def capacity(cap: Capacity) -> dict[str, Any]:
    return {
        "cpus": cap.cpus,
        "memory_bytes": cap.memory_bytes,
        "gpus": cap.gpus,
        "labels": sorted(cap.labels),
    }


def claim_request(request: ClaimRequest, wait_s: float = 0.0) -> dict[str, Any]:
    return {
        "capacity": capacity(request.capacity),
        "per_job": None if request.per_job is None else capacity(request.per_job),
        "limit": request.limit,
        "lease_s": request.lease_s,
        "workdir_root": request.workdir_root,
        "wait_s": wait_s,
    }


def outcome(o: Outcome) -> dict[str, Any]:
    inline = None if o.output_inline is None else base64.b64encode(o.output_inline).decode()
    return {
        "attempt_id": o.attempt_id,
        "state": o.state.value,
        "exit_code": o.exit_code,
        "reason": o.reason,
        "user_error": o.user_error,
        "output_key": o.output_key,
        "output_inline": inline,
        "output_size": o.output_size,
        "output_sha256": o.output_sha256,
    }


def log_tail_to_dict(tail: LogTail) -> dict[str, Any]:
    return {
        "attempt_id": tail.attempt_id,
        "stream": tail.stream,
        "offset": tail.offset,
        "data": base64.b64encode(tail.data).decode(),
    }


def log_tail(data: dict[str, Any] | None) -> LogTail | None:
    if data is None:
        return None
    raw = base64.b64decode(data["data"])
    return LogTail(int(data["attempt_id"]), str(data["stream"]), int(data["offset"]), raw)

"""`RemoteStore`: the store contract over a Clobi server, so `Client` and the agent work
unchanged against `--session https://…`.

The server decides who owns what: the owner of a submit is the token's user, listings are
limited to the caller's jobs. Submits always carry an idempotency key (a fresh uuid when the
caller gave none), so a submit retried after a lost answer never creates jobs twice.
`register_agent` is the agent's join: it exchanges the session's bootstrap token for an agent
token, kept in memory only. The server sweeps: here `try_lock` is always False and `sweep`
does nothing. Token secrets are never sent: `create_token` sends only the sha256.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from clobi.errors import Forbidden, NotFound, UsageError
from clobi.model.auth import TokenRecord
from clobi.model.instances import AgentLoad, InstanceRecord, InstanceState, QueuedClass
from clobi.model.records import (
    KEYED_SORTS,
    AgentInfo,
    AgentRecord,
    AttemptRecord,
    Claim,
    Event,
    HeartbeatReply,
    JobFilter,
    JobRecord,
    Outcome,
    OutputRef,
    Submission,
    SweepResult,
)
from clobi.model.spec import JobSpec, spec_from_dict
from clobi.model.states import JobState
from clobi.remote import wire
from clobi.remote.http import Connection
from clobi.remote.sandbox import output_key
from clobi.remote.wakeup import RemoteWakeup
from clobi.store.base import ClaimRequest, Delivery, LogTail, OutletStatus, Store, Wakeup

PAGE = 1000
IDS_PER_REQUEST = 500


class RemoteStore(Store):
    """Store engine for `http(s)://` sessions."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._wakeups: list[RemoteWakeup] = []

    def _get(self, path: str, **params: Any) -> Any:
        query = [(k, v) for k, v in params.items() if v is not None]
        return self.connection.call("GET", path, params=query, idempotent=True)

    def _post(self, path: str, body: Any = None, *, idempotent: bool = False) -> Any:
        return self.connection.call("POST", path, json=body, idempotent=idempotent)

    # --- submitting and reading ---------------------------------------------------------
    def submit(self, submission: Submission) -> list[int]:
        body = {
            "spec": wire.spec_to_dict(submission.spec),
            "input_sha256": submission.input_sha256,
            "idempotency_key": submission.idempotency_key or f"auto-{uuid.uuid4()}",
        }
        return [int(i) for i in self._post("/jobs", body, idempotent=True)["ids"]]

    def _show(self, job_id: int) -> dict[str, Any]:
        answer: dict[str, Any] = self._get(f"/jobs/{int(job_id)}")
        return answer

    def get_job(self, job_id: int) -> JobRecord:
        return wire.job(self._show(job_id)["job"])

    def job_spec(self, job_id: int) -> tuple[JobSpec, str | None]:
        view = self._show(job_id)
        return spec_from_dict(view["spec"]), view["input_sha256"]

    def list_jobs(self, flt: JobFilter) -> list[JobRecord]:
        if not flt.ids:
            return self._list_pages(flt, ())
        # Many ids go in several requests, each for everything up to the end of the page.
        end = None if flt.limit is None else flt.offset + flt.limit
        whole = dataclasses.replace(flt, offset=0, limit=end)
        found: list[JobRecord] = []
        ids = sorted(set(flt.ids))
        for i in range(0, len(ids), IDS_PER_REQUEST):
            found += self._list_pages(whole, ids[i : i + IDS_PER_REQUEST])
        found.sort(key=flt.sort_key, reverse=flt.descending)
        return found[flt.offset : end]

    def _list_pages(self, flt: JobFilter, ids: Sequence[int]) -> list[JobRecord]:
        """The listing in pages of at most `PAGE`, each after the last job of the one before."""
        params: list[tuple[str, Any]] = [("state", s.value) for s in sorted(flt.states)]
        params += [("tag", t) for t in sorted(flt.tags)] + [("id", i) for i in ids]
        params += [(k, v) for k, v in (("owner", flt.owner), ("text", flt.text)) if v is not None]
        params += [("sort", flt.sort), ("desc", str(flt.descending).lower())]
        jobs: list[JobRecord] = []
        cursor = _cursor(flt, flt.after_id, flt.after_value)
        offset = [("offset", flt.offset)] if flt.offset else []
        while flt.limit is None or len(jobs) < flt.limit:
            want = PAGE if flt.limit is None else min(PAGE, flt.limit - len(jobs))
            query = [*params, *cursor, *offset, ("limit", want)]
            page = self.connection.call("GET", "/jobs", params=query, idempotent=True)
            jobs += [wire.job(j) for j in page]
            if len(page) < want:
                break
            cursor, offset = _cursor(flt, jobs[-1].id, flt.sort_key(jobs[-1])[0]), []
        return jobs

    def count_states(self, job_ids: Sequence[int] | None = None) -> dict[JobState, int]:
        body = {"ids": None if job_ids is None else list(job_ids)}
        counts = self._post("/jobs/counts", body, idempotent=True)["counts"]
        return {s: int(counts.get(s.value, 0)) for s in JobState}

    def attempts(self, job_id: int) -> list[AttemptRecord]:
        return [wire.attempt(a) for a in self._show(job_id)["attempts"]]

    def events(
        self, job_id: int | None = None, after_id: int = 0, limit: int = 1000
    ) -> list[Event]:
        page = self._get("/events", job_id=job_id, after_id=after_id, limit=min(limit, PAGE))
        return [wire.event(e) for e in page]

    def output_ref(self, job_id: int, attempt_id: int | None = None) -> OutputRef | None:
        try:
            ref = self._get(f"/jobs/{int(job_id)}/output/ref", attempt_id=attempt_id)
        except NotFound:
            return None  # `Client` tells a missing job from a job without output
        key = output_key(int(ref["job_id"]), int(ref["attempt_id"]))
        return OutputRef(ref["attempt_id"], ref["job_id"], key, None, ref["size"], ref["sha256"])

    # --- user actions -------------------------------------------------------------------
    def kill(self, job_ids: Sequence[int]) -> list[int]:
        return self._ids("/jobs/kill", job_ids)

    def remove(self, job_ids: Sequence[int]) -> list[int]:
        return self._ids("/jobs/remove", job_ids)

    def retry(self, job_ids: Sequence[int]) -> list[int]:
        return self._ids("/jobs/retry", job_ids)

    def _ids(self, path: str, job_ids: Sequence[int]) -> list[int]:
        return [int(i) for i in self._post(path, {"ids": list(job_ids)})["ids"]]

    # --- agents -------------------------------------------------------------------------
    def register_agent(self, info: AgentInfo) -> int:
        """Join: spend the session's bootstrap token, keep the agent token in memory."""
        body = {
            "name": info.name,
            "host": info.host,
            "cpus": info.cpus,
            "memory_bytes": info.memory_bytes,
            "gpus": info.gpus,
            "labels": sorted(info.labels),
            "pid": info.pid,
        }
        answer = self._post("/agents/join", body)
        credentials = self.connection.credentials
        credentials.token, credentials.agent_id = answer["token"], int(answer["agent_id"])
        return credentials.agent_id

    def claim(self, request: ClaimRequest) -> list[Claim]:
        path = f"/agents/{request.agent_id}/claim"
        return [wire.claim(c) for c in self._post(path, wire.claim_request(request))["claims"]]

    def finish(
        self, agent_id: int, outcomes: Sequence[Outcome], then: ClaimRequest | None = None
    ) -> tuple[list[int], list[Claim]]:
        body = {
            "outcomes": [wire.outcome(o) for o in outcomes],
            "then": None if then is None else wire.claim_request(then),
        }
        answer = self._post(f"/agents/{agent_id}/finish", body)
        return [int(i) for i in answer["refused"]], [wire.claim(c) for c in answer["claims"]]

    def heartbeat(
        self, agent_id: int, attempt_ids: Sequence[int], lease_s: float
    ) -> HeartbeatReply:
        # Not retried beyond connecting, and answered well within the lease: the agent tries
        # again at its next beat, and must still be able to fence itself in time.
        body = {"attempt_ids": list(attempt_ids), "lease_s": lease_s}
        path = f"/agents/{agent_id}/heartbeat"
        answer = self.connection.call("POST", path, json=body, timeout_s=max(1.0, lease_s / 4))
        return wire.heartbeat(answer)

    def push_logs(self, agent_id: int, tails: Sequence[LogTail]) -> None:
        # Best effort like a heartbeat: a lost push is resent whole with the next one.
        if tails:
            body = {"tails": [wire.log_tail_to_dict(t) for t in tails]}
            self.connection.call("POST", f"/agents/{agent_id}/logs", json=body, timeout_s=2.0)

    def read_log(self, job_id: int, stream: str, offset: int = 0) -> LogTail | None:
        return wire.log_tail(self._get(f"/jobs/{int(job_id)}/log", stream=stream, offset=offset))

    # --- the resource manager: it runs beside the server, on the store itself -------------
    def list_instances(
        self, pool: str | None = None, include_ended: bool = False
    ) -> list[InstanceRecord]:
        found = self._get("/instances", pool=pool, include_ended=include_ended)
        return [wire.instance(i) for i in found]

    def create_instance(
        self, pool: str, provider: str, cost_per_hour: float, reason: str
    ) -> InstanceRecord:
        raise _manager_only("creating instances")

    def set_instance(
        self,
        instance_id: int,
        state: InstanceState,
        reason: str,
        *,
        provider_id: str | None = None,
        expect: Sequence[InstanceState] = (),
    ) -> bool:
        raise _manager_only("changing instances")

    def queued_demand(self) -> list[QueuedClass]:
        raise _manager_only("observing demand")

    def agent_loads(self) -> list[AgentLoad]:
        raise _manager_only("observing agents")

    def abandon_agent(self, agent_id: int, reason: str, lost_cap: int) -> SweepResult:
        raise _manager_only("abandoning agents")

    def record_event(self, kind: str, detail: str, agent_id: int | None = None) -> None:
        raise _manager_only("recording decisions")

    def get_meta(self, key: str) -> str | None:
        raise _manager_only("reading the manager's state")

    def set_meta(self, key: str, value: str) -> None:
        raise _manager_only("keeping the manager's state")

    def set_drain(self, agent_id: int, drain: bool = True) -> None:
        self._post(f"/agents/{agent_id}/drain", {"drain": drain}, idempotent=True)

    def agent_exited(self, agent_id: int) -> None:
        self._post(f"/agents/{agent_id}/exit")

    def list_agents(self, include_gone: bool = False) -> list[AgentRecord]:
        return [wire.agent(a) for a in self._get("/agents", include_gone=include_gone)]

    def listen(self, name: str) -> Wakeup | None:
        """Long-polls the server for this agent's wake-ups (only once it has joined)."""
        agent_id = self.connection.credentials.agent_id
        if agent_id is None:
            return None
        wakeup = RemoteWakeup(self.connection.clone(), agent_id)
        self._wakeups.append(wakeup)
        return wakeup

    # --- sweeping: the server's job -----------------------------------------------------
    def try_lock(self, name: str, owner: str, ttl_s: float) -> bool:
        return False

    def sweep(self, lost_cap: int, agent_timeout_s: float) -> SweepResult:
        return SweepResult()

    def next_due_s(self) -> float | None:
        return None

    # --- access tokens ------------------------------------------------------------------
    def create_token(self, record: TokenRecord, secret_sha256: str) -> None:
        body = {
            "id": record.id,
            "role": record.role.value,
            "name": record.name,
            "pool": record.pool,
            "created_at": record.created_at,
            "expires_at": record.expires_at,
            "secret_sha256": secret_sha256,
        }
        self._post("/tokens", body)

    def get_token(self, token_id: str) -> tuple[TokenRecord, str] | None:
        raise Forbidden("tokens are checked by the server; their digests never leave it")

    def list_tokens(self) -> list[TokenRecord]:
        return [wire.token(t) for t in self._get("/tokens")]

    def revoke_token(self, token_id: str) -> bool:
        answer = self.connection.call("DELETE", f"/tokens/{token_id}", idempotent=True)
        return bool(answer["revoked"])

    def use_bootstrap(self, token_id: str) -> bool:
        raise Forbidden("bootstrap tokens are spent by the server when an agent joins")

    # --- time series: the server samples, anyone reads ------------------------------------
    def read_series(
        self, metrics: Sequence[str], since: float, until: float, step_s: int | None = None
    ) -> dict[str, list[tuple[float, float]]]:
        query: list[tuple[str, Any]] = [("metric", m) for m in dict.fromkeys(metrics)]
        query += [("since", since), ("until", until)]
        if step_s is not None:
            query.append(("step", step_s))
        found = self.connection.call("GET", "/series", params=query, idempotent=True)
        return {m: [(float(t), float(v)) for t, v in points] for m, points in found.items()}

    def record_samples(self, ts: float, values: Mapping[str, float]) -> None:
        raise _server_only("recording time series")

    def count_finished(self, after_event_id: int | None) -> tuple[int, int]:
        raise _server_only("sampling finished jobs")

    # --- event outlets: they run beside the database, not over HTTP --------------------------
    def enable_outlet(self, name: str) -> bool:
        raise _outlets_only()

    def disable_outlet(self, name: str) -> int:
        raise _outlets_only()

    def take_deliveries(self, outlet: str, limit: int = 100) -> list[Delivery]:
        raise _outlets_only()

    def mark_delivered(self, outlet: str, event_ids: Sequence[int]) -> None:
        raise _outlets_only()

    def mark_failed(self, outlet: str, event_id: int, retry_in_s: float, error: str) -> None:
        raise _outlets_only()

    def list_outlets(self) -> list[OutletStatus]:
        raise _outlets_only()

    def close(self) -> None:
        for wakeup in self._wakeups:
            wakeup.close()
        self.connection.close()


def _cursor(flt: JobFilter, after_id: int, value: object) -> list[tuple[str, Any]]:
    """The query parameters of a listing's keyset cursor (none: from the start)."""
    if after_id <= 0:
        return []
    if flt.sort not in KEYED_SORTS:
        return [("after_id", after_id)]
    return [("after_id", after_id), ("after_value", value)]


def _manager_only(what: str) -> UsageError:
    return UsageError(
        f"{what} is the resource manager's work: run it where the session's database is "
        "(clobi server or clobi manager with --session DIR or a database URL)"
    )


def _server_only(what: str) -> UsageError:
    return UsageError(
        f"{what} is the server's work (its sampler): run it where the session's database is"
    )


def _outlets_only() -> UsageError:
    return UsageError(
        "event outlets run where the session's database is (clobi server, or clobi outlets "
        "run with --session DIR), not over a server's URL"
    )

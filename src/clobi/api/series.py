"""The time series behind the dashboard's charts (recorded by the server's sampler).

Metrics (see `clobi.api.sampler`): `jobs.<state>` (jobs in each state), `queued.p<priority>`
(claimable queued jobs per priority), `throughput` (jobs finished per second), `finished`
(jobs finished per bucket), `agents.live`, `instances.<pool>.<state>` (live instances).
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import Field

from clobi.api.deps import State, User
from clobi.api.errors import responses
from clobi.errors import UsageError

router = APIRouter(prefix="/api/v1", tags=["series"])

METRIC = r"^(?:[A-Za-z0-9_.-]{1,200}\*?|\*)$"  # a trailing * asks for every metric so named
METRICS_MAX = 100
DEFAULT_SPAN_S = 3600.0
EPOCH_MAX = 1e11  # about the year 5138: past any real clock, inside every float's precision
# [t, value]: a list of two (a tuple would be `prefixItems`, which OpenAPI tools still trip on)
Point = Annotated[list[float], Field(min_length=2, max_length=2)]
MetricName = Annotated[str, Field(pattern=METRIC)]
Epoch = Annotated[float | None, Query(ge=0, le=EPOCH_MAX, allow_inf_nan=False)]


@router.get(
    "/series",
    response_model=dict[str, list[Point]],
    responses=responses(401, 403, 422, 503),
)
def series(
    *,
    principal: User,
    state: State,
    metrics: Annotated[
        list[MetricName], Query(alias="metric", min_length=1, max_length=METRICS_MAX)
    ],
    since: Epoch = None,
    until: Epoch = None,
    step: Annotated[int | None, Query(ge=1, le=86_400 * 366)] = None,
) -> dict[str, list[tuple[float, float]]]:
    """Points `[t, value]` of each metric (`t`: the start of the point's bucket, epoch
    seconds), oldest first, over `since`..`until` (default: the last hour up to now); a metric
    without points gives `[]`. A name ending in `*` asks for every metric starting with the
    rest that has points then (`queued.p*`: one per priority; `instances.cloud.*`), each
    under its own name.

    Spans up to a day come from the 10 s archive (kept a day), longer ones from the 5 min
    archive (kept 30 days). `step` (a multiple of 10 or 300 s) merges points into wider
    buckets: levels and rates averaged, counts (`finished`) summed."""
    end = time.time() if until is None else until
    start = end - DEFAULT_SPAN_S if since is None else since
    if start > end:
        raise UsageError("series: since must not be after until")
    return state.store.read_series(metrics, start, end, step)

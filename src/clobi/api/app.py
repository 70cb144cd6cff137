"""The app factory: `create_app(store, sandbox, settings)` builds one FastAPI app over one
session's store and sandbox store. Nothing lives at module level; two apps in one process are
independent.

Blocking store calls run in the threadpool (sync routes do so by themselves): the store engine
must be safe to call from several threads (the SQLite engine serialises on a lock).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from clobi import __version__
from clobi.api import admin, agents, errors, files, jobs, logs, pools, series, ui
from clobi.api.deps import ServerState
from clobi.api.sampler import Sampler
from clobi.api.sweeper import Sweeper
from clobi.api.wakeups import Doorbell
from clobi.auth import TokenCache
from clobi.sandbox.base import SandboxStore
from clobi.session import Settings
from clobi.store.base import Store

# JSON bodies (specs, outcomes with small inline outputs); archives stream through their own
# routes, which allow far more.
MAX_JSON_BODY_BYTES = 64 * 1024 * 1024

DESCRIPTION = """\
Clobi's control plane: submit and inspect jobs, upload and download sandboxes, and let remote
agents join, claim jobs by long-poll, heartbeat and report.

Every route except `/health` and `/ready` needs `Authorization: Bearer <token>`. Errors are
`{"error", "message", "problems"}` with the error class of Clobi's exception tree.
"""


def create_app(
    store: Store, sandbox: SandboxStore, settings: Settings, *, sweep: bool = True
) -> FastAPI:
    """A FastAPI app serving `store` and `sandbox`. With `sweep`, it runs the sweeper and the
    sampler of the dashboard's time series (one replica at a time does each, elected through
    the store's locks)."""
    state = ServerState(store, sandbox, settings, Doorbell(), TokenCache(store))

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state.doorbell.start(store)
        loops = [Sweeper(store, settings).run(), Sampler(store).run()] if sweep else []
        tasks = [asyncio.create_task(loop) for loop in loops]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            state.doorbell.stop()

    app = FastAPI(
        title="Clobi",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        max_body_size=MAX_JSON_BODY_BYTES,
    )
    app.state.clobi = state
    errors.install(app)
    for router in (
        admin.probes,
        admin.router,
        jobs.router,
        files.router,
        agents.router,
        logs.router,
        pools.router,
        series.router,
    ):
        app.include_router(router)
    ui.install(app, state)  # the dashboard, at / and /ui (not in the OpenAPI document)
    return app


def stop_long_polls(app: FastAPI) -> None:
    """Let waiting long-polls answer now, so that a shutdown is not held up by them (safe to
    call from a signal handler)."""
    state = app.state.clobi
    assert isinstance(state, ServerState)
    state.doorbell.stop_waiting()
    ui.stop(app)

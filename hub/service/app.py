"""The service's app: its routers under `api/v1/`, the pages and pairing beside them, the body
limit and the error handlers, and what runs for as long as it serves (the job scheduler, the
usage sampler, the engine's own background work)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

from fastapi import FastAPI

from ..jobs import JobManager
from ..portal import Portal
from ..usage.policy import Sampler
from .context import Service
from .errors import MAX_BODY, BodyLimit, install_handlers
from .hubclient import HubClient
from .routers import account, advice, catalog, usage, workspaces
from .routers import jobs as jobs_router


def create_app(portal: Portal, jobs: JobManager, hub: HubClient, prefix: str = "/services/podbay/",
               run_scheduler: bool = True, background: Sequence[Callable[[], Awaitable[None]]] = (),
               pairing=None, sampler: Sampler | None = None, pages=None,
               watch: Callable[[Callable[[], None]], Awaitable[None]] | None = None) -> FastAPI:
    """`watch`, where given, runs beside the rest and is handed what stops the service's own
    work (the scheduler, the sampler, the background tasks) at once, before the requests
    still being answered have ended (main.py: the hub that started it is gone)."""
    base = prefix.rstrip("/") + "/api/v1"
    svc = Service(portal, jobs, hub, sampler)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        tasks = [asyncio.create_task(jobs.run())] if run_scheduler else []
        # The backend's own (a cluster's watches), for as long as the service runs.
        tasks += [asyncio.create_task(run()) for run in background]
        if sampler is not None:
            tasks.append(asyncio.create_task(sampler.run()))
        work = list(tasks)
        if watch is not None:
            tasks.append(asyncio.create_task(watch(lambda: [task.cancel() for task in work])))
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await jobs.backend.aclose()
        if sampler is not None:
            await sampler.source.aclose()
        await hub.aclose()


    app = FastAPI(title="podbay", version="1", lifespan=lifespan,
                  openapi_url=f"{base}/openapi.json", docs_url=f"{base}/docs", redoc_url=None,
                  description="Catalog, capacity, quotas, volumes and training jobs of a podbay portal. "
                              "Workspaces are JupyterHub named servers: use JupyterHub's REST API for them.")
    app.add_middleware(BodyLimit, limit=MAX_BODY)
    if pairing is not None:
        app.include_router(pairing)
    if pages is not None:
        app.include_router(pages)

    install_handlers(app)
    for resource in (catalog, account, workspaces, usage, jobs_router, advice):
        app.include_router(resource.router(svc, base))
    return app

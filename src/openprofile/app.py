"""The ASGI application: every service's routes over the shared platform, with its workers.

`create_app` is what `openprofile serve` runs and what tests drive in-process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from openprofile import __version__
from openprofile.access.routes import router as access_router
from openprofile.catalog.routes import router as catalog_router
from openprofile.core.http import RequestContextMiddleware, install_error_handlers
from openprofile.core.platform import Platform
from openprofile.core.queue import Handler, WorkerPool
from openprofile.core.settings import Settings
from openprofile.export import runner as export_runner
from openprofile.export import service as export_service
from openprofile.export.routes import router as export_router
from openprofile.gateway.routes import router as gateway_router
from openprofile.ingest import service as ingest
from openprofile.ingest.routes import router as ingest_router
from openprofile.profile import store as profile_store
from openprofile.profile.access_routes import router as profile_access_router
from openprofile.profile.policy_routes import router as merge_policies_router
from openprofile.schemaregistry.routes import router as schema_router
from openprofile.segmentation import jobs as segment_jobs
from openprofile.segmentation import preview as segment_preview
from openprofile.segmentation import runner as segment_runner
from openprofile.segmentation.job_routes import router as segment_jobs_router
from openprofile.segmentation.preview_routes import router as segment_preview_router
from openprofile.segmentation.routes import router as segmentation_router


def job_handlers(platform: Platform) -> dict[str, Handler]:
    """Every kind of queued job and who runs it; shared by the server and `openprofile worker`."""
    return {
        ingest.JOB_KIND: ingest.handler(platform),
        profile_store.JOB_KIND: profile_store.handler(platform),
        export_service.JOB_KIND: export_runner.handler(platform),
        segment_jobs.JOB_KIND: segment_runner.handler(platform),
        segment_preview.JOB_KIND: segment_preview.handler(platform),
    }


def worker_pool(platform: Platform, size: int) -> WorkerPool:
    return WorkerPool(platform.queue, job_handlers(platform), size=size, poll_seconds=platform.settings.poll_seconds)


def create_app(settings: Settings | None = None, platform: Platform | None = None) -> FastAPI:
    settings = settings or (platform.settings if platform else Settings())
    opened = platform or Platform.open(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = worker_pool(opened, settings.workers)
        pool.start()
        try:
            yield
        finally:
            pool.stop()

    app = FastAPI(
        title="openprofile",
        version=__version__,
        description="An open implementation of Adobe Experience Platform's Real-Time Customer Profile APIs.",
        lifespan=lifespan,
    )
    app.state.platform = opened
    app.add_middleware(
        RequestContextMiddleware,
        max_header_bytes=settings.max_header_bytes,
        max_json_body_bytes=settings.max_json_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
    )
    install_error_handlers(app)
    for router in (gateway_router, catalog_router, ingest_router, access_router, schema_router,
                   merge_policies_router, profile_access_router, export_router, segmentation_router,
                   segment_jobs_router, segment_preview_router):
        app.include_router(router)
    return app

"""Recommendations, similar items, and the hot swap of the served build.

The app serves one `Pipeline`, kept by a `PipelineHolder`. A request takes the
holder's reference once and ranks with that object to the end, so a swap
never changes a request in flight. `POST /v1/admin/reload` and a change of
the `current` pointer (checked at most every `REFRESH_INTERVAL_SECONDS`)
load a build beside the served one. The reference is swapped only when the
load succeeded, so a build that fails to load leaves the old one serving.

When the session store fails or does not respond within
`SESSION_TIMEOUT_SECONDS`, the request is ranked without the session (user
and popular items) and the response says `"degraded": true`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from recsys_api.deps import get_store, require_read_key, require_write_key
from recsys_api.errors import HTTPError
from recsys_api.metrics import set_build_version
from starlette.concurrency import run_in_threadpool

from recsys.builds import BuildStore
from recsys.errors import BuildError, NotFoundError, StoreUnavailableError
from recsys.events import Event
from recsys.models.pipeline import load_build_pipeline
from recsys.pipeline import MAX_K, Pipeline, Recommendation
from recsys.sessions import SessionStore
from recsys.timing import mark_degraded, stage

log = logging.getLogger(__name__)

SESSION_TIMEOUT_SECONDS = 0.3
REFRESH_INTERVAL_SECONDS = 5.0
MAX_EXCLUDE = 1000

router = APIRouter(tags=["recommendations"])


class PipelineHolder:
    """The served pipeline, replaced whole and never changed in place."""

    def __init__(
        self,
        builds: BuildStore,
        *,
        loader: Callable[[BuildStore, str | None], Pipeline] | None = None,
        refresh_interval_seconds: float = REFRESH_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.builds = builds
        self.pipeline: Pipeline | None = None
        self._loader = loader or _load_from_store
        self._refresh_interval = refresh_interval_seconds
        self._clock = clock
        self._next_check = 0.0
        self._load_lock = threading.Lock()
        # The `current` pointer at the last check. Only a move of the pointer
        # triggers a load, so a failed build is not retried and a version
        # pinned by POST /v1/admin/reload stays until the pointer moves.
        self._seen_current: str | None = None

    @property
    def version(self) -> str | None:
        pipeline = self.pipeline
        return None if pipeline is None else pipeline.version

    def require(self) -> Pipeline:
        """Return the served pipeline; raise `BuildError` before the first load."""
        pipeline = self.pipeline
        if pipeline is None:
            raise BuildError("no build loaded yet; publish one with `recsys rebuild`")
        return pipeline

    def reload(self, version: str | None = None) -> Pipeline:
        """Load `version` (default: the `current` build) and serve it.

        Raises `BuildError` or `NotFoundError` and keeps serving the old
        pipeline when the build cannot be loaded.
        """
        with self._load_lock:
            started = time.perf_counter()
            pipeline = self._loader(self.builds, version)
            previous = self.version
            self.pipeline = pipeline
            set_build_version(pipeline.version)
        log.info(
            "serving build %s (was %s), loaded in %.1f s",
            pipeline.version,
            previous,
            time.perf_counter() - started,
        )
        return pipeline

    def refresh_if_due(self) -> None:
        """Load the `current` build in the background when the pointer moves."""
        now = self._clock()
        if now < self._next_check:
            return
        self._next_check = now + self._refresh_interval
        try:
            current = self.builds.current_version()
        except BuildError as exc:
            log.warning("cannot read the current build pointer: %s", exc)
            return
        if current is None or current == self._seen_current:
            return
        self._seen_current = current
        if current == self.version:
            return
        threading.Thread(
            target=self._reload_quietly,
            args=(current,),
            name="build-reload",
            daemon=True,
        ).start()

    def _reload_quietly(self, version: str) -> None:
        try:
            self.reload(version)
        except (BuildError, NotFoundError) as exc:
            log.warning(
                "loading build %s failed, still serving %s: %s",
                version,
                self.version,
                exc,
            )


def _load_from_store(builds: BuildStore, version: str | None) -> Pipeline:
    build = builds.open_current() if version is None else builds.open(version)
    return load_build_pipeline(build)


def install(app: FastAPI, holder: PipelineHolder | None = None) -> PipelineHolder:
    """Attach a holder to the app, load the current build if there is one."""
    from recsys_api.app import add_readiness_check

    if holder is None:
        holder = PipelineHolder(BuildStore(app.state.settings.indexes_dir))
        try:
            holder.reload()
        except (BuildError, NotFoundError) as exc:
            log.warning("starting without a build: %s", exc)
    app.state.pipeline_holder = holder
    add_readiness_check(app, "build", _check_build)
    return holder


def _check_build(app: FastAPI) -> dict[str, Any]:
    version = app.state.pipeline_holder.version
    return {"ready": version is not None, "version": version}


def get_holder(request: Request) -> PipelineHolder:
    holder: PipelineHolder = request.app.state.pipeline_holder
    return holder


# -- request and response bodies ---------------------------------------------


class RecommendationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    session_id: str = Field(min_length=1, max_length=256)
    user_id: str | None = Field(default=None, min_length=1, max_length=256)
    k: int = Field(default=20, ge=1, le=MAX_K)
    exclude: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list, max_length=MAX_EXCLUDE
    )
    category: str | None = Field(default=None, min_length=1, max_length=256)
    context_item_id: str | None = Field(default=None, min_length=1, max_length=256)


class RecommendedItemOut(BaseModel):
    item_id: str
    score: float
    sources: list[str]


class RecommendationResponse(BaseModel):
    """Ranked items, best first, and what the ranking could not use.

    `ignored` counts unknown item ids in the session, search events, unknown
    ids in `exclude` and an unknown context item. `degraded` is true when
    the session store failed, so the ranking did not see the session.
    """

    session_id: str
    items: list[RecommendedItemOut]
    build_version: str
    ignored: dict[str, int]
    degraded: bool


class SimilarItemsResponse(BaseModel):
    item_id: str
    items: list[RecommendedItemOut]
    build_version: str


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(default=None, min_length=1, max_length=256)


class ReloadResponse(BaseModel):
    build_version: str
    previous_version: str | None


# -- routes --------------------------------------------------------------------


def limit_body(request: Request) -> None:
    """Reject a request whose declared body exceeds RECSYS_MAX_BODY_BYTES."""
    limit = request.app.state.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPError(
            413,
            "payload_too_large",
            f"request body of {declared} bytes exceeds the limit of {limit} "
            "bytes; send fewer exclude ids",
        )


@router.post(
    "/v1/recommendations",
    dependencies=[Depends(limit_body), Depends(require_read_key)],
    response_model=RecommendationResponse,
)
async def post_recommendations(
    body: RecommendationRequest, request: Request
) -> Response:
    """Rank items for a live session."""
    return await _recommend(request, body)


@router.get(
    "/v1/recommendations",
    dependencies=[Depends(require_read_key)],
    response_model=RecommendationResponse,
)
async def get_recommendations(
    request: Request,
    session_id: Annotated[str, Query(min_length=1, max_length=256)],
    user_id: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
    k: Annotated[int, Query(ge=1, le=MAX_K)] = 20,
    exclude: Annotated[list[str], Query(max_length=MAX_EXCLUDE)] = [],  # noqa: B006
    category: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
    context_item_id: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
) -> Response:
    """Like POST /v1/recommendations, with the fields as query parameters."""
    body = RecommendationRequest(
        session_id=session_id,
        user_id=user_id,
        k=k,
        exclude=exclude,
        category=category,
        context_item_id=context_item_id,
    )
    return await _recommend(request, body)


@router.get(
    "/v1/items/{item_id}/similar",
    dependencies=[Depends(require_read_key)],
    response_model=SimilarItemsResponse,
)
async def get_similar_items(
    request: Request,
    item_id: Annotated[str, Path(min_length=1, max_length=256)],
    k: Annotated[int, Query(ge=1, le=MAX_K)] = 20,
) -> Response:
    """Items that sessions visit together with `item_id`, best first."""
    pipeline = get_holder(request).require()
    if item_id not in pipeline.vocab:
        raise NotFoundError(f"item {item_id!r} not found in build {pipeline.version}")
    result = await run_in_threadpool(pipeline.recommend, [], k, context_item_id=item_id)
    return JSONResponse(
        {
            "item_id": item_id,
            "items": _items_out(result),
            "build_version": result.build_version,
        }
    )


@router.post("/v1/admin/reload", dependencies=[Depends(require_write_key)])
async def post_reload(
    request: Request, body: ReloadRequest | None = None
) -> ReloadResponse:
    """Load a build (default: the `current` one) and swap it in."""
    holder = get_holder(request)
    previous = holder.version
    version = None if body is None else body.version
    try:
        pipeline = await run_in_threadpool(holder.reload, version)
    except BuildError as exc:
        log.error("reload of build %s failed: %s", version or "current", exc)
        # 409: the request is fine but the build on disk is not loadable, and
        # the service itself keeps working on the previous build.
        raise HTTPError(
            409,
            "reload_failed",
            f"build {version or 'current'} failed to load ({exc}); "
            f"still serving {previous}",
        ) from exc
    return ReloadResponse(build_version=pipeline.version, previous_version=previous)


async def _recommend(request: Request, body: RecommendationRequest) -> Response:
    holder = get_holder(request)
    holder.refresh_if_due()
    pipeline = holder.require()
    rank = functools.partial(
        pipeline.recommend,
        k=body.k,
        user_id=body.user_id,
        context_item_id=body.context_item_id,
        exclude_item_ids=body.exclude,
        category=body.category,
    )

    read = _SessionRead(get_store(request), body.session_id, asyncio.get_running_loop())
    # One trip through the thread pool reads the session and ranks it. Only
    # when the read outlasts the timeout does the ranking take a second trip,
    # without the session, while the read is left to finish on its own.
    ranking = asyncio.ensure_future(run_in_threadpool(read.read_and_rank, rank))
    done, _ = await asyncio.wait(
        (read.finished, ranking),
        timeout=SESSION_TIMEOUT_SECONDS,
        return_when=asyncio.FIRST_COMPLETED,
    )
    if not done and read.give_up():
        log.warning(
            "ranking session %s without its events: the store did not "
            "respond within %.2f s",
            body.session_id,
            SESSION_TIMEOUT_SECONDS,
        )
        ranking.add_done_callback(functools.partial(_log_late_failure, body.session_id))
        mark_degraded("session_store_unavailable")
        with stage("pipeline"):
            result = await run_in_threadpool(rank, [])
        return _recommendation_response(body.session_id, result, True)

    outcome = await ranking
    # The worker ranks whenever the request did not give up on it first.
    assert outcome is not None
    return _recommendation_response(body.session_id, *outcome)


class _SessionRead:
    """The session read of one request, which the request may give up on.

    `read_and_rank` runs in a worker thread: it reads the session, sets
    `finished` on the event loop, and ranks unless the request gave up
    waiting first. `give_up` runs on the event loop. Whichever of the two
    takes the lock first decides whether the worker ranks.
    """

    def __init__(
        self, store: SessionStore, session_id: str, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.store = store
        self.session_id = session_id
        self.finished: asyncio.Future[None] = loop.create_future()
        self._loop = loop
        self._lock = threading.Lock()
        self._given_up = False
        self._ranking = False

    def give_up(self) -> bool:
        """Stop waiting for the read; return True if the caller must rank."""
        with self._lock:
            self._given_up = not self._ranking
            return self._given_up

    def read_and_rank(
        self, rank: Callable[[list[Event]], Recommendation]
    ) -> tuple[Recommendation, bool] | None:
        with stage("session_read"):
            events, degraded = self._read()
        try:
            self._loop.call_soon_threadsafe(_set_done, self.finished)
        except RuntimeError:  # the loop closed while the read blocked
            return None
        with self._lock:
            if self._given_up:
                return None
            self._ranking = True
        if degraded:
            mark_degraded("session_store_unavailable")
        with stage("pipeline"):
            return rank(events), degraded

    def _read(self) -> tuple[list[Event], bool]:
        """Return the session's events, or ([], True) when the store fails."""
        try:
            return self.store.get(self.session_id), False
        except StoreUnavailableError as exc:
            log.warning(
                "ranking session %s without its events: %s", self.session_id, exc
            )
            return [], True


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _log_late_failure(session_id: str, ranking: asyncio.Future[Any]) -> None:
    """Log the error of a session read that the request stopped waiting for."""
    if not ranking.cancelled() and ranking.exception() is not None:
        log.error(
            "reading session %s failed after the request timed out waiting",
            session_id,
            exc_info=ranking.exception(),
        )


def _recommendation_response(
    session_id: str, result: Recommendation, degraded: bool
) -> Response:
    return JSONResponse(
        {
            "session_id": session_id,
            "items": _items_out(result),
            "build_version": result.build_version,
            "ignored": result.ignored,
            "degraded": degraded,
        }
    )


def _items_out(result: Recommendation) -> list[dict[str, Any]]:
    # Plain dicts skip the validation of `RecommendedItemOut` models. JSON has
    # no NaN, so a NaN score is written as null, as pydantic writes it.
    return [
        {
            "item_id": item.item_id,
            "score": item.score if math.isfinite(item.score) else None,
            "sources": list(item.sources),
        }
        for item in result.items
    ]

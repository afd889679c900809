"""The console's web application (Starlette): its static page, a JSON API and live streams.

Every handler turns one browser request into calls to the coordinator's public API
(console/coordinator.py) with the user's token (console/access.py), and the answers
into JSON (console/views.py). Live updates are server-sent events:

- ``/api/sagas/{id}/stream`` follows the saga with ``WatchSaga`` — each transition as
  it is logged, then the saga as it stands — until it is settled; a broken stream (the
  coordinator restarting, too many streams) is opened again and resumes after the
  last transition sent;
- ``/api/sagas/stream`` and ``/api/breakers/stream`` read the list (with the counts by
  status) or the breakers every ``poll_seconds`` and send them when they changed.

The page itself is static (console/static: HTML, CSS and one JavaScript module, no
build step): it draws what these answer, the saga's graph as SVG.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from google.protobuf import timestamp_pb2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from console import views
from console.access import (
    COOKIE,
    Guard,
    HeldCredential,
    UserToken,
    subject,
    user_token,
)
from console.coordinator import Coordinator, CoordinatorError
from console.traces import TraceSource
from protos.sagawire.v1 import coordinator_pb2 as pb

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
# A comment line on every stream this often, so proxies and browsers keep it open.
HEARTBEAT_SECONDS = 15.0
# How long the console trusts what a token's role was found to be.
_ROLE_SECONDS = 30.0
_DEFINITIONS_SECONDS = 60.0
# Codes after which a saga's stream is opened again rather than given up.
_PASSING = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "CANCELLED"})
_HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "FAILED_PRECONDITION": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
_SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}

Event = tuple[str, Any]


@dataclass
class _Remembered:
    value: Any
    until: float


class Console:
    """The handlers, with what they share: the coordinator, the trace source, the held
    credential, and short-lived memories of roles and definitions."""

    coordinator: Coordinator  # set when the application starts (create_app's lifespan)

    def __init__(
        self,
        traces: TraceSource,
        held: HeldCredential | None,
        poll_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.traces = traces
        self.held = held
        self.poll_seconds = poll_seconds
        self._clock = clock
        self._roles: dict[str, _Remembered] = {}
        self._definitions: _Remembered | None = None
        # Set when the server is asked to stop: every open stream ends, so none holds
        # the shutdown up (a browser's EventSource would otherwise keep it open).
        self.stopping = asyncio.Event()

    def token(self, request: Request) -> UserToken:
        return user_token(request, self.held)

    # -- who is calling ------------------------------------------------------------

    async def role(self, token: str | None) -> str:
        """``operator``, ``customer``, or "" for a token the coordinator does not take,
        found by asking it for what only an operator may read."""
        if not token:
            return ""
        known = self._roles.get(token)
        if known is not None and known.until > self._clock():
            return str(known.value)
        try:
            await self.coordinator.list_breakers(token)
            role = "operator"
        except CoordinatorError as error:
            if error.code == "PERMISSION_DENIED":
                role = "customer"
            elif error.code == "UNAUTHENTICATED":
                role = ""
            else:
                raise
        if len(self._roles) > 1000:
            self._roles.clear()
        self._roles[token] = _Remembered(role, self._clock() + _ROLE_SECONDS)
        return role

    async def session(self, request: Request) -> JSONResponse:
        user = self.token(request)
        return JSONResponse(await self._session(user))

    async def _session(self, user: UserToken) -> dict[str, Any]:
        role = await self.role(user.token)
        return {
            "role": role,
            "subject": subject(user.token) if role else "",
            "source": user.source if role else "",
            "console_credential": self.held is not None and self.held.present,
            "traces": self.traces.describe(),
            "jaeger": bool(self.traces.jaeger_link),
        }

    async def sign_in(self, request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            body = None
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token.strip() or len(token) > 8192:
            raise HTTPException(400, 'send {"token": "<a bearer token>"}')
        token = token.strip()
        session = await self._session(UserToken(token, "cookie"))
        if not session["role"]:
            return _problem("UNAUTHENTICATED", "the coordinator does not accept this token")
        response = JSONResponse(session)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
        return response

    async def sign_out(self, request: Request) -> JSONResponse:
        user = UserToken(None, "")
        if self.held is not None and self.held.present:
            user = UserToken(self.held.token(), "console")
        response = JSONResponse(await self._session(user))
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    # -- sagas -------------------------------------------------------------------------

    async def definitions(self, request: Request) -> JSONResponse:
        reply = await self.coordinator.list_definitions(self.token(request).token)
        return JSONResponse({"definitions": [views.definition(d) for d in reply.definitions]})

    async def _known_definitions(self, token: str | None) -> Mapping[str, Sequence[Any]]:
        """The definitions' steps by saga name, remembered a minute (only ever used for a
        saga the user's own GetSaga just returned)."""
        if self._definitions is None or self._definitions.until < self._clock():
            try:
                reply = await self.coordinator.list_definitions(token)
            except CoordinatorError:
                return {}
            found = {d.name: views.definition(d)["steps"] for d in reply.definitions}
            self._definitions = _Remembered(found, self._clock() + _DEFINITIONS_SECONDS)
        known: Mapping[str, Sequence[Any]] = self._definitions.value
        return known

    async def sagas(self, request: Request) -> JSONResponse:
        listed = await self.coordinator.list_sagas(
            list_request(request.query_params), self.token(request).token
        )
        return JSONResponse(page(listed))

    async def counts(self, request: Request) -> JSONResponse:
        reply = await self.coordinator.count_sagas(
            pb.CountSagasRequest(filter=saga_filter(request.query_params)),
            self.token(request).token,
        )
        return JSONResponse(views.counts(reply))

    async def sagas_stream(self, request: Request) -> StreamingResponse:
        token = self.token(request).token
        listing = list_request(request.query_params)
        counting = pb.CountSagasRequest(filter=listing.filter)

        async def read() -> Any:
            answer: dict[str, Any] = page(await self.coordinator.list_sagas(listing, token))
            if await self.role(token) == "operator":
                answer["counts"] = views.counts(await self.coordinator.count_sagas(counting, token))
            return answer

        return stream(self._polled("sagas", read))

    async def saga(self, request: Request) -> JSONResponse:
        token = self.token(request).token
        return JSONResponse(await self._saga(request.path_params["saga_id"], token))

    async def _saga(self, saga_id: str, token: str | None) -> dict[str, Any]:
        found = await self.coordinator.get_saga(saga_id, token)
        return views.with_forward_only(
            views.saga_detail(found), await self._known_definitions(token)
        )

    async def saga_stream(self, request: Request) -> StreamingResponse:
        token = self.token(request).token
        saga_id = request.path_params["saga_id"]
        await self.coordinator.get_saga(saga_id, token)  # NOT_FOUND before any stream
        return stream(self._follow(saga_id, token))

    async def _follow(self, saga_id: str, token: str | None) -> AsyncGenerator[Event]:
        """The saga's transitions and, after each batch of them, the saga; again after a
        broken stream, from where it broke; until the saga is settled."""
        sent, broken = 0, False
        while True:
            ended = False
            try:
                transitions = self.coordinator.watch_saga(saga_id, token)
                async for batch in _batches(transitions, self.stopping):
                    if broken:
                        broken = False
                        yield ("resumed", {})
                    if batch is None:
                        yield ("", None)  # nothing for a while: a heartbeat
                        continue
                    fresh = [t for t in batch if t.sequence > sent]
                    for item in fresh:
                        yield ("transition", views.transition(item))
                        sent = item.sequence
                    if fresh:
                        yield ("saga", await self._saga(saga_id, token))
                ended = True
            except CoordinatorError as error:
                yield ("problem", {"error": error.code, "message": error.message})
                if error.code not in _PASSING:
                    return
                broken = True
                # No stream for now (the coordinator restarting, its stream slots taken):
                # the saga as it stands, read again each time round.
                with contextlib.suppress(CoordinatorError):
                    yield ("saga", await self._saga(saga_id, token))
            if ended:
                if not self.stopping.is_set():
                    yield ("saga", await self._saga(saga_id, token))
                    yield ("end", {"sequence": sent})
                return
            if await self._pause(self.poll_seconds):
                return

    async def retry(self, request: Request) -> JSONResponse:
        token = self.token(request).token
        saga_id = request.path_params["saga_id"]
        await self.coordinator.retry_saga(saga_id, token)
        log.info("saga retried from the console saga=%s by=%s", saga_id, subject(token) or "?")
        return JSONResponse(await self._saga(saga_id, token))

    async def trace(self, request: Request) -> JSONResponse:
        token = self.token(request).token
        saga_id = request.path_params["saga_id"]
        found = await self.coordinator.get_saga(saga_id, token)  # may the user read it?
        answer = await self.traces.waterfalls(found.saga_id)
        answer["trace_id"] = found.trace_id
        answer["link"] = self.traces.link(found.trace_id) if found.trace_id else ""
        return JSONResponse(answer)

    # -- operations ----------------------------------------------------------------------

    async def breakers(self, request: Request) -> JSONResponse:
        reply = await self.coordinator.list_breakers(self.token(request).token)
        return JSONResponse({"breakers": [views.breaker(b) for b in reply.breakers]})

    async def breakers_stream(self, request: Request) -> StreamingResponse:
        token = self.token(request).token
        await self.coordinator.list_breakers(token)  # PERMISSION_DENIED before any stream

        async def read() -> Any:
            reply = await self.coordinator.list_breakers(token)
            return {"breakers": [views.breaker(b) for b in reply.breakers]}

        return stream(self._polled("breakers", read))

    async def _pause(self, seconds: float) -> bool:
        """Wait ``seconds``; True if the server is stopping (then at once)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.stopping.wait()
        return self.stopping.is_set()

    async def _polled(self, name: str, read: Callable[[], Awaitable[Any]]) -> AsyncGenerator[Event]:
        """``read()`` every ``poll_seconds``, sent when it changed; a heartbeat otherwise."""
        last, quiet_since = None, self._clock()
        while True:
            try:
                value = await read()
            except CoordinatorError as error:
                value = {"problem": {"error": error.code, "message": error.message}}
            text = json.dumps(value, sort_keys=True)
            if text != last:
                last, quiet_since = text, self._clock()
                yield (name, value)
            elif self._clock() - quiet_since > HEARTBEAT_SECONDS:
                quiet_since = self._clock()
                yield ("", None)
            if await self._pause(self.poll_seconds):
                return

    async def index(self, request: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})


async def _batches(
    transitions: AsyncIterator[pb.SagaTransition], stopping: asyncio.Event
) -> AsyncIterator[list[pb.SagaTransition] | None]:
    """What arrived together, as one list; None after HEARTBEAT_SECONDS of nothing.
    Raises what the stream raised, once what came before it was given; ends when the
    stream does or ``stopping`` is set."""
    queue: asyncio.Queue[pb.SagaTransition | BaseException | None] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for item in transitions:
                await queue.put(item)
            await queue.put(None)
        except Exception as error:  # handed to the reader, who raises it
            await queue.put(error)

    async def stop() -> None:
        await stopping.wait()
        await queue.put(None)

    tasks = [asyncio.create_task(pump()), asyncio.create_task(stop())]
    try:
        while True:
            try:
                async with asyncio.timeout(HEARTBEAT_SECONDS):
                    first = await queue.get()
            except TimeoutError:
                yield None
                continue
            items = [first]
            while not queue.empty():
                items.append(queue.get_nowait())
            batch = [i for i in items if isinstance(i, pb.SagaTransition)]
            if batch:
                yield batch
            for item in items:
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    return
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)


def stream(events: AsyncIterator[Event]) -> StreamingResponse:
    """Server-sent events: ``event: NAME`` and one line of JSON each; a comment for
    a heartbeat (an event named "")."""

    async def body() -> AsyncIterator[str]:
        yield "retry: 2000\n\n"
        async for name, data in events:
            if not name:
                yield ": ping\n\n"
            else:
                yield f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


def page(reply: pb.ListSagasResponse) -> dict[str, Any]:
    return {
        "sagas": [views.saga_row(s) for s in reply.sagas],
        "next_page_token": reply.next_page_token,
    }


def _timestamp(text: str, field: str) -> timestamp_pb2.Timestamp:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(400, f"{field}: {text!r} is not an ISO-8601 time") from None
    if moment.tzinfo is None:
        raise HTTPException(400, f"{field}: {text!r} has no time zone")
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def saga_filter(query: Mapping[str, str]) -> pb.SagaFilter:
    """The filter of ``?saga=&mode=&after=&before=`` (ISO-8601 times with a zone)."""
    found = pb.SagaFilter(saga=query.get("saga", ""))
    if mode := query.get("mode"):
        try:
            found.mode = views.mode_value(mode)
        except ValueError:
            raise HTTPException(400, f"mode: {mode!r} is not one of {views.MODES}") from None
    if after := query.get("after"):
        found.created_after.CopyFrom(_timestamp(after, "after"))
    if before := query.get("before"):
        found.created_before.CopyFrom(_timestamp(before, "before"))
    return found


def list_request(query: Mapping[str, str]) -> pb.ListSagasRequest:
    """ListSagas for ``?status=&page_size=&page_token=`` and the filter's parameters."""
    request = pb.ListSagasRequest(filter=saga_filter(query), page_token=query.get("page_token", ""))
    if status := query.get("status"):
        try:
            request.status = views.saga_status_value(status)
        except ValueError:
            raise HTTPException(
                400, f"status: {status!r} is not one of {views.SAGA_STATUSES}"
            ) from None
    size = query.get("page_size", "25")
    if not size.isdigit() or not 1 <= int(size) <= 200:
        raise HTTPException(400, "page_size: a number from 1 to 200")
    request.page_size = int(size)
    return request


def _problem(code: str, message: str, field: str = "", reason: str = "") -> JSONResponse:
    return JSONResponse(
        {"error": code, "message": message, "field": field, "reason": reason},
        status_code=_HTTP_STATUS.get(code, 502),
    )


async def _coordinator_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, CoordinatorError)
    return _problem(error.code, error.message, error.field, error.reason)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    code = "BAD_REQUEST" if error.status_code == 400 else str(error.status_code)
    return JSONResponse({"error": code, "message": error.detail}, status_code=error.status_code)


class _SecurityHeaders:
    """Adds the console's security headers (a strict Content-Security-Policy: the page
    runs only its own script and style) to every answer."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.encode(), v.encode()) for k, v in _SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def create_app(
    connect: Callable[[], Coordinator],
    traces: TraceSource,
    held: HeldCredential | None = None,
    poll_seconds: float = 1.0,
) -> Starlette:
    """The console's ASGI application; it calls ``connect()`` as it starts (in its event
    loop, where gRPC's asyncio channels belong) and closes the coordinator as it stops."""
    console = Console(traces, held, poll_seconds)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        console.coordinator = connect()
        console.stopping = asyncio.Event()  # in the server's event loop
        try:
            yield
        finally:
            await console.coordinator.close()

    routes = [
        Route("/", console.index),
        Route("/api/session", console.session, methods=["GET"]),
        Route("/api/session", console.sign_in, methods=["POST"]),
        Route("/api/session", console.sign_out, methods=["DELETE"]),
        Route("/api/definitions", console.definitions),
        Route("/api/sagas", console.sagas),
        Route("/api/sagas/stream", console.sagas_stream),
        Route("/api/counts", console.counts),
        Route("/api/sagas/{saga_id}", console.saga),
        Route("/api/sagas/{saga_id}/stream", console.saga_stream),
        Route("/api/sagas/{saga_id}/trace", console.trace),
        Route("/api/sagas/{saga_id}/retry", console.retry, methods=["POST"]),
        Route("/api/breakers", console.breakers),
        Route("/api/breakers/stream", console.breakers_stream),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    holds = held is not None and held.present
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(_SecurityHeaders),
            Middleware(Guard, holds_credential=holds),
        ],
        exception_handlers={
            CoordinatorError: _coordinator_error,
            HTTPException: _http_error,
        },
        lifespan=lifespan,
    )
    app.state.console = console
    return app

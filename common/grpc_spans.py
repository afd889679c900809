"""A client span and a server span for every traced gRPC call, ended whatever ends the call.

Sagawire's own interceptors, in place of opentelemetry-instrumentation-grpc's aio ones,
which lose spans on the paths a saga takes when something goes wrong:

* its client interceptor starts the span with ``end_on_exit=False`` and ends it from a
  done callback it adds only once the call's status came back. A call cancelled in
  flight (a parallel step failed, the saga's deadline passed, the process is stopping)
  never gets there: the span is never ended, never exported, and the server's span
  hangs from a parent that never arrives. The cancellation did not reach the RPC
  either (open-telemetry/opentelemetry-python-contrib#3271), so the server went on.
* its server interceptor records an aborted call's ``AbortError`` twice, ends the span
  only after ``abort`` has sent the status (so the client's span ends first), and
  leaves a call the client gave up on as a success.

Here:

**Client** (:func:`client_spans`): a CLIENT span per call, current while the call is
made, its context sent in the call's metadata. It ends when the call ends however it
ends: with the call's status; or, cancelled by the caller, with ``CANCELLED`` after
cancelling the RPC itself, so the server stops too. Any code but OK is an error.
A caller whose own span already stands for the call (the coordinator's step attempt,
:func:`call_made_in`) hands it over instead: the call gets no span of its own, the
caller's span gets the call's attributes, status code and context in the metadata, and
the caller ends it. One span per hop, not a wrapper span and a client span.

**Server** (:class:`ServerSpans`): a SERVER span per call, continuing the caller's
trace. ``context.abort`` sets the code and ends the span *before* the status leaves,
so a server span always ends before its client's; an abort is a status, not an
exception (no ``exception`` event); an exception the handler lets out is recorded
once. A call the client gave up on ends with ``DEADLINE_EXCEEDED`` when its deadline
passed, ``CANCELLED`` otherwise. Status follows the gRPC conventions for servers:
only UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE and DATA_LOSS
are the server's errors.

Both carry ``rpc.system``, ``rpc.service``, ``rpc.method`` and ``rpc.grpc.status_code``,
and record ``rpc.client.call.duration`` / ``rpc.server.call.duration`` (seconds, the
span's duration) with the same attributes. :func:`common.telemetry.traced_call`
decides which calls are traced (not health checks, reflection or ``Subscribe``).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.metrics import Histogram
from opentelemetry.propagate import extract, inject
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

RPC_SYSTEM = "rpc.system"
RPC_SERVICE = "rpc.service"
RPC_METHOD = "rpc.method"
RPC_STATUS_CODE = "rpc.grpc.status_code"

# What a server span calls an error (the gRPC semantic conventions): the others are
# the caller's doing (a bad argument, a "no", a cancel).
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

CallFilter = Callable[[Any], bool]


def method_of(details: Any) -> str:
    """The full method name of a call's details (bytes in some grpc versions)."""
    name = getattr(details, "method", None)
    if name is None:
        name = getattr(details, "full_method", "")
    return name.decode() if isinstance(name, bytes) else str(name)


def rpc_attributes(method: str) -> dict[str, AttributeValue]:
    """``rpc.system``, ``rpc.service`` and ``rpc.method`` of "/package.Service/Method"."""
    service, _, name = method.lstrip("/").partition("/")
    return {RPC_SYSTEM: "grpc", RPC_SERVICE: service, RPC_METHOD: name}


class _Ending:
    """One call's span and the time it started: ended exactly once, with its code (a
    span its caller handed over is given the code, and ended by the caller)."""

    __slots__ = ("_attributes", "_durations", "_is_server", "_owned", "_started", "ended", "span")

    def __init__(
        self,
        span: Span,
        attributes: dict[str, AttributeValue],
        durations: Histogram,
        server: bool,
        owned: bool = True,
    ) -> None:
        self.span = span
        self._attributes = attributes
        self._durations = durations
        self._is_server = server
        self._owned = owned
        self._started = time.perf_counter()
        self.ended = False

    def end(self, code: grpc.StatusCode, description: str = "") -> None:
        if self.ended:
            return
        self.ended = True
        number: int = code.value[0]
        self.span.set_attribute(RPC_STATUS_CODE, number)
        is_error = code is not grpc.StatusCode.OK and (
            not self._is_server or code in _SERVER_ERRORS
        )
        if is_error:
            self.span.set_status(StatusCode.ERROR, description or code.name)
        if self._owned:
            self.span.end()
        self._durations.record(
            time.perf_counter() - self._started, {**self._attributes, RPC_STATUS_CODE: number}
        )


# --- client -------------------------------------------------------------------------


class _HandedOver:
    """A caller's span for the next traced call made in its context (once)."""

    __slots__ = ("span", "taken")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.taken = False


_handed_over: contextvars.ContextVar[_HandedOver | None] = contextvars.ContextVar(
    "sagawire_call_span", default=None
)


@contextmanager
def call_made_in(span: Span) -> Iterator[None]:
    """The next traced unary call made in this block is ``span`` on the wire: it carries
    the call's attributes and status code, its context goes in the call's metadata, and
    no CLIENT span is made for it. ``span`` should be a CLIENT span; its maker ends it."""
    token = _handed_over.set(_HandedOver(span))
    try:
        yield
    finally:
        _handed_over.reset(token)


def _take_handed_over() -> Span | None:
    handed = _handed_over.get()
    if handed is None or handed.taken:
        return None
    handed.taken = True
    return handed.span


def _with_trace_context(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    """The call's details with the current trace context added to its metadata."""
    metadata = grpc.aio.Metadata(*tuple(details.metadata or ()))
    carrier: dict[str, str] = {}
    inject(carrier)
    for key, value in carrier.items():
        metadata.add(key, value)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


def client_spans(
    tracer: Tracer, durations: Histogram, traced: CallFilter
) -> list[grpc.aio.ClientInterceptor]:
    """The client interceptors of a channel: one per kind of call, as grpc.aio files each
    interceptor under the first kind it implements."""
    return [
        UnaryClientSpans(tracer, durations, traced),
        StreamClientSpans(tracer, durations, traced),
    ]


class _ClientSpans:
    def __init__(self, tracer: Tracer, durations: Histogram, traced: CallFilter) -> None:
        self._tracer = tracer
        self._durations = durations
        self._traced = traced

    def _start(self, method: str, handed: Span | None = None) -> _Ending:
        attributes = rpc_attributes(method)
        if handed is not None:
            handed.set_attributes(attributes)
            return _Ending(handed, attributes, self._durations, server=False, owned=False)
        span = self._tracer.start_span(method, kind=SpanKind.CLIENT, attributes=attributes)
        return _Ending(span, attributes, self._durations, server=False)


class UnaryClientSpans(_ClientSpans, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """A CLIENT span for each traced unary call (module docstring)."""

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        if not self._traced(details):
            return await continuation(details, request)
        ending = self._start(method_of(details), _take_handed_over())
        call = None
        try:
            with trace.use_span(ending.span, end_on_exit=False, record_exception=False):
                call = await continuation(_with_trace_context(details), request)
            # The status, once the call is over (the response stays with the call).
            code = await call.code()
            ending.end(code, await call.details() or "")
        except asyncio.CancelledError:
            # The caller gave up: the RPC is cancelled too, so the server stops working
            # on it, and the span ends as what happened.
            if call is not None:
                call.cancel()
            ending.end(grpc.StatusCode.CANCELLED, "cancelled by the caller")
            raise
        except BaseException as error:
            code = error.code() if isinstance(error, grpc.aio.AioRpcError) else None
            ending.end(code or grpc.StatusCode.UNKNOWN, f"{type(error).__name__}: {error}")
            raise
        return call


class StreamClientSpans(_ClientSpans, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """A CLIENT span for each traced server-streaming call, ended when the stream ends: read
    to its end, cancelled by its reader, or failed."""

    def __init__(self, tracer: Tracer, durations: Histogram, traced: CallFilter) -> None:
        super().__init__(tracer, durations, traced)
        # Tasks that read a finished stream's status (held so they are not collected).
        self._finishing: set[asyncio.Task[None]] = set()

    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        if not self._traced(details):
            return await continuation(details, request)
        ending = self._start(method_of(details))
        try:
            with trace.use_span(ending.span, end_on_exit=False, record_exception=False):
                call = await continuation(_with_trace_context(details), request)
        except BaseException as error:
            code = error.code() if isinstance(error, grpc.aio.AioRpcError) else None
            ending.end(code or grpc.StatusCode.CANCELLED, f"{type(error).__name__}: {error}")
            raise
        # A stream ends when its reader is done with it, cancels it, or it fails.
        call.add_done_callback(lambda done: self._stream_done(ending, done))
        return call

    def _stream_done(self, ending: _Ending, call: Any) -> None:
        if call.cancelled():
            ending.end(grpc.StatusCode.CANCELLED, "cancelled by the caller")
            return

        async def finish() -> None:
            ending.end(await call.code(), await call.details() or "")

        task = asyncio.get_running_loop().create_task(finish())
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)


# --- server -------------------------------------------------------------------------


class _TracedContext:
    """The servicer context a traced handler sees: ``abort`` ends the span before the
    status leaves; ``set_code`` is remembered for the span's end. Everything else is
    the real context's."""

    def __init__(self, context: grpc.aio.ServicerContext, ending: _Ending) -> None:
        self._context = context
        self._ending = ending
        self.code = grpc.StatusCode.OK
        self.details = ""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> None:
        self._ending.end(code, details)
        await self._context.abort(code, details, trailing_metadata)

    async def abort_with_status(self, status: Any) -> None:
        self._ending.end(status.code, status.details)
        await self._context.abort_with_status(status)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code
        self._context.set_code(code)

    def set_details(self, details: str) -> None:
        self.details = details
        self._context.set_details(details)


def _peer_attributes(context: grpc.aio.ServicerContext) -> dict[str, AttributeValue]:
    """``network.peer.address`` / ``.port`` of "ipv4:127.0.0.1:5000" or "ipv6:[::1]:5000"."""
    peer = str(context.peer() or "")
    kind, _, address = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return {}
    host, _, port = address.rpartition(":")
    attributes: dict[str, AttributeValue] = {"network.peer.address": host.strip("[]")}
    if port.isdigit():
        attributes["network.peer.port"] = int(port)
    return attributes


def _given_up(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """Why a handler was cancelled: its deadline passed, or the client cancelled."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


class ServerSpans(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """A SERVER span for each traced call (module docstring). ``around`` wraps each traced
    call's handler (the server's telemetry made the active one)."""

    def __init__(
        self,
        tracer: Tracer,
        durations: Histogram,
        traced: CallFilter,
        around: Callable[[], AbstractContextManager[object]] = nullcontext,
    ) -> None:
        self._tracer = tracer
        self._durations = durations
        self._traced = traced
        self.around = around

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not self._traced(details):
            return handler
        return _traced_handler(handler, self, method_of(details))

    def _start(self, method: str, context: grpc.aio.ServicerContext) -> _TracedContext:
        metadata = {item.key: item.value for item in context.invocation_metadata() or ()}
        attributes = rpc_attributes(method)
        span = self._tracer.start_span(
            method,
            context=extract(metadata),
            kind=SpanKind.SERVER,
            attributes={**attributes, **_peer_attributes(context)},
        )
        return _TracedContext(context, _Ending(span, attributes, self._durations, server=True))

    def _ended(self, traced: _TracedContext, error: BaseException | None) -> None:
        """The handler is over: end the span unless ``abort`` already did."""
        ending = traced._ending
        if ending.ended:
            return
        if isinstance(error, asyncio.CancelledError):
            code = _given_up(traced._context)
            cancelled = "cancelled: the client gave up, or the server is stopping"
            ending.end(code, cancelled if code is grpc.StatusCode.CANCELLED else "")
        elif error is not None:
            ending.span.record_exception(error)
            ending.end(grpc.StatusCode.UNKNOWN, f"{type(error).__name__}: {error}")
        else:
            ending.end(traced.code, traced.details)

    async def run_unary(self, method: str, behavior: Any, request: Any, context: Any) -> Any:
        with self.around():
            traced = self._start(method, context)
            error: BaseException | None = None
            try:
                with _current(traced):
                    return await _awaited(behavior(request, traced))
            except BaseException as raised:
                error = raised
                raise
            finally:
                self._ended(traced, error)

    async def run_streaming(
        self, method: str, behavior: Any, request: Any, context: Any
    ) -> AsyncIterator[Any]:
        # The span and the telemetry are made current around each step of the handler,
        # never across a yield: a stream its client cancels may be closed from another
        # context, where a context token taken before the yield cannot be reset.
        with self.around():
            traced = self._start(method, context)
        error: BaseException | None = None
        try:
            with self.around(), _current(traced):
                result = behavior(request, traced)
                if inspect.isawaitable(result) and not hasattr(result, "__aiter__"):
                    await result  # it wrote its replies through context.write
                    return
            replies = aiter(result) if hasattr(result, "__aiter__") else _aiter(result)
            while True:
                with self.around(), _current(traced):
                    try:
                        reply = await anext(replies)
                    except StopAsyncIteration:
                        return
                yield reply
        except GeneratorExit as closed:  # closed before its end: the client went away
            error = asyncio.CancelledError(str(closed))
            raise
        except BaseException as raised:
            error = raised
            raise
        finally:
            self._ended(traced, error)


async def _awaited(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


async def _aiter(replies: Iterable[Any]) -> AsyncIterator[Any]:
    for reply in replies:
        yield reply


def _current(traced: _TracedContext) -> Any:
    return trace.use_span(
        traced._ending.span,
        end_on_exit=False,
        record_exception=False,
        set_status_on_exception=False,
    )


def _traced_handler(
    handler: grpc.RpcMethodHandler, spans: ServerSpans, method: str
) -> grpc.RpcMethodHandler:
    """The same handler, its behaviour run inside a server span (and ``spans.around``)."""
    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if not handler.response_streaming:
        if handler.request_streaming:
            inner = handler.stream_unary
            make = grpc.stream_unary_rpc_method_handler
        else:
            inner = handler.unary_unary
            make = grpc.unary_unary_rpc_method_handler

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            return await spans.run_unary(method, inner, request, context)

        return make(unary, **serializers)

    if handler.request_streaming:
        inner_stream = handler.stream_stream
        make_stream = grpc.stream_stream_rpc_method_handler
    else:
        inner_stream = handler.unary_stream
        make_stream = grpc.unary_stream_rpc_method_handler

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for reply in spans.run_streaming(method, inner_stream, request, context):
            yield reply

    return make_stream(streaming, **serializers)

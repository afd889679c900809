"""``sagawire events``: follow the services' event streams live, and list poison events."""

from __future__ import annotations

import asyncio
from typing import Annotated

import grpc
import typer
from rich.console import Console

from common.config import SERVICE_NAMES, Endpoints
from common.errors import parse_rpc_error
from common.money import format_money
from common.paging import MAX_PAGE_SIZE, every_page
from common.tls import Identity, TlsError
from protos.sagawire.v1 import events_pb2, events_pb2_grpc

events_app = typer.Typer(no_args_is_help=True, help="Watch the services' domain events.")
console = Console(highlight=False)

_COLOURS = {"order": "cyan", "inventory": "magenta", "payment": "green", "shipping": "yellow"}


def describe(event: events_pb2.Event) -> str:
    """One readable line for an event: when, who, what, which saga, and the gist."""
    saga_event = events_pb2.OrderSagaEvent()
    gist = ""
    if event.data.Unpack(saga_event):
        data = saga_event.data
        parts = [f"step={saga_event.step}"] if saga_event.step else []
        if saga_event.reason:
            parts.append(f"reason={saga_event.reason}")
        if data.cancel_reason:
            parts.append(f"cancel_reason={data.cancel_reason!r}")
        if data.total.amount_minor:
            parts.append(f"total={format_money(data.total.amount_minor, data.total.currency)}")
        if data.tracking_number:
            parts.append(f"tracking={data.tracking_number}")
        mode = "choreography" if saga_event.mode == 2 else "orchestration"
        parts.append(f"mode={mode}")
        gist = " ".join(parts)
    stamp = event.time.ToDatetime().strftime("%H:%M:%S.%f")[:-3]
    colour = _COLOURS.get(event.source, "white")
    return (
        f"{stamp} [{colour}]{event.source:<9}[/] #{event.sequence:<5} "
        f"[bold]{event.type}[/] saga={event.subject} {gist}"
    )


async def _follow(
    name: str, address: str, from_sequence: int, types: list[str], printed: asyncio.Queue[str]
) -> None:
    async with Identity.from_env().aio_channel(address, peer=name) as channel:
        stream = events_pb2_grpc.EventStreamStub(channel).Subscribe(
            events_pb2.SubscribeRequest(from_sequence=from_sequence, consumer="cli", types=types)
        )
        async for batch in stream:
            for event in batch.events:
                await printed.put(describe(event))


async def _tail(
    services: list[str], from_sequence: int, types: list[str], count: int | None
) -> None:
    endpoints = Endpoints()
    printed: asyncio.Queue[str] = asyncio.Queue()
    followers = [
        asyncio.create_task(_follow(s, endpoints.of(s), from_sequence, types, printed))
        for s in services
    ]
    shown = 0
    try:
        while count is None or shown < count:
            getter = asyncio.create_task(printed.get())
            done, _ = await asyncio.wait([getter, *followers], return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                for task in done:
                    task.result()  # a stream failed: raise its error
                continue
            console.print(getter.result())
            shown += 1
    finally:
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)


@events_app.command("tail")
def tail(
    service: Annotated[
        list[str] | None, typer.Option(help="Only this service (repeatable).")
    ] = None,
    from_sequence: Annotated[int, typer.Option("--from", help="First sequence (1: all).")] = 1,
    event_type: Annotated[list[str] | None, typer.Option("--type", help="Only this type.")] = None,
    count: Annotated[int | None, typer.Option(help="Stop after this many events.")] = None,
) -> None:
    """Print every service's events as they happen (the stored backlog first)."""
    services = service or list(SERVICE_NAMES)
    unknown = sorted(set(services) - set(SERVICE_NAMES))
    if unknown:
        raise typer.BadParameter(f"unknown service {', '.join(unknown)}", param_hint="--service")
    try:
        asyncio.run(_tail(services, from_sequence, event_type or [], count))
    except TlsError as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(1) from None
    except grpc.aio.AioRpcError as error:
        remote = parse_rpc_error(error)
        console.print(f"[red]error:[/] {remote.code.name}: {remote.message}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass


@events_app.command("poison")
def poison(
    service: Annotated[str, typer.Option(help="The consuming service to ask.")] = "inventory",
) -> None:
    """List the events a service's consumers could not process and skipped."""

    async def fetch() -> list[events_pb2.PoisonEvent]:
        address = Endpoints().of(service)
        async with Identity.from_env().aio_channel(address, peer=service) as channel:
            stub = events_pb2_grpc.EventStreamStub(channel)
            return await every_page(
                lambda token: stub.ListPoisonEvents(
                    events_pb2.ListPoisonEventsRequest(page_size=MAX_PAGE_SIZE, page_token=token),
                    timeout=10,
                ),
                lambda reply: reply.events,
            )

    try:
        listed = asyncio.run(fetch())
    except TlsError as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(1) from None
    except grpc.aio.AioRpcError as error:
        remote = parse_rpc_error(error)
        console.print(f"[red]error:[/] {remote.code.name}: {remote.message}")
        raise typer.Exit(1) from None
    if not listed:
        console.print(f"no poison events at {service}")
    for item in listed:
        console.print(f"{item.producer} #{item.sequence} {item.type} {item.event_id}: {item.error}")

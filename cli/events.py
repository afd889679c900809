"""``sagawire events``: follow the services' event streams live, and list poison events.

Both talk to the services' own ``EventStream`` APIs; where they are comes from
cli/client.py (``SAGAWIRE_<NAME>_ADDR``, else the coordinator says). ``--output json``
prints one event per line (protobuf's JSON mapping, the service named in ``source``).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated

import grpc
import typer
from rich.text import Text

from cli.client import describe_rpc_error, fail, identity, service_addresses
from cli.output import Output, OutputOption, clock, console, message_dict, print_json, zone
from common.config import SERVICE_NAMES
from common.money import format_money
from common.paging import every_page
from contract.limits import MAX_PAGE_SIZE
from protos.sagawire.v1 import events_pb2, events_pb2_grpc, participant_pb2

events_app = typer.Typer(no_args_is_help=True, help="Watch the services' domain events.")

_COLOURS = {"order": "cyan", "inventory": "magenta", "payment": "green", "shipping": "yellow"}

ServiceOption = Annotated[
    list[str] | None,
    typer.Option(help="Only this service (repeatable; default: all four).", show_default=False),
]


def describe(event: events_pb2.Event) -> Text:
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
        chosen = participant_pb2.SAGA_MODE_CHOREOGRAPHY
        parts.append(f"mode={'choreography' if saga_event.mode == chosen else 'orchestration'}")
        gist = " ".join(parts)
    line = Text(f"{clock(event.time)} ")
    line.append(f"{event.source:<9}", style=_COLOURS.get(event.source, ""))
    line.append(f" #{event.sequence:<5} ")
    line.append(event.type, style="bold")
    return line + Text(f" saga={event.subject} {gist}".rstrip())


def _services(given: list[str] | None) -> list[str]:
    services = given or list(SERVICE_NAMES)
    unknown = sorted(set(services) - set(SERVICE_NAMES))
    if unknown:
        raise typer.BadParameter(
            f"unknown service {', '.join(map(repr, unknown))} (one of {', '.join(SERVICE_NAMES)})",
            param_hint="--service",
        )
    return services


async def _follow(
    name: str,
    address: str,
    from_sequence: int,
    types: list[str],
    printed: asyncio.Queue[events_pb2.Event],
) -> None:
    async with identity().aio_channel(address, peer=name) as channel:
        stream = events_pb2_grpc.EventStreamStub(channel).Subscribe(
            events_pb2.SubscribeRequest(from_sequence=from_sequence, consumer="cli", types=types)
        )
        async for batch in stream:
            for event in batch.events:
                await printed.put(event)


async def _tail(
    addresses: dict[str, str],
    from_sequence: int,
    types: list[str],
    count: int | None,
    output: Output,
) -> None:
    printed: asyncio.Queue[events_pb2.Event] = asyncio.Queue()
    followers = {
        asyncio.create_task(_follow(name, address, from_sequence, types, printed)): name
        for name, address in addresses.items()
    }
    out = console()
    shown = 0
    try:
        while count is None or shown < count:
            getter = asyncio.create_task(printed.get())
            done, _ = await asyncio.wait([getter, *followers], return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                for task, name in followers.items():
                    if task not in done:
                        continue
                    try:
                        task.result()
                    except grpc.RpcError as error:
                        fail(*describe_rpc_error(error, name, addresses[name]))
                    fail(f"{name} at {addresses[name]} ended its stream")
            event = getter.result()
            if output is Output.json:
                print_json(event)
            else:
                out.print(describe(event), soft_wrap=True)
            shown += 1
    finally:
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)


@events_app.command("tail")
def tail(
    service: ServiceOption = None,
    from_sequence: Annotated[int, typer.Option("--from", help="First sequence (1: all).")] = 1,
    event_type: Annotated[list[str] | None, typer.Option("--type", help="Only this type.")] = None,
    count: Annotated[int | None, typer.Option(help="Stop after this many events.")] = None,
    output: OutputOption = Output.table,
) -> None:
    """Print every service's events as they happen (the stored backlog first)."""
    addresses = service_addresses(_services(service))
    if output is Output.table:
        console().print(f"events of {', '.join(addresses)} (times {zone()})", style="dim")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_tail(addresses, from_sequence, event_type or [], count, output))


@events_app.command("poison")
def poison(
    service: ServiceOption = None,
    output: OutputOption = Output.table,
) -> None:
    """List the events each service's consumers could not process and skipped."""
    addresses = service_addresses(_services(service))

    async def fetch(name: str) -> list[events_pb2.PoisonEvent]:
        async with identity().aio_channel(addresses[name], peer=name) as channel:
            stub = events_pb2_grpc.EventStreamStub(channel)
            return await every_page(
                lambda token: stub.ListPoisonEvents(
                    events_pb2.ListPoisonEventsRequest(page_size=MAX_PAGE_SIZE, page_token=token),
                    timeout=10,
                ),
                lambda reply: reply.events,
            )

    out = console()
    for name in addresses:
        try:
            listed = asyncio.run(fetch(name))
        except grpc.RpcError as error:
            fail(*describe_rpc_error(error, name, addresses[name]))
        if output is Output.json:
            for item in listed:
                print_json({"service": name, **message_dict(item)})
            continue
        if not listed:
            out.print(f"{name}: no poison events", markup=False)
        for item in listed:
            where = f"{item.producer} #{item.sequence} {item.type} {item.event_id}"
            out.print(f"{name}: {where}: {item.error}", markup=False, soft_wrap=True)

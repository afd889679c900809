"""``sagawire faults``: see, set and clear a running stack's injected faults (Admin API).

Each service serves ``sagawire.v1.Admin`` when it runs with ``SAGAWIRE_ADMIN_ENABLED=true``
(as in ``sagawire up``), to the operator only, on a port of its own: the service's port + 10
on loopback unless ``SAGAWIRE_ADMIN_PORT``/``SAGAWIRE_ADMIN_HOST`` say otherwise (reach it
with ``SAGAWIRE_<NAME>_ADMIN_ADDR``). With replicas, every replica gets the change, and
the calls shown are all of the service's replicas' (JSON says how many answered).
``set`` changes the plan in force: what it is given and nothing else (``--action``
with ``--fail-next`` / ``--latency-ms`` sets that action's rule; without ``--action``
they are service-wide). A rule for an action the service does not run is refused by the
service (INVALID_ARGUMENT naming it)::

    sagawire faults set --service payment --action charge --fail-next 2
    sagawire faults set --service inventory --rate 0.2 --seed 7
    sagawire faults show
    sagawire faults clear
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import grpc
import typer

from cli.client import describe_rpc_error, fail, identity, service_addresses
from cli.output import UNKNOWN, Output, OutputOption, console, message_dict, print_json, table
from common.config import ADMIN_PORT_OFFSET, SERVICE_NAMES, admin_addresses, env_name
from protos.sagawire.v1 import admin_pb2, admin_pb2_grpc

faults_app = typer.Typer(
    no_args_is_help=True, help="See, set and clear injected faults (the Admin API)."
)
_T = TypeVar("_T")

ServicesOption = Annotated[
    list[str] | None,
    typer.Option(
        "--service", help="This service (repeatable; default: all four).", show_default=False
    ),
]


def _services(given: list[str] | None) -> list[str]:
    services = given or list(SERVICE_NAMES)
    if unknown := sorted(set(services) - set(SERVICE_NAMES)):
        raise typer.BadParameter(
            f"unknown service {', '.join(map(repr, unknown))} (one of {', '.join(SERVICE_NAMES)})",
            param_hint="--service",
        )
    return services


def _each(
    services: list[str], call: Callable[[admin_pb2_grpc.AdminStub], Awaitable[_T]]
) -> dict[str, list[_T]]:
    """``call`` on each service's Admin API (every replica's), in turn; a failure ends the
    command. Each service's answers, one per replica."""
    addresses = _admin_addresses(services)

    async def on(name: str, address: str) -> _T:
        async with identity().aio_channel(address, peer=name) as channel:
            return await call(admin_pb2_grpc.AdminStub(channel))

    results: dict[str, list[_T]] = {}
    for name in services:
        for address in addresses[name]:
            try:
                answer = asyncio.run(on(name, address))
            except grpc.RpcError as error:
                line, code = describe_rpc_error(error, f"{name}'s Admin API", address)
                if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNIMPLEMENTED):
                    line += (
                        " (a service serves Admin only with SAGAWIRE_ADMIN_ENABLED=true, on its"
                        f" port + {ADMIN_PORT_OFFSET} or SAGAWIRE_ADMIN_PORT; point the CLI at"
                        f" it with {env_name(f'{name}_admin_addr')})"
                    )
                fail(line, code)
            results.setdefault(name, []).append(answer)
    return results


Answer = tuple[admin_pb2.FaultPlan, admin_pb2.CallCounts]


def of_service(answers: list[Answer]) -> Answer:
    """One service's plan and calls from its replicas' answers: the plan is the same on
    each (every change is made on every replica), the calls are what all of them got."""
    plan, _ = answers[0]
    calls = admin_pb2.CallCounts()
    for _, counts in answers:
        for action, count in counts.calls.items():
            calls.calls[action] += count
    return plan, calls


def _admin_addresses(services: list[str]) -> dict[str, list[str]]:
    """SAGAWIRE_<NAME>_ADMIN_ADDR, else each replica's address's port + the offset."""
    given = {n: os.environ.get(env_name(f"{n}_admin_addr"), "") for n in services}
    learned = service_addresses([n for n in services if not given[n]])
    return {n: [given[n]] if given[n] else admin_addresses(learned[n]) for n in services}


async def _plan_and_calls(
    stub: admin_pb2_grpc.AdminStub,
) -> tuple[admin_pb2.FaultPlan, admin_pb2.CallCounts]:
    plan = await stub.GetFaults(admin_pb2.GetFaultsRequest(), timeout=10)
    calls = await stub.GetCallCounts(admin_pb2.GetCallCountsRequest(), timeout=10)
    return plan, calls


def _print(replies: dict[str, list[Answer]], output: Output) -> None:
    results = {name: of_service(answers) for name, answers in replies.items()}
    if output is Output.json:
        for name, (plan, calls) in results.items():
            print_json(
                {
                    "service": name,
                    "replicas": len(replies[name]),
                    "plan": message_dict(plan),
                    "calls": dict(calls.calls),
                }
            )
        return
    shown = table(
        "service", "unavailable rate", "latency", "seed", "action rules", "calls",
        wrap=("action rules", "calls"),
    )  # fmt: skip
    for name, (plan, calls) in results.items():
        rules = "; ".join(
            f"{a.action}: "
            + ", ".join(
                part
                for part in (
                    "fail always"
                    if a.fail_next == -1
                    else f"fail next {a.fail_next}"
                    if a.fail_next
                    else "",
                    f"+{a.latency_ms} ms" if a.latency_ms else "",
                )
                if part
            )
            for a in plan.actions
        )
        shown.add_row(
            name,
            f"{plan.unavailable_rate:g}",
            f"{plan.latency_ms} ms",
            str(plan.seed) if plan.seed else UNKNOWN,
            rules or "none",
            ", ".join(f"{k} {v}" for k, v in sorted(calls.calls.items())) or "none",
        )
    console().print(shown)


@faults_app.command("show")
def show(service: ServicesOption = None, output: OutputOption = Output.table) -> None:
    """Each service's fault plan in force, and the calls each action received."""
    _print(_each(_services(service), _plan_and_calls), output)


@faults_app.command("set")
def set_faults(
    service: ServicesOption = None,
    rate: Annotated[
        float | None,
        typer.Option(min=0, max=1, help="Probability that any call fails UNAVAILABLE."),
    ] = None,
    action: Annotated[
        str | None, typer.Option(help="The action or compensation the rule is for, e.g. charge.")
    ] = None,
    fail_next: Annotated[
        int | None,
        typer.Option(min=-1, help="Fail the action's next N calls (-1: always; 0: stop)."),
    ] = None,
    latency_ms: Annotated[
        int | None,
        typer.Option(min=0, max=600_000, help="Latency added (the action's, else every call's)."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the random choices (0: unseeded).")
    ] = None,
    output: OutputOption = Output.table,
) -> None:
    """Change the fault plan of a service (or every service): only what is given."""
    if action is None and fail_next is not None:
        raise typer.BadParameter("--fail-next is a rule of one action: give --action too")
    if rate is None and action is None and latency_ms is None and seed is None:
        raise typer.BadParameter("nothing to set: give --rate, --latency-ms, --seed or --action")

    async def change(
        stub: admin_pb2_grpc.AdminStub,
    ) -> tuple[admin_pb2.FaultPlan, admin_pb2.CallCounts]:
        plan = await stub.GetFaults(admin_pb2.GetFaultsRequest(), timeout=10)
        if rate is not None:
            plan.unavailable_rate = rate
        if seed is not None:
            plan.seed = seed
        if action is None:
            if latency_ms is not None:
                plan.latency_ms = latency_ms
        else:
            rule = next((a for a in plan.actions if a.action == action), None)
            if rule is None:
                rule = plan.actions.add(action=action)
            if fail_next is not None:
                rule.fail_next = fail_next
            if latency_ms is not None:
                rule.latency_ms = latency_ms
        await stub.SetFaults(plan, timeout=10)
        return await _plan_and_calls(stub)

    _print(_each(_services(service), change), output)


@faults_app.command("clear")
def clear(service: ServicesOption = None, output: OutputOption = Output.table) -> None:
    """No more faults at a service (or at every service)."""

    async def cleared(
        stub: admin_pb2_grpc.AdminStub,
    ) -> tuple[admin_pb2.FaultPlan, admin_pb2.CallCounts]:
        await stub.SetFaults(admin_pb2.FaultPlan(), timeout=10)
        return await _plan_and_calls(stub)

    _print(_each(_services(service), cleared), output)

"""The ``sagawire`` command: a thin client of the stack's gRPC APIs."""

from __future__ import annotations

from cli import bench, certs, chaos, demo, events, health, metrics, sagas, stack, trace
from cli.console import console
from cli.oneline import OneLineTyper
from cli.serve import ServiceName, serve
from cli.tokens import token_app

__all__ = ["ServiceName", "app"]

app = OneLineTyper(no_args_is_help=True, add_completion=False)


@app.callback()
def _root() -> None:
    """Sagawire: saga-coordinated gRPC services, orchestrated or choreographed."""


app.command()(serve)
app.command()(stack.up)
app.command()(demo.demo)
app.add_typer(events.events_app, name="events")
app.add_typer(token_app, name="token")
app.command()(health.health)
app.command()(certs.certs)
app.command()(trace.trace)
app.command()(metrics.metrics)
app.command()(bench.bench)
app.command()(chaos.chaos)
sagas.register(app)
app.command()(console)


if __name__ == "__main__":
    app()

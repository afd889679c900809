"""The console's handlers against a fake coordinator: what each page asks and with whose
token, what it answers, and what it refuses (console/app.py, console/access.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import timestamp_pb2
from starlette.testclient import TestClient

from console.access import COOKIE, HeldCredential, host_name, is_loopback
from console.app import Console, create_app
from console.coordinator import CoordinatorError
from console.traces import TraceSource
from protos.sagawire.v1 import common_pb2, order_saga_pb2, participant_pb2
from protos.sagawire.v1 import coordinator_pb2 as pb

SAGA_ID = "01a2359a-e4d0-763e-9880-fbb79285e9d5"
T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
OPERATOR, ALICE, CAROL = "operator-token", "alice-token", "carol-token"


def stamp(ms: float) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(T0 + timedelta(milliseconds=ms))
    return value


def attempt(phase: str, start: float, end: float, outcome: str, reason: str = "") -> pb.Attempt:
    return pb.Attempt(
        number=1,
        phase=phase,
        started_at=stamp(start),
        finished_at=stamp(end),
        outcome=outcome,
        error_code="FAILED_PRECONDITION" if reason else "",
        error_reason=reason,
        error_message="charge of 49.00 EUR exceeds the balance of 10.00 EUR" if reason else "",
    )


def carols_saga() -> pb.Saga:
    """A place_order saga rejected at charge_payment: stock released, order cancelled."""
    data = order_saga_pb2.OrderSagaData(
        order_id="o-1", customer_id="carol", destination="Lyon",
        total=common_pb2.Money(amount_minor=4900, currency="EUR"),
    )  # fmt: skip
    saga = pb.Saga(
        saga_id=SAGA_ID,
        saga="place_order",
        mode=participant_pb2.SAGA_MODE_ORCHESTRATION,
        status=pb.SAGA_STATUS_COMPENSATED,
        failure=pb.Failure(step="charge_payment", code="FAILED_PRECONDITION",
                           reason="INSUFFICIENT_FUNDS", message="too poor"),
        created_at=stamp(0),
        finished_at=stamp(40),
        trace_id="ab" * 16,
        summary=pb.SagaSummary(customer_id="carol", total=data.total, steps_done=2, steps_total=5),
        steps=[
            pb.SagaStep(name="create_order", participant="order", action="create_order",
                        compensation="cancel_order", status=pb.STEP_STATUS_COMPENSATED,
                        attempts=[attempt("execute", 1, 5, "ok"),
                                  attempt("compensate", 30, 35, "ok")]),
            pb.SagaStep(name="reserve_stock", participant="inventory", action="reserve",
                        compensation="release", after=["create_order"],
                        status=pb.STEP_STATUS_COMPENSATED,
                        attempts=[attempt("execute", 6, 12, "ok"),
                                  attempt("compensate", 20, 26, "ok")]),
            pb.SagaStep(name="charge_payment", participant="payment", action="charge",
                        compensation="refund", after=["create_order"],
                        status=pb.STEP_STATUS_REJECTED,
                        attempts=[attempt("execute", 6, 14, "rejected", "INSUFFICIENT_FUNDS")]),
            pb.SagaStep(name="schedule_shipment", participant="shipping", action="schedule",
                        compensation="cancel", after=["reserve_stock", "charge_payment"],
                        pivot=True, status=pb.STEP_STATUS_PENDING),
            pb.SagaStep(name="approve_order", participant="order", action="approve_order",
                        after=["schedule_shipment"], status=pb.STEP_STATUS_PENDING),
        ],
    )  # fmt: skip
    saga.data.Pack(data)
    return saga


def definitions() -> pb.ListDefinitionsResponse:
    steps = [
        pb.DefinitionStep(name=s.name, participant=s.participant, action=s.action,
                          compensation=s.compensation, after=s.after, pivot=s.pivot,
                          forward_only=s.name == "approve_order")
        for s in carols_saga().steps
    ]  # fmt: skip
    return pb.ListDefinitionsResponse(
        definitions=[
            pb.Definition(
                name="place_order",
                mode=participant_pb2.SAGA_MODE_ORCHESTRATION,
                data_type="sagawire.v1.OrderSagaData",
                deadline_seconds=30,
                steps=steps,
            )
        ]
    )


@dataclass
class FakeCoordinator:
    """Answers as the coordinator's token rules say: OPERATOR sees all, ALICE and CAROL
    are customers who see their own sagas (carol's saga is carol's)."""

    calls: list[tuple[str, str | None, Any]] = field(default_factory=list)
    transitions: list[pb.SagaTransition] = field(default_factory=list)
    # WatchSaga refused this many times first (UNAVAILABLE), as while the coordinator restarts.
    watch_refusals: int = 0
    closed: bool = False

    def _check(self, method: str, token: str | None, request: Any = None) -> None:
        self.calls.append((method, token, request))
        if token not in (OPERATOR, ALICE, CAROL):
            raise CoordinatorError("UNAUTHENTICATED", "no bearer token")
        if token != OPERATOR and method in ("ListBreakers", "CountSagas", "RetrySaga"):
            raise CoordinatorError("PERMISSION_DENIED", f"{method} needs an operator token")

    def _mine(self, token: str | None) -> bool:
        return token in (OPERATOR, CAROL)

    async def list_sagas(
        self, request: pb.ListSagasRequest, token: str | None
    ) -> pb.ListSagasResponse:
        self._check("ListSagas", token, request)
        sagas = [carols_saga()] if self._mine(token) else []
        return pb.ListSagasResponse(sagas=sagas, next_page_token="next" if sagas else "")

    async def count_sagas(
        self, request: pb.CountSagasRequest, token: str | None
    ) -> pb.CountSagasResponse:
        self._check("CountSagas", token, request)
        return pb.CountSagasResponse(
            counts=[pb.SagaCount(status=pb.SAGA_STATUS_COMPENSATED, count=1)], total=1
        )

    async def get_saga(self, saga_id: str, token: str | None) -> pb.Saga:
        self._check("GetSaga", token, saga_id)
        if saga_id != SAGA_ID or not self._mine(token):
            raise CoordinatorError("NOT_FOUND", f"no saga {saga_id}")
        return carols_saga()

    async def watch_saga(self, saga_id: str, token: str | None) -> AsyncIterator[pb.SagaTransition]:
        self._check("WatchSaga", token, saga_id)
        if self.watch_refusals:
            self.watch_refusals -= 1
            yield self.transitions[0]
            raise CoordinatorError("UNAVAILABLE", "the coordinator is restarting")
        for item in self.transitions:
            yield item

    async def retry_saga(self, saga_id: str, token: str | None) -> pb.Saga:
        self._check("RetrySaga", token, saga_id)
        return carols_saga()

    async def list_breakers(self, token: str | None) -> pb.ListBreakersResponse:
        self._check("ListBreakers", token)
        return pb.ListBreakersResponse(
            breakers=[pb.Breaker(participant="payment", state="closed", bulkhead_limit=64)]
        )

    async def list_definitions(self, token: str | None) -> pb.ListDefinitionsResponse:
        self._check("ListDefinitions", token)
        return definitions()

    async def close(self) -> None:
        self.closed = True


def client_of(
    fake: FakeCoordinator, held: str | None = None, tmp: Path = Path("/nonexistent")
) -> TestClient:
    credential = HeldCredential(held, mint=lambda: None) if held else None
    app = create_app(lambda: fake, TraceSource(tmp), credential, poll_seconds=0.01)
    return TestClient(app, base_url="http://127.0.0.1:50080")


@pytest.fixture
def fake() -> FakeCoordinator:
    return FakeCoordinator()


@pytest.fixture
def console(fake: FakeCoordinator) -> Iterator[TestClient]:
    """A console holding the operator's token, as on 127.0.0.1."""
    with client_of(fake, held=OPERATOR) as client:
        yield client
    assert fake.closed


def test_the_page_and_its_assets_are_served_with_a_strict_policy(console: TestClient) -> None:
    page = console.get("/")
    assert page.status_code == 200 and "/static/console.js" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert console.get("/static/console.js").status_code == 200
    assert console.get("/static/style.css").status_code == 200


def test_the_list_passes_its_filters_and_shows_each_saga_at_a_glance(
    console: TestClient, fake: FakeCoordinator
) -> None:
    answer = console.get(
        "/api/sagas",
        params={
            "status": "compensated",
            "saga": "place_order",
            "mode": "choreography",
            "after": "2026-01-01T10:00:00Z",
            "before": "2026-01-01T13:00:00+01:00",
            "page_size": "10",
            "page_token": "abc",
        },
    )
    assert answer.status_code == 200, answer.text
    method, token, request = fake.calls[-1]
    assert (method, token) == ("ListSagas", OPERATOR)
    assert request.status == pb.SAGA_STATUS_COMPENSATED
    assert request.filter.saga == "place_order"
    assert request.filter.mode == participant_pb2.SAGA_MODE_CHOREOGRAPHY
    assert request.filter.created_after.ToDatetime(UTC) == T0 - timedelta(hours=2)
    assert request.filter.created_before.ToDatetime(UTC) == T0
    assert (request.page_size, request.page_token) == (10, "abc")
    row = answer.json()["sagas"][0]
    assert row["status"] == "compensated" and row["mode"] == "orchestration"
    assert row["summary"]["total"] == "49.00 EUR" and row["summary"]["customer_id"] == "carol"
    assert row["duration_ms"] == 40.0
    assert answer.json()["next_page_token"] == "next"


@pytest.mark.parametrize(
    ("query", "word"),
    [
        ({"status": "sideways"}, "status"),
        ({"mode": "both"}, "mode"),
        ({"after": "yesterday"}, "after"),
        ({"before": "2026-01-01T10:00:00"}, "time zone"),
        ({"page_size": "1000"}, "page_size"),
    ],
)
def test_a_bad_filter_is_a_400_naming_it(
    console: TestClient, query: dict[str, str], word: str
) -> None:
    answer = console.get("/api/sagas", params=query)
    assert answer.status_code == 400 and word in answer.json()["message"]


def test_a_saga_comes_with_its_graph_coloured_and_its_compensations_in_order(
    console: TestClient,
) -> None:
    detail = console.get(f"/api/sagas/{SAGA_ID}").json()
    steps = {s["name"]: s for s in detail["steps"]}
    assert steps["charge_payment"]["status"] == "rejected"
    assert steps["charge_payment"]["failed_here"]
    assert steps["reserve_stock"]["status"] == "compensated"
    assert steps["schedule_shipment"]["pivot"] and steps["schedule_shipment"]["status"] == "pending"
    assert steps["approve_order"]["forward_only"]  # from ListDefinitions
    assert steps["charge_payment"]["attempts"][0]["error_reason"] == "INSUFFICIENT_FUNDS"
    assert [(c["step"], c["wave"]) for c in detail["compensations"]] == [
        ("reserve_stock", 1),
        ("create_order", 2),
    ]
    assert [(e["source"], e["target"]) for e in detail["reverse_edges"]] == [
        ("charge_payment", "reserve_stock"),
        ("reserve_stock", "create_order"),
    ]
    nodes = {n["name"]: n for n in detail["graph"]["nodes"]}
    assert nodes["reserve_stock"]["x"] == nodes["charge_payment"]["x"]
    assert detail["data"]["type"] == "sagawire.v1.OrderSagaData"
    assert detail["data"]["fields"]["customer_id"] == "carol"
    assert detail["settled"] and not detail["retryable"]
    assert detail["failure"]["reason"] == "INSUFFICIENT_FUNDS"


def test_the_coordinators_refusals_come_through_as_http_statuses(
    fake: FakeCoordinator,
) -> None:
    with client_of(fake) as nobody:  # no held credential, no token
        answer = nobody.get("/api/sagas")
        assert answer.status_code == 401 and answer.json()["error"] == "UNAUTHENTICATED"
        assert nobody.get("/api/session").json()["role"] == ""
        alice = {"authorization": f"Bearer {ALICE}"}
        missing = nobody.get(f"/api/sagas/{SAGA_ID}", headers=alice)
        assert missing.status_code == 404 and missing.json()["error"] == "NOT_FOUND"
        assert nobody.get("/api/counts", headers=alice).status_code == 403
        assert nobody.get("/api/breakers", headers=alice).status_code == 403


def test_a_user_signs_in_with_a_token_and_every_call_carries_it(
    console: TestClient, fake: FakeCoordinator
) -> None:
    assert console.get("/api/session").json() == {
        "role": "operator",
        "subject": "",
        "source": "console",
        "console_credential": True,
        "traces": "/nonexistent/*.jsonl",
        "jaeger": False,
    }
    refused = console.post(
        "/api/session", json={"token": "forged"}, headers={"x-sagawire-console": "1"}
    )
    assert refused.status_code == 401
    signed = console.post(
        "/api/session", json={"token": ALICE}, headers={"x-sagawire-console": "1"}
    )
    assert signed.status_code == 200 and signed.json()["role"] == "customer"
    assert signed.json()["source"] == "cookie"
    cookie = signed.headers["set-cookie"]
    assert f"{COOKIE}={ALICE}" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert console.get("/api/sagas").json()["sagas"] == []  # alice has none
    assert fake.calls[-1][:2] == ("ListSagas", ALICE)
    out = console.delete("/api/session", headers={"x-sagawire-console": "1"})
    assert out.json()["source"] == "console"
    console.cookies.clear()
    console.get("/api/sagas")
    assert fake.calls[-1][:2] == ("ListSagas", OPERATOR)


def test_retry_needs_the_consoles_header_and_an_operators_token(
    console: TestClient, fake: FakeCoordinator
) -> None:
    url = f"/api/sagas/{SAGA_ID}/retry"
    forged = console.post(url)  # what a form on another site could send
    assert forged.status_code == 403 and "x-sagawire-console" in forged.json()["message"]
    cross = console.post(url, headers={"x-sagawire-console": "1", "origin": "http://evil.example"})
    assert cross.status_code == 403
    assert not any(method == "RetrySaga" for method, _, _ in fake.calls)
    done = console.post(
        url, headers={"x-sagawire-console": "1", "origin": "http://127.0.0.1:50080"}
    )
    assert done.status_code == 200 and done.json()["saga_id"] == SAGA_ID
    as_carol = console.post(
        url, headers={"x-sagawire-console": "1", "authorization": f"Bearer {CAROL}"}
    )
    assert as_carol.status_code == 403 and as_carol.json()["error"] == "PERMISSION_DENIED"


def test_a_console_holding_a_credential_answers_only_as_localhost(fake: FakeCoordinator) -> None:
    with client_of(fake, held=OPERATOR) as client:
        rebound = client.get("/api/sagas", headers={"host": "attacker.example:50080"})
        assert rebound.status_code == 403
        assert client.get("/api/sagas", headers={"host": "localhost:50080"}).status_code == 200
        assert client.get("/api/sagas", headers={"host": "[::1]:50080"}).status_code == 200
    with client_of(fake) as open_console:  # holds nothing: any name may reach it
        token = {"authorization": f"Bearer {OPERATOR}", "host": "console.example"}
        assert open_console.get("/api/sagas", headers=token).status_code == 200


def test_loopback_names() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.0.0.1", "example.com", "::"))
    assert host_name("[::1]:8080") == "::1"
    assert host_name("localhost:1") == "localhost" and host_name("127.0.0.1") == "127.0.0.1"


def test_a_minted_credential_is_minted_again_before_it_expires() -> None:
    now = [0.0]
    minted = iter(["first", "second"])
    held = HeldCredential(None, mint=lambda: next(minted), clock=lambda: now[0])
    assert held.token() == "first"
    now[0] = 3599
    assert held.token() == "first"
    now[0] = 3601
    assert held.token() == "second"
    given = HeldCredential("given", mint=lambda: "never", clock=lambda: now[0])
    now[0] = 99_999
    assert given.token() == "given"


def events_of(text: str) -> list[tuple[str, Any]]:
    found = []
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            found.append((lines["event"], json.loads(lines["data"])))
    return found


def test_a_saga_streams_its_transitions_then_itself_until_settled(
    console: TestClient, fake: FakeCoordinator
) -> None:
    fake.transitions = [
        pb.SagaTransition(saga_id=SAGA_ID, sequence=n, kind=kind, at=stamp(n),
                          status=pb.SAGA_STATUS_RUNNING)
        for n, kind in enumerate(["saga_started", "step_started", "step_succeeded"], start=1)
    ]  # fmt: skip
    with console.stream("GET", f"/api/sagas/{SAGA_ID}/stream") as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        body = "".join(answer.iter_text())
    events = events_of(body)
    kinds = [name for name, _ in events]
    assert kinds[:3] == ["transition"] * 3 and kinds[-1] == "end"
    assert "saga" in kinds[3:]
    assert [data["kind"] for _, data in events[:3]] == [
        "saga_started",
        "step_started",
        "step_succeeded",
    ]
    assert events[-1][1] == {"sequence": 3}
    # A stream that breaks is opened again: the saga meanwhile, then only what is new.
    fake.watch_refusals = 2
    with console.stream("GET", f"/api/sagas/{SAGA_ID}/stream") as answer:
        events = events_of("".join(answer.iter_text()))
    kinds = [name for name, _ in events]
    assert kinds[:4] == ["transition", "saga", "problem", "saga"]
    assert events[2][1]["error"] == "UNAVAILABLE"
    assert kinds.count("transition") == 3
    assert kinds.count("problem") == kinds.count("resumed") == 2
    assert [d["sequence"] for name, d in events if name == "transition"] == [1, 2, 3]
    assert kinds[-1] == "end"
    # Not hers: NOT_FOUND before any stream opens.
    alice = {"authorization": f"Bearer {ALICE}"}
    assert console.get(f"/api/sagas/{SAGA_ID}/stream", headers=alice).status_code == 404


async def test_the_list_stream_sends_counts_to_an_operator_only_when_changed(
    fake: FakeCoordinator,
) -> None:
    console = Console(TraceSource(Path("/nonexistent")), None, poll_seconds=0.001)
    console.coordinator = fake
    reads = [{"n": 1}, {"n": 1}, {"n": 2}]

    async def read() -> Any:
        return reads.pop(0) if reads else {"n": 2}

    stream = console._polled("sagas", read)
    assert await anext(stream) == ("sagas", {"n": 1})
    assert await anext(stream) == ("sagas", {"n": 2})  # the unchanged one was not sent
    await stream.aclose()


def test_a_trace_is_shown_only_for_a_saga_the_user_may_read(
    fake: FakeCoordinator, tmp_path: Path
) -> None:
    span = {
        "trace_id": "ab" * 16, "span_id": "01" * 8, "parent_span_id": None,
        "name": "saga place_order", "service": "coordinator", "kind": "INTERNAL",
        "start_ns": 1_000_000, "end_ns": 41_000_000, "status": "ERROR",
        "attributes": {"saga.id": SAGA_ID, "saga.outcome": "compensated"},
    }  # fmt: skip
    attributes = {"saga.id": SAGA_ID, "saga.step": "charge_payment", "saga.attempt": 1}
    child = {**span, "span_id": "02" * 8, "parent_span_id": "01" * 8, "name": "step charge",
             "start_ns": 11_000_000, "end_ns": 21_000_000, "status": "OK",
             "attributes": attributes}  # fmt: skip
    (tmp_path / "traces.jsonl").write_text(json.dumps(span) + "\n" + json.dumps(child) + "\n")
    with client_of(fake, held=OPERATOR, tmp=tmp_path) as client:
        answer = client.get(f"/api/sagas/{SAGA_ID}/trace").json()
        (trace,) = answer["traces"]
        assert trace["trace_id"] == "ab" * 16 and trace["spans"] == 2
        first, second = trace["rows"]
        assert (first["depth"], first["error"], second["depth"]) == (0, True, 1)
        assert second["name"] == "step charge #1"
        assert second["offset"] == pytest.approx(0.25) and second["share"] == pytest.approx(0.25)
        alice = {"authorization": f"Bearer {ALICE}"}
        assert client.get(f"/api/sagas/{SAGA_ID}/trace", headers=alice).status_code == 404


def test_breakers_and_definitions(console: TestClient) -> None:
    (breaker,) = console.get("/api/breakers").json()["breakers"]
    assert breaker["participant"] == "payment" and breaker["bulkhead_limit"] == 64
    (definition,) = console.get("/api/definitions").json()["definitions"]
    assert definition["name"] == "place_order" and len(definition["graph"]["nodes"]) == 5
    counts = console.get("/api/counts").json()
    assert counts["total"] == 1 and counts["by_status"]["compensated"] == 1
    assert counts["by_status"]["running"] == 0


def test_traces_come_from_jaeger_when_configured_with_a_link_the_browser_opens() -> None:
    inside = TraceSource(Path("/data"), "http://jaeger:16686", "http://localhost:16686/")
    assert inside.describe() == "Jaeger at http://jaeger:16686"
    assert inside.link("ab" * 16) == f"http://localhost:16686/trace/{'ab' * 16}"
    local = TraceSource(Path("/data"))
    assert local.describe() == "/data/*.jsonl" and local.link("ab" * 16) == ""

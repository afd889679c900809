"""The bench's comparisons between rows of one run: floors, variants, targets, TLS's cost."""

from __future__ import annotations

from bench.ratios import add_ratios, judge, markdown, tls_costs
from bench.report import RunRow


def _row(mode: str, concurrency: int, rate: float, p50: float, cpu_ms: float = 1.0) -> RunRow:
    return RunRow(
        mode=mode,
        concurrency=concurrency,
        mix="happy",
        sagas=100,
        seconds=1.0,
        sagas_per_s=rate,
        p50_ms=p50,
        p95_ms=p50,
        p99_ms=p50,
        cpu_s_per_saga_total=cpu_ms / 1000,
    )


def test_each_row_is_compared_with_the_floors_of_its_own_variant() -> None:
    rows = [
        _row("bare", 32, 800, 5),
        _row("raw", 32, 400, 10),
        _row("orchestration", 32, 240, 20),
        _row("orchestration/nats", 32, 200, 20),
        _row("bare/plaintext", 32, 1000, 4),
        _row("raw/plaintext", 32, 500, 8),
        _row("orchestration/plaintext", 32, 250, 16),
    ]
    add_ratios(rows)
    by = {r.mode: r for r in rows}
    assert by["raw"].ratio_to_bare == 0.5 and by["raw"].ratio_to_raw == 1.0
    assert by["orchestration"].ratio_to_raw == 0.6 and by["orchestration"].p50_ratio_to_raw == 2.0
    # No raw/nats ran: the default stack's raw is the floor.
    assert by["orchestration/nats"].ratio_to_raw == 0.5
    assert by["orchestration/plaintext"].ratio_to_raw == 0.5
    assert by["orchestration/plaintext"].ratio_to_bare == 0.25
    assert by["bare"].ratio_to_bare == 1.0


def test_a_floor_that_did_not_run_leaves_the_ratio_empty() -> None:
    rows = [_row("raw", 1, 100, 10), _row("orchestration", 8, 50, 20)]
    add_ratios(rows)
    assert rows[0].ratio_to_bare is None
    assert rows[1].ratio_to_raw is None


def test_the_targets_are_judged_on_the_default_stack_at_their_concurrency() -> None:
    rows = [
        _row("bare", 1, 300, 3),
        _row("bare", 32, 700, 40),
        _row("raw", 1, 100, 10),
        _row("raw", 32, 350, 90),
        _row("orchestration", 1, 80, 12),
        _row("orchestration", 32, 280, 110),
        _row("orchestration/plaintext", 32, 1, 1),
    ]
    add_ratios(rows)
    verdicts = {v.target.text: v for v in judge(rows)}
    assert verdicts["raw >= 0.5x bare, c=32"].met is True
    assert verdicts["orchestration >= 0.6x raw, c=32"].value == 0.8
    assert verdicts["orchestration p50 <= 1.3x raw p50, c=1"].met is True
    assert verdicts["orchestration >= 266 sagas/s, c=32 (stretch)"].met is True
    choreography = verdicts["choreography >= 0.6x raw, c=32"]
    assert choreography.met is None and choreography.measured == "not measured"
    assert "| raw >= 0.5x bare, c=32 | 0.50x | yes |" in markdown(rows)


def test_tls_cost_pairs_each_run_with_its_plaintext_twin() -> None:
    rows = [
        _row("raw", 32, 300, 90, cpu_ms=7.5),
        _row("raw/plaintext", 32, 400, 80, cpu_ms=5.5),
        _row("orchestration", 32, 100, 300, cpu_ms=20),
    ]
    (cost,) = tls_costs(rows)
    assert (cost.mode, cost.concurrency) == ("raw", 32)
    assert cost.throughput_ratio == 0.75
    assert round(cost.cpu_ms_added, 6) == 2.0

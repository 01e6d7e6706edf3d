"""Reading ``/metrics`` as Prometheus does, and comparing its counters with the usage
records and the ledger of the same server (its SQLite database, read as another process)."""

from __future__ import annotations

import sqlite3
from collections import Counter
from contextlib import closing
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]


def samples(text: str) -> dict[tuple[str, Labels], float]:
    """Every sample of an exposition: (sample name, sorted labels) -> value."""
    found: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


_SAMPLES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
}


def metric_names(text: str) -> set[str]:
    """The names a query can use: each family's samples (``_total``, ``_bucket``, ...),
    also of a family that has no labelled sample yet (it is declared all the same)."""
    return {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in _SAMPLES.get(family.type, ("",))
    }


def by(
    found: dict[tuple[str, Labels], float],
    name: str,
    *keys: str,
    where: dict[str, str] | None = None,
) -> Counter[tuple[str, ...]]:
    """The samples of ``name`` summed by the labels ``keys`` (those matching ``where``);
    zero values left out, as a database's GROUP BY has no row for them."""
    totals: Counter[tuple[str, ...]] = Counter()
    for (sample, labels), value in found.items():
        named = dict(labels)
        if sample != name or any(named.get(k) != v for k, v in (where or {}).items()):
            continue
        totals[tuple(named[k] for k in keys)] += int(value)
    return +totals


def _rows(database: Path, query: str) -> list[sqlite3.Row]:
    with closing(sqlite3.connect(database)) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(query).fetchall()


def disagreements(text: str, database: Path) -> list[str]:
    """Where the counters of ``/metrics`` differ from the usage records and the ledger:
    requests (by protocol family, model and termination), tokens (by model, organization
    and kind), revenue (by model, organization, currency; and in all from the ledger).
    Empty when they agree exactly."""
    found = samples(text)
    usage = _rows(database, "SELECT * FROM usage_records")
    wrong = []

    requests = by(found, "openmaas_requests_total", "model", "termination")
    metered = Counter({k: v for k, v in requests.items() if k[1] != "refused"})
    recorded = Counter((row["model"], row["termination"]) for row in usage)
    if metered != recorded:
        wrong.append(f"requests: metrics {dict(metered)} != usage records {dict(recorded)}")

    tokens = by(found, "openmaas_tokens_total", "model", "organization", "kind")
    counted: Counter[tuple[str, ...]] = Counter()
    for row in usage:
        for kind, column in (
            ("input", "prompt_tokens"),
            ("cached", "cached_tokens"),
            ("output", "completion_tokens"),
            ("reasoning", "reasoning_tokens"),
        ):
            counted[(row["model"], row["org_id"], kind)] += row[column]
    if tokens != +counted:
        wrong.append(f"tokens: metrics {dict(tokens)} != usage records {dict(+counted)}")

    revenue = by(found, "openmaas_revenue_micros_total", "model", "organization", "currency")
    charged: Counter[tuple[str, ...]] = Counter()
    for row in usage:
        if row["cost_micros"] is not None:
            charged[(row["model"], row["org_id"], row["currency"])] += row["cost_micros"]
    if revenue != +charged:
        wrong.append(f"revenue: metrics {dict(revenue)} != usage records {dict(+charged)}")

    in_ledger: Counter[tuple[str, ...]] = Counter()
    for row in _rows(database, "SELECT debit, credit, amount FROM ledger_entries"):
        for account, sign in ((row["credit"], 1), (row["debit"], -1)):
            if account.startswith("system:") and account.endswith(":revenue"):
                in_ledger[(account.split(":")[1],)] += sign * row["amount"]
    by_currency = by(found, "openmaas_revenue_micros_total", "currency")
    if by_currency != +in_ledger:
        wrong.append(f"revenue: metrics {dict(by_currency)} != ledger {dict(+in_ledger)}")
    return wrong

"""What ``benchmarks/gateway.py`` prints: the header of a scope (machine, commit, what runs
where), the table of medians, and the issue's aims read off it."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rawhttp import PhaseResult

if TYPE_CHECKING:
    from gateway import Scope, Targets

ROOT = Path(__file__).resolve().parent.parent
PRICED = "om-bill"  # the target the aims are about: a priced model through OpenMaaS
BASELINE = "bare"
AIM_RATIO = 0.5  # priced OpenMaaS req/s at least half the bare relay's
AIM_ADDED_P50 = 0.001  # seconds, at concurrency 1

TARGET_NOTES = {
    "direct": "the upstream itself",
    "bare": "bare relay: Starlette + uvicorn + aiohttp + orjson; no auth, no accounting",
    "om-meter": "OpenMaaS: auth, usage record per request, no price (metering only)",
    "om-bill": "OpenMaaS: auth, price + balance (hold, then settlement with the usage record)",
    "om-bill-tier": "OpenMaaS: as om-bill, and the org on a tier (RPM/TPM/concurrency counted)",
    "litellm": "LiteLLM Proxy: master-key auth, no database (no spend logs)",
}


def print_header(
    args: argparse.Namespace, scope: Scope, header: dict[str, Any], targets: Targets
) -> None:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    print(f"\n## scope: {scope.name}\n")
    print(f"machine: {os.cpu_count()} CPUs ({cpu_model}), {platform.platform()}")
    print(f"python {platform.python_version()}; OpenMaaS at {_git_head()}")
    if scope.name == "core" and scope.pinned:
        print(
            f"per core: every gateway is one process pinned to CPU {min(scope.gateway_cpus or {0})}"
            f"; the client, the upstream and any database or Redis on CPU "
            f"{min(scope.client_cpus or {0})}"
        )
    elif scope.name == "core":
        print("per core: every gateway is one process; nothing pinned")
    else:
        print(
            f"the machine: every gateway runs {scope.workers} workers "
            "(openmaas serve --workers, uvicorn --workers, litellm --num_workers); "
            "nothing pinned: the client and the upstream SHARE THE CPUs with the gateway"
        )
    if args.database == "sqlite":
        print("OpenMaaS database: SQLite (one file, shared by every worker)")
    else:
        print("OpenMaaS database: PostgreSQL (a throwaway local cluster, durable settings)")
    if any(name.startswith("om-") for name in targets) and scope.workers > 1:
        redis = "om-bill-tier" in targets
        print("OpenMaaS rate limits: " + ("in a throwaway Redis" if redis else "not measured"))
    if header.get("litellm"):
        print(f"LiteLLM Proxy {header['litellm']} (litellm[proxy] in {args.litellm_venv})")
    elif args.no_litellm:
        print("LiteLLM Proxy: NOT MEASURED (--no-litellm)")
    for note in header.get("skipped", []):
        if note.startswith(f"om-bill-tier in scope {scope.name}"):
            print(f"SKIPPED {note}")
    print(
        f"phases: {args.warmup:g} s warm-up + {args.duration:g} s measured; "
        f"{args.rounds} round(s); median over rounds"
    )
    for name in targets:
        print(f"  {name:13} {TARGET_NOTES[name]}")
    if args.profile and scope.name == "core":
        print(f"OpenMaaS runs under cProfile (stats to {args.profile}): its numbers are slowed")


def _git_head() -> str:
    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        except OSError:
            return ""
        return done.stdout.strip()

    head = git("log", "-1", "--format=%h %s")[:80] or "?"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return head + (" (with uncommitted changes)" if dirty else "")


def _median(values: list[float]) -> float:
    values = [v for v in values if v == v]  # drop NaN
    return statistics.median(values) if values else float("nan")


def summarize(runs: list[PhaseResult], direct_runs: list[PhaseResult]) -> dict[str, float]:
    pairs = list(zip(runs, direct_runs, strict=True))
    measured = [r for r in runs if r.gateway_cpu and r.elapsed and r.latencies]
    services = [r for r in measured if r.services_cpu is not None]
    streamed = [r for r in measured if r.chunks]
    return {
        "rps": _median([r.rps for r in runs]),
        "p50": _median([r.pct(0.5) for r in runs]),
        "p99": _median([r.pct(0.99) for r in runs]),
        "a50": _median([r.pct(0.5) - d.pct(0.5) for r, d in pairs]),
        "a99": _median([r.pct(0.99) - d.pct(0.99) for r, d in pairs]),
        "cpus": _median([(r.gateway_cpu or 0.0) / r.elapsed for r in measured]),
        "us_req": _median([(r.gateway_cpu or 0.0) * 1e6 / len(r.latencies) for r in measured]),
        "us_chunk": _median([(r.gateway_cpu or 0.0) * 1e6 / r.chunks for r in streamed]),
        "us_services": _median(
            [(r.services_cpu or 0.0) * 1e6 / len(r.latencies) for r in services]
        ),
        "errors": float(sum(r.errors for r in runs)),
    }


def _ratio(a: float, b: float | None) -> str:
    return f"{a / b:.3f}" if b and b == b and a == a else "—"


def _ms(x: float) -> str:
    return f"{x * 1e3:.2f}" if x == x else "—"


def _num(x: float, fmt: str) -> str:
    return format(x, fmt) if x == x else "—"


COLUMNS = [
    "mode", "conc", "target", "req/s", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms",
    "req/s ÷ bare", "gateway CPUs", "CPU µs/req", "CPU µs/chunk", "services µs/req", "errors",
]  # fmt: skip


def print_table(
    scope: Scope,
    results: dict[tuple[str, str, int], list[PhaseResult]],
    names: list[str],
    modes: list[str],
    concurrencies: list[int],
    rounds: int,
) -> None:
    print(f"\nscope {scope.name}:\n")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for mode in modes:
        for conc in concurrencies:
            direct_runs = results.get(("direct", mode, conc), [])
            row = {n: summarize(results.get((n, mode, conc), []), direct_runs) for n in names}
            bare = row.get(BASELINE)
            for name in names:
                v = row[name]
                gateway = name != "direct"
                cells = [
                    mode,
                    str(conc),
                    name,
                    f"{v['rps']:,.0f}",
                    _ms(v["p50"]),
                    _ms(v["p99"]),
                    _ms(v["a50"]) if gateway else "—",
                    _ms(v["a99"]) if gateway else "—",
                    _ratio(v["rps"], bare["rps"]) if gateway and bare else "—",
                    _num(v["cpus"], ".2f"),
                    _num(v["us_req"], ",.0f"),
                    _num(v["us_chunk"], ",.1f"),
                    _num(v["us_services"], ",.0f"),
                    str(int(v["errors"])),
                ]
                print("| " + " | ".join(cells) + " |")
    print(
        f"\n(medians of {rounds} round(s); added = target minus direct, same round; CPU = "
        "every process of the gateway over the measured window, per request completed in "
        "it and per SSE event relayed; services = its PostgreSQL and Redis servers)"
    )


def aims(
    results: dict[tuple[str, str, int], list[PhaseResult]],
    names: list[str],
    modes: list[str],
    concurrencies: list[int],
) -> list[str]:
    """The issue's aims, read off this scope's medians: priced OpenMaaS (``om-bill``) at
    least half the bare relay's req/s at the highest concurrency, json and stream; an
    added p50 under 1 ms at concurrency 1."""
    if PRICED not in names:
        return [f"aims: not measured ({PRICED} was not run)"]
    lines = ["aims (priced OpenMaaS, om-bill):"]
    top = max(concurrencies)
    for mode in modes:
        direct = results.get(("direct", mode, top), [])
        mine = summarize(results.get((PRICED, mode, top), []), direct)
        if BASELINE in names:
            base = summarize(results.get((BASELINE, mode, top), []), direct)
            ratio = mine["rps"] / base["rps"] if base["rps"] else float("nan")
            met = "met" if ratio >= AIM_RATIO else "NOT met"
            lines.append(
                f"  {mode:6} req/s ÷ bare at concurrency {top}: {ratio:.3f} "
                f"(aim ≥ {AIM_RATIO}: {met})"
            )
        else:
            lines.append(f"  {mode:6} req/s ÷ bare: not measured (bare was not run)")
        if 1 in concurrencies:
            one = summarize(
                results.get((PRICED, mode, 1), []), results.get(("direct", mode, 1), [])
            )
            met = "met" if one["a50"] < AIM_ADDED_P50 else "NOT met"
            lines.append(
                f"  {mode:6} added p50 at concurrency 1: {one['a50'] * 1e3:.2f} ms "
                f"(aim < {AIM_ADDED_P50 * 1e3:g} ms: {met})"
            )
    return lines

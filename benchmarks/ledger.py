"""Settled priced requests/s of billing alone, from several processes on one database.

Each request is what a gateway process does around an engine call, without the engine or
HTTP: ``Accountant.admit`` (terms from memory, the price, a fake prompt count, the
worst-case reservation) then ``Accountant.finish`` with a ``UsageRecord`` (the settlement
and the usage record), for a model with a price and an organization with a balance. Only
the public API is used (``open_platform`` and ``Accountant.admit/finish``), so this measures
whatever holds, leases and group commits the code on disk does.

For every database (``--database sqlite,postgres``), number of processes
(``--processes 1,2,4``) and concurrency (``--concurrency``: coroutines per process), on a
fresh database: N OS processes each open their own platform (``open_platform(serve=True)``,
as a gateway worker does) on the one shared database, warm up, then all start at the same
moment and admit and finish requests back to back for ``--duration`` seconds, ``--rounds``
times. The table shows the median round: settled requests/s of all processes together, the
CPU time of the benchmark processes per request (event loops and driver threads, summed
over processes) and, on PostgreSQL, of the database server. Afterwards the database is
checked: the ledger sums to zero, no hold is left open, exactly one usage record per
request, and the organization was charged exactly the sum of the usage records' costs.

SQLite is a file in a temporary directory (``--synchronous``, ``PRAGMA synchronous``:
``FULL`` by default, as OpenMaaS's default). PostgreSQL is a throwaway cluster started from
the binaries on ``PATH`` with its durable defaults (``services.py``).

    .venv/bin/python benchmarks/ledger.py                   # both databases, 1, 2, 4 processes
    .venv/bin/python benchmarks/ledger.py --quick           # a smoke run
    .venv/bin/python benchmarks/ledger.py --database sqlite --processes 1 --concurrency 1,16
    .venv/bin/python benchmarks/ledger.py --calls           # + Python calls per request
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import platform
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from processes import Trees, clean_environment, tail
from services import PostgresCluster, create_database, postgres_unavailable

ROOT = Path(__file__).resolve().parent.parent
PRICED = "bench-priced"
PROMPT_TOKENS = 200
COMPLETION_TOKENS = 300
MAX_TOKENS = 1024
FUNDS = "1000000000"  # CNY: never runs out here
START_SLACK_S = 0.3  # how far ahead the parent sets a round's common start


# -- in each worker process ------------------------------------------------------------------
async def work(org_id: str, key_id: str, concurrency: int, warmup: int, calls: bool) -> None:
    """One worker: its platform, a warm-up, then a round per ``go T0 DURATION`` line on
    stdin (a JSON line of results on stdout each), until ``stop``. With ``calls``, each
    round runs under cProfile and reports the Python calls it made (its CPU time is then
    the profiler's too)."""
    from openmaas.accounts.auth import Principal
    from openmaas.billing.accountant import Accountant
    from openmaas.core.ids import new_request_id
    from openmaas.core.termination import Termination
    from openmaas.core.types import Usage
    from openmaas.core.usage import UsageRecord
    from openmaas.platform import open_platform
    from openmaas.settings import Settings

    principal = Principal(key_id, org_id, "member")
    done = 0

    async def prompt_count() -> int:
        return PROMPT_TOKENS

    async def one_request(billing: Accountant) -> None:
        nonlocal done
        request_id = new_request_id()
        started = time.perf_counter()
        ticket = await billing.admit(
            principal,
            PRICED,
            "chat.completions",
            request_id,
            count_prompt=prompt_count,
            max_tokens=MAX_TOKENS,
            context_length=None,
        )
        record = UsageRecord(
            request_id,
            principal.key_id,
            principal.org_id,
            PRICED,
            "chat.completions",
            Usage(prompt_tokens=PROMPT_TOKENS, completion_tokens=COMPLETION_TOKENS),
            Termination.FINISHED,
            ticket.request.started_at_ms,
            ttft_ms=5,
            latency_ms=round((time.perf_counter() - started) * 1000),
        )
        await billing.finish(ticket, record)
        done += 1

    async def until(billing: Accountant, deadline: float | None, requests: int) -> int:
        """Requests back to back on ``concurrency`` coroutines, until the wall-clock
        ``deadline`` (or ``requests`` of them); returns how many were settled."""
        before, left = done, requests

        async def loop() -> None:
            nonlocal left
            while (time.time() < deadline) if deadline is not None else left > 0:
                left -= 1
                await one_request(billing)

        await asyncio.gather(*(loop() for _ in range(concurrency)))
        return done - before

    async with open_platform(Settings(), serve=True) as platform:
        billing = platform.accountant
        await until(billing, None, warmup)
        _say({"ready": True})
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line.startswith("go "):
                break
            _, start_at, duration = line.split()
            await asyncio.sleep(max(0.0, float(start_at) - time.time()))
            profile = cProfile.Profile() if calls else None
            cpu = time.process_time()
            if profile is not None:
                profile.enable()
            count = await until(billing, float(start_at) + float(duration), 0)
            if profile is not None:
                profile.disable()
            result = {"count": count, "end": time.time(), "cpu": time.process_time() - cpu}
            if profile is not None:  # every call of a Python function or a built-in
                result["calls"] = sum(row[1] for row in pstats.Stats(profile).stats.values())
            _say(result)
    _say({"total": done})


def _say(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


# -- seeding and checking a database (in the parent) -----------------------------------------
async def seed(settings: dict[str, str]) -> dict[str, Any]:
    """The database (created first on PostgreSQL), one organization with a key and a
    balance, a price; returns their ids."""
    from openmaas.accounts.admin import NewOrganization
    from openmaas.billing.admin_bodies import NewFunds, NewPrice
    from openmaas.platform import open_platform
    from openmaas.settings import Settings

    if "database_url" in settings:
        await create_database(settings["database_url"])
    async with open_platform(Settings.model_validate(settings)) as platform:
        accounts = platform.accounts_admin("benchmark")
        billing = platform.billing_admin("benchmark")
        org = await accounts.create_org(NewOrganization(name="bench"))
        key = await accounts.issue_key(org.id, "bench")
        # CNY per 1M tokens: 2 input, 0.5 cached input, 8 output
        price = {"model": PRICED, "input": "2", "cached_input": "0.5", "output": "8"}
        await billing.set_price(NewPrice.parse(price))
        await billing.top_up(org.id, NewFunds.parse({"amount": FUNDS}))
        funded = (await billing.balance(org.id)).cash
    return {"org": org.id, "key": key.key.id, "funded": funded}


async def check(settings: dict[str, str], org_id: str, funded: int, expected: int) -> list[str]:
    """What is wrong, if anything: the ledger must sum to zero, nothing be held, one usage
    record per request, and the organization have paid exactly their costs."""
    from sqlalchemy import text

    from openmaas.platform import open_platform
    from openmaas.settings import Settings

    async with open_platform(Settings.model_validate(settings)) as platform:
        async with platform.database.connect() as conn:
            records, distinct, costs = (
                await conn.execute(
                    text(
                        "SELECT count(*), count(DISTINCT request_id), "
                        "coalesce(sum(cost_micros), 0) FROM usage_records WHERE model = :m"
                    ),
                    {"m": PRICED},
                )
            ).one()
        ledger = await platform.ledger.refresh()
        totals, open_holds = ledger.totals_by_unit(), ledger.open_holds()
        balance = await platform.billing_admin("benchmark").balance(org_id)
    failures = []
    if any(totals.values()):
        failures.append(f"the ledger does not sum to zero: {totals}")
    if open_holds or balance.held:
        failures.append(f"{len(open_holds)} holds open, {balance.held} micros held")
    if records != expected or distinct != records:
        failures.append(f"{records} usage records ({distinct} distinct) for {expected} requests")
    if funded - balance.cash != costs:
        failures.append(f"charged {funded - balance.cash} micros, usage records cost {costs}")
    return failures


# -- the parent ------------------------------------------------------------------------------
@dataclass
class Worker:
    proc: subprocess.Popen[str]

    @property
    def stdin(self) -> IO[str]:
        assert self.proc.stdin is not None
        return self.proc.stdin

    def read(self) -> dict[str, Any]:
        """The next JSON line the worker prints (fails if it exits first)."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"a worker exited with {self.proc.wait(30)}")
        result: dict[str, Any] = json.loads(line)
        return result


def start_worker(args: list[str], settings: dict[str, str], log: Path) -> Worker:
    env = {f"OPENMAAS_{name.upper()}": value for name, value in settings.items()}
    with open(log, "a") as errors:
        proc = subprocess.Popen(
            [sys.executable, __file__, *args],
            env=clean_environment({**env, "PYTHONPATH": str(ROOT / "src")}),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
    return Worker(proc)


@dataclass
class Cell:
    database: str
    processes: int
    concurrency: int
    rate: float  # settled requests/s, all processes, median round
    cpu_ms: float  # benchmark processes' CPU per request
    db_cpu_ms: float | None  # the database server's, PostgreSQL only
    failures: list[str]
    calls: float | None = None  # Python calls per request (``--calls``)


def measure_cell(
    args: argparse.Namespace,
    database: str,
    processes: int,
    concurrency: int,
    directory: Path,
    cluster: PostgresCluster | None,
    number: int,
) -> Cell:
    home = directory / f"{database}-{processes}-{concurrency}"
    home.mkdir()
    log = home / "errors.log"
    settings = {  # the workers get them as OPENMAAS_* variables
        "home": str(home),
        "embedded_models": "false",
        "sqlite_synchronous": args.synchronous,
        "log_level": "WARNING",
    }
    if cluster is not None:
        settings["database_url"] = cluster.url(f"bench_{number}")
    ids = asyncio.run(seed(settings))
    argv = ["_work", ids["org"], ids["key"], str(concurrency), str(args.warmup)]
    argv += ["calls"] if args.calls else []
    workers = [start_worker(argv, settings, log) for _ in range(processes)]
    server = Trees([cluster.postmaster_pid]) if cluster is not None else None
    rounds: list[tuple[float, float, float | None, float | None]] = []
    total = 0
    try:
        for worker in workers:
            worker.read()  # ready
        for _ in range(args.rounds):
            start_at = time.time() + START_SLACK_S
            db_before = server.cpu_seconds() if server else 0.0
            for worker in workers:
                worker.stdin.write(f"go {start_at} {args.duration}\n")
                worker.stdin.flush()
            results = [worker.read() for worker in workers]
            db = (server.cpu_seconds() - db_before) if server else None
            count = sum(r["count"] for r in results)
            wall = max(r["end"] for r in results) - start_at
            cpu = sum(r["cpu"] for r in results)
            calls = sum(r["calls"] for r in results) / count if args.calls else None
            rounds.append(
                (count / wall, cpu * 1000 / count, None if db is None else db * 1000 / count,
                 calls)
            )  # fmt: skip
        for worker in workers:
            worker.stdin.write("stop\n")
            worker.stdin.flush()
        total = sum(worker.read()["total"] for worker in workers)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}; the workers' errors:\n{tail(log)}") from None
    finally:
        for worker in workers:
            if worker.proc.poll() is None:
                worker.proc.kill()
            worker.proc.wait(30)
    failures = asyncio.run(check(settings, ids["org"], ids["funded"], total))
    best = sorted(rounds)[len(rounds) // 2]  # the median round by rate
    return Cell(database, processes, concurrency, best[0], best[1], best[2], failures, best[3])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 short round")
    parser.add_argument("--database", default="sqlite,postgres", help="sqlite, postgres, or both")
    parser.add_argument("--processes", default="1,2,4", help="OS processes on the one database")
    parser.add_argument("--concurrency", default="16", help="coroutines per process, e.g. 1,16")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=200, help="requests per process, first")
    parser.add_argument("--synchronous", default="FULL", help="SQLite's PRAGMA synchronous")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--calls",
        action="store_true",
        help="run the rounds under cProfile and add Python calls per request (slower)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 1.0, 20
    args.database = [d.strip() for d in args.database.split(",") if d.strip()]
    for name in args.database:
        if name not in ("sqlite", "postgres"):
            parser.error(f"--database: {name!r} is neither sqlite nor postgres")
    args.processes = [int(p) for p in args.processes.split(",")]
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    return args


def measure(args: argparse.Namespace) -> int:
    print(
        f"python {platform.python_version()}, {os.cpu_count()} CPUs; {args.rounds} round(s) of "
        f"{args.duration:g} s after {args.warmup} warm-up requests per process (median round); "
        "load average at the start: %.2f %.2f %.2f" % os.getloadavg()
    )
    print(
        "each request: Accountant.admit (priced: a reservation) + Accountant.finish "
        "(settlement + usage record); every process its own open_platform(serve=True)"
    )
    print(f"SQLite: synchronous={args.synchronous}; PostgreSQL: a throwaway cluster, durable\n")
    calls_head, calls_rule = (" Python calls/req |", "---:|") if args.calls else ("", "")
    print(
        "| database | processes | concurrency per process | settled req/s | CPU ms/req "
        f"(processes) | database CPU ms/req |{calls_head} checks |"
    )
    print(f"|---|---:|---:|---:|---:|---:|{calls_rule}---|")
    directory = Path(tempfile.mkdtemp(prefix="openmaas-bench-ledger-"))
    failed = False
    number = 0
    try:
        for database in args.database:
            cluster = None
            if database == "postgres":
                reason = postgres_unavailable()
                if reason:
                    print(f"| postgres | — | — | — | — | — | skipped: {reason} |")
                    continue
                cluster = PostgresCluster().start()
            try:
                for processes in args.processes:
                    for concurrency in args.concurrency:
                        number += 1
                        try:
                            cell = measure_cell(
                                args, database, processes, concurrency, directory, cluster, number
                            )
                        except RuntimeError as exc:
                            failed = True
                            print(f"| {database} | {processes} | {concurrency} | failed: {exc}")
                            continue
                        failed = failed or bool(cell.failures)
                        db = "—" if cell.db_cpu_ms is None else f"{cell.db_cpu_ms:.2f}"
                        verdict = "; ".join(cell.failures) or "ok"
                        calls = "" if cell.calls is None else f" {cell.calls:,.0f} |"
                        print(
                            f"| {database} | {processes} | {concurrency} | {cell.rate:,.0f} "
                            f"| {cell.cpu_ms:.2f} | {db} |{calls} {verdict} |",
                            flush=True,
                        )
            finally:
                if cluster is not None:
                    cluster.stop()
    finally:
        if args.keep:
            print(f"kept {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    one, five, fifteen = os.getloadavg()
    print(
        "\nchecks after each line: the ledger sums to zero, no hold open, one usage record per "
        "request, the organization charged exactly the records' costs"
    )
    print(f"load average (1, 5, 15 min) at the end: {one:.2f} {five:.2f} {fifteen:.2f}")
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["_work"]:
        org, key, concurrency, warmup = argv[1:5]
        asyncio.run(work(org, key, int(concurrency), int(warmup), argv[5:] == ["calls"]))
        return 0
    sys.path.insert(0, str(ROOT / "src"))  # seed and check the code the workers run
    return measure(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

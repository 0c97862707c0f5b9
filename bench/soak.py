"""Memory, errors and compliance records of the gateway under a steady request rate for ten minutes.

    make soak
    make soak BENCH_ARGS="--minutes 30 --rate 50"
    (or: python -m config.devstack exec -- python bench/soak.py [options])

Starts the same stack as `make bench` (bench/gateway.py: bench/fast_upstream.py as the demo's model server,
gunicorn with its production settings, a Celery worker on `pool.cpu`, DEBUG=0) and sends example.json to
POST /api/v1/models/<demo model>/predict at a fixed rate from an open-loop client: requests leave on schedule
whether or not earlier ones are answered, so a gateway that slows down builds a queue, as real clients would
make it, rather than being waited for. After a warm-up it takes the resident memory of every process (each
gunicorn worker, the Celery worker and its children, Redis, each PostgreSQL process) and again at the end.

The run fails when a process tree's memory grew by more than 10% between the two, when any request failed, when
the bench key's compliance records did not grow by exactly the answers, or when the hash chain does not verify.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from bench.common import (
    CpuMeter,
    Memory,
    MemorySampler,
    load_average,
    megabytes,
    memory_by_process,
    memory_by_tree,
    nearest_rank,
)
from bench.gateway import PREDICT_BODY, STACK, Stack, add_stack_arguments, records_settled, run_guarded, stack_started

FLAT = 0.10  # a tree whose memory changed by no more than this between start and end is flat
# ... or by no more than this: a few hundred KiB of a 2 MiB Redis are 10% and say nothing.
NOISE_FLOOR = 2 * 2**20
PROGRESS_SECONDS = 60.0
ProcessMemory = dict[tuple[str, int], tuple[str, Memory]]  # (tree, pid) -> (what the process is, its memory)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to measure, after the warm-up")
    # Half of what the gateway sustains on the 2-core machine of docs/benchmarks.md (about 110 a second): a soak
    # looks for growth at a steady state, and a rate at the ceiling would measure a queue instead.
    parser.add_argument("--rate", type=float, default=50.0, help="predict requests a second through the portal")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds at the same rate before the start snapshot")
    parser.add_argument("--max-in-flight", type=int, default=256, help="the client's cap; requests over it fail")
    parser.add_argument("--timeout", type=float, default=30.0, help="client timeout per request, seconds")
    add_stack_arguments(parser)
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or args.warmup < 0:
        parser.error("minutes and rate must be positive, warmup not negative")
    return args


# --- The load -------------------------------------------------------------------------------------------------


@dataclass
class Window:
    """What happened to the requests that left in one stretch of time."""

    sent: int = 0
    statuses: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    late_ms: float = 0.0  # the most a request left after its time: the client keeping up, or not

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())

    @property
    def errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if not 200 <= status < 300) + sum(
            self.failures.values()
        )

    def add(self, other: Window) -> None:
        self.sent += other.sent
        self.statuses.update(other.statuses)
        self.failures.update(other.failures)
        self.latencies_ms += other.latencies_ms
        self.late_ms = max(self.late_ms, other.late_ms)

    def latency(self, fraction: float) -> float:
        ordered = sorted(self.latencies_ms)
        return nearest_rank(ordered, fraction) if ordered else math.nan


def schedule(rate: float, seconds: float) -> list[float]:
    """Offsets from the start at which requests leave: evenly spaced, whatever the answers do."""
    return [index / rate for index in range(math.floor(rate * seconds))]


async def open_loop(
    args: argparse.Namespace,
    stack: Stack,
    seconds: float,
    on_window: Callable[[int, Window], None],
    window_seconds: float,
) -> Window:
    """Send predict at `args.rate` for `seconds`; `on_window(index, window)` after each stretch of time."""
    url = f"{stack.portal_url}/api/v1/models/{stack.demo['DEMO_MODEL']}/predict"
    body = PREDICT_BODY.read_bytes()
    limits = httpx.Limits(max_connections=args.max_in_flight, keepalive_expiry=2.0)
    windows: dict[int, Window] = {}
    in_flight: set[asyncio.Task] = set()
    loop = asyncio.get_running_loop()

    async def one(client: httpx.AsyncClient, window: Window, due: float) -> None:
        sent = loop.time()
        window.late_ms = max(window.late_ms, (sent - due) * 1000)
        try:
            response = await client.post(url, content=body, headers=stack.portal_headers)
        except httpx.HTTPError as error:
            window.failures[type(error).__name__] += 1
            return
        window.statuses[response.status_code] += 1
        window.latencies_ms.append((loop.time() - sent) * 1000)

    total = Window()
    async with httpx.AsyncClient(trust_env=False, timeout=args.timeout, limits=limits) as client:
        start = loop.time()
        reported = 0
        for offset in schedule(args.rate, seconds):
            due = start + offset
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            index = int(offset // window_seconds)
            while reported < index:  # a window is reported once the next one starts sending
                on_window(reported, windows.get(reported, Window()))
                reported += 1
            window = windows.setdefault(index, Window())
            window.sent += 1
            if len(in_flight) >= args.max_in_flight:
                window.failures["over the client's cap"] += 1
                continue
            task = asyncio.create_task(one(client, window, due))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(in_flight)
        for index in range(reported, max(windows, default=-1) + 1):
            on_window(index, windows.get(index, Window()))
    for window in windows.values():
        total.add(window)
    return total


# --- Memory ---------------------------------------------------------------------------------------------------


def _change(before: int, after: int) -> str:
    return f"{(after - before) / before:+.1%}" if before else "-"


def memory_rows(start: ProcessMemory, end: ProcessMemory) -> list[str]:
    """One row per process seen at start or end, in tree order, with the change of its RSS and private part."""
    lines = [
        "| tree | pid | process | RSS start MiB | RSS end MiB | change | private start MiB | private end MiB"
        " | change |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key in sorted(start.keys() | end.keys()):
        what = (start.get(key) or end[key])[0]
        cells = []
        for field_name in ("rss", "private"):
            before = getattr(start[key][1], field_name) if key in start else None
            after = getattr(end[key][1], field_name) if key in end else None
            cells += [
                megabytes(before) if before is not None else "new",
                megabytes(after) if after is not None else "gone",
                _change(before, after) if before is not None and after is not None else "-",
            ]
        lines.append(f"| {key[0]} | {key[1]} | `{what}` | {' | '.join(cells)} |")
    return lines


def tree_verdicts(start: ProcessMemory, end: ProcessMemory) -> tuple[bool, dict[str, str]]:
    """Whether no tree's private memory grew by more than FLAT (and NOISE_FLOOR), with a line per tree.

    Private memory, because RSS moves with shared pages no process owns: PostgreSQL's checkpointer maps the
    shared buffers each checkpoint writes, and its RSS rises by tens of MiB with no leak anywhere. And only of
    the processes that ran throughout: a connection the pool opens for a burst adds a PostgreSQL backend to the
    tree, which is not a process growing. A tree that shrank is not a leak either.
    """
    ok, lines = True, {}
    for tree in sorted({tree for tree, _ in start}):
        kept = [key for key in start if key[0] == tree and key in end]
        new = [end[key][1].private for key in end if key[0] == tree and key not in start]
        gone = sum(1 for key in start if key[0] == tree and key not in end)
        before = sum(start[key][1].private for key in kept)
        after = sum(end[key][1].private for key in kept)
        change = (after - before) / before if before else 0.0
        small = abs(after - before) <= NOISE_FLOOR
        verdict = "flat" if small or abs(change) <= FLAT else "shrank" if change < 0 else "GREW"
        ok &= verdict != "GREW"
        others = f"; {len(new)} new ({megabytes(sum(new))} MiB private)" if new else ""
        others += f"; {gone} gone" if gone else ""
        lines[tree] = (
            f"private {megabytes(before)} -> {megabytes(after)} MiB ({change:+.1%}, {verdict}) in the"
            f" {len(kept)} process{'' if len(kept) == 1 else 'es'} that ran throughout{others}"
        )
    return ok, lines


@dataclass(frozen=True)
class Snapshot:
    """The memory of every process, and how many keys Redis holds, at one moment."""

    processes: ProcessMemory
    trees: dict[str, Memory]
    redis_keys: dict[str, tuple[int, int]]  # the part of a key's name before its first ":" -> (keys, without TTL)

    @classmethod
    def take(cls, roots: dict[str, int]) -> Snapshot:
        return cls(memory_by_process(roots), memory_by_tree(roots), redis_keys())


def redis_keys() -> dict[str, tuple[int, int]]:
    """Keys by the first part of their name, and how many of them never expire: a count that grows with the
    requests and has no TTL is a leak, one with a TTL levels off once the first keys expire."""
    from config.redis import get_redis

    client = get_redis()
    names = list(client.scan_iter(count=1000))
    pipeline = client.pipeline(transaction=False)
    for name in names:
        pipeline.ttl(name)
    counts: Counter = Counter()
    lasting: Counter = Counter()
    for name, ttl in zip(names, pipeline.execute(), strict=True):
        prefix = name.decode(errors="replace").split(":", 1)[0]
        counts[prefix] += 1
        lasting[prefix] += ttl == -1
    return {prefix: (counts[prefix], lasting[prefix]) for prefix in sorted(counts)}


def redis_key_lines(start: dict[str, tuple[int, int]], end: dict[str, tuple[int, int]]) -> list[str]:
    lines = []
    for prefix in sorted(start.keys() | end.keys()):
        (before, _), (after, lasting) = start.get(prefix, (0, 0)), end.get(prefix, (0, 0))
        lines.append(f"`{prefix}`: {before} -> {after} ({lasting} of them without a TTL)")
    return lines


# --- The run --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_guarded("bench-soak", lambda: run(args))


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    with stack_started(args, name="bench-soak", key_name="bench-soak") as (stack, settings):
        print("\n## Settings of this run\n")
        print(f"- command: bench/soak.py {' '.join(sys.argv[1:])}".rstrip())
        for line in settings:
            print(f"- {line}")
        print(
            f"- load: POST /api/v1/models/{stack.demo['DEMO_MODEL']}/predict with example.json at {args.rate:g}"
            f" requests/s, open loop (httpx, asyncio, at most {args.max_in_flight} in flight), {args.warmup:g} s of"
            f" warm-up, then {args.minutes:g} minutes\n- load average before: {load_average()}\n",
            flush=True,
        )
        roots = {name: pid for name, pid in stack.roots().items() if name != "upstream"}
        records_before = stack.records()
        with MemorySampler(roots) as memory:
            warm = asyncio.run(open_loop(args, stack, args.warmup, lambda index, window: None, max(args.warmup, 1)))
            start = Snapshot.take(roots)
            meter = CpuMeter(roots)
            cpu_before = meter.read()
            print(
                "| minute | sent | answered | errors | p50 ms | p99 ms | latest departure ms | web MiB | worker MiB |"
            )
            print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", flush=True)

            def progress(index: int, window: Window) -> None:
                trees = {name: megabytes(memory.rss) for name, memory in memory_by_tree(roots).items()}
                print(
                    f"| {index + 1} | {window.sent} | {window.answered} | {window.errors} | {window.latency(0.5):.1f}"
                    f" | {window.latency(0.99):.1f} | {window.late_ms:.1f} | {trees.get('web', '-')}"
                    f" | {trees.get('worker', '-')} |",
                    flush=True,
                )

            measured = asyncio.run(open_loop(args, stack, args.minutes * 60, progress, PROGRESS_SECONDS))
            end = Snapshot.take(roots)
            cpu = {name: value - cpu_before[name] for name, value in meter.read().items()}
        records_grown = records_settled(stack.records) - records_before
        return report(stack, warm, measured, records_grown, (start, end), memory.peaks, cpu, started)


def report(
    stack: Stack,
    warm: Window,
    measured: Window,
    records_grown: int,
    snapshots: tuple[Snapshot, Snapshot],
    peaks: dict[str, Memory],
    cpu: dict[str, float],
    started: float,
) -> int:
    from apps.compliance.records import chain_verify

    total = Window()
    total.add(warm)
    total.add(measured)
    print(
        "\n## Memory of every process, after the warm-up and at the end\n\nprivate = RSS less file-backed and"
        " shared-memory pages (RssAnon), what a leak grows; RSS also moves with shared pages no process owns.\n"
    )
    start, end = snapshots
    print("\n".join(memory_rows(start.processes, end.processes)))
    flat, lines = tree_verdicts(start.processes, end.processes)
    print("\nTrees (all their processes summed; the peak is the largest sum seen, sampled every 0.25 s):\n")
    for tree, line in lines.items():
        rss = f"{megabytes(start.trees[tree].rss)} -> {megabytes(end.trees.get(tree, Memory()).rss)} MiB"
        print(f"- {tree}: {line}; RSS of the whole tree {rss}, peak {megabytes(peaks[tree].rss)} MiB")
    print("\nRedis keys by the first part of their name, after the warm-up and at the end:\n")
    print("\n".join(f"- {line}" for line in redis_key_lines(start.redis_keys, end.redis_keys)))

    stack_cpu = sum(cpu.get(name, 0.0) for name in STACK)
    median = statistics.median(measured.latencies_ms) if measured.latencies_ms else math.nan
    print(
        f"\n## Requests\n\n- measured: {measured.sent} sent, {measured.answered} answered ({dict(measured.statuses)}),"
        f" {measured.errors} errors{f' {dict(measured.failures)}' if measured.failures else ''}; latency p50"
        f" {median:.1f} ms, p99 {measured.latency(0.99):.1f} ms, max {measured.latency(1.0):.1f} ms; the latest"
        f" departure {measured.late_ms:.1f} ms after its time\n- with the warm-up: {total.sent} sent,"
        f" {total.answered} answered, {total.errors} errors\n- CPU per answered request (measured part): stack"
        f" {stack_cpu * 1000 / max(1, measured.answered):.2f} ms ("
        + ", ".join(f"{name} {cpu.get(name, 0.0) * 1000 / max(1, measured.answered):.2f}" for name in STACK)
        + ")"
    )
    chain = chain_verify(schema_name=stack.tenant.schema_name)
    equal = records_grown == total.answered
    errors_ok = total.errors == 0 and total.sent == total.answered
    print(
        f"\n## Checks\n\n- errors: {total.errors} ({'none' if errors_ok else 'SOME'})\n- compliance records of the"
        f" bench key grew by {records_grown} for {total.answered} answers ({'equal' if equal else 'MISMATCH'})\n"
        f"- memory: {'flat' if flat else 'GREW'} (no tree's private memory more than {FLAT:.0%}"
        f" and {megabytes(NOISE_FLOOR)} MiB above its start)\n"
        f"- demo tenant hash chain: {'intact' if chain.ok else chain.problem} ({chain.checked} records checked)"
    )
    ok = errors_ok and equal and flat and chain.ok
    print(f"\nload average at the end: {load_average()} (anything else running on the machine shows here)")
    print(f"{'all checks passed' if ok else 'SOME CHECKS FAILED'} ({time.monotonic() - started:.0f} s in all)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

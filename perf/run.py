#!/usr/bin/env python3
"""Regenerates BENCHMARKS.md: builds the tools (release), runs every benchmark scenario the
docs quote, and writes one Markdown file whose every figure comes from this one run.

    perf/run.py [--quick] [--rounds N] [--seconds S] [--output PATH] [--only NAME,...]

Scenarios (NAME for --only):
  flood     examples/flood.rs: notify, pipelined call and sequential call over each transport
            (unix, tcp, tls, stdio, ws), the same over unix in JSON-RPC 2.0 (lines and
            Content-Length framing, `--protocol jsonrpc|lsp`), the call flood with a deadline
            and a concurrency limit against the plain call flood of the same rounds, and one
            stream per client (items per second) against the notify flood of the same rounds
  tarpc     perf/tarpc_flood with its JSON and its bincode codec against `flood --mode call`,
            run one after the other in each round; ratio of the medians of the rounds
  pool      examples/pool.rs: 1 worker against 2 with a CPU-bound method, --trivial (the
            pool's own cost against one direct connection), --kill-after (a worker killed)
  prefork   examples/prefork.rs (feature axum): 1,000 GET / on fresh connections handed to two
            socket-pair HTTP workers as descriptors (share per worker, the parent's open
            descriptors before and after), and a CPU-bound route with one worker against two
  idle      examples/idle_conns.rs: the server's memory per idle connection
  roundtrip benches/roundtrip.rs (criterion): this crate against the raw tokio + serde_json
            baseline of the same run, as ratios
  probe     examples/perfprobe.rs: instructions per round trip under valgrind's callgrind (the
            difference of two sizes) and allocations per round trip (skipped, with a note in
            the output, when valgrind is missing)

Full mode (the default) runs 3 rounds of 10 s floods and writes BENCHMARKS.md at the
repository root: about 15 minutes on 2 cores. --quick runs 2 rounds of 1 s (and shorter pool,
criterion and callgrind runs) and writes target/BENCHMARKS-quick.md, for trying the script,
not for committing: about 2 minutes on 2 cores, under 3 even on a loaded machine. --only
writes target/BENCHMARKS-only.md. These times leave out the build, which comes first: cargo
build --release of the examples (with and without feature axum), cargo bench --no-run, and
perf/tarpc_flood's own build. When nothing changed it takes seconds; after a change to src/
it takes as long as two release builds of the crate (minutes on 2 cores).

Rounds interleave: each round runs every scenario once, so a slow stretch of a shared machine
lands on all of them, and the figures are medians over the rounds. A run that fails or loses
messages is shown as such in its table; the script then exits 1. The tools' logs go to a
temporary directory, removed at the end unless a run failed (its path is printed). Every
process the script starts is ended when it ends, also on Ctrl-C or SIGTERM. Needs python3 (no
packages), cargo, git, and valgrind for the probe scenario.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARPC_MANIFEST = ROOT / "perf" / "tarpc_flood" / "Cargo.toml"
SCENARIOS = ["flood", "tarpc", "pool", "prefork", "idle", "roundtrip", "probe"]

FULL = {
    "rounds": 3,
    "seconds": 10,
    "pool_seconds": 8,
    "kill_seconds": 10,
    "kill_after": 3,
    "trivial_seconds": 5,
    "prefork_requests": 1000,
    "prefork_cpu_requests": 400,
    "idle_connections": [1000, 10000],
    "settle_ms": 1000,
    "criterion": [],
    "callgrind_n": (10240, 20480),
    "alloc_n": 20480,
}
QUICK = {
    "rounds": 2,
    "seconds": 1,
    "pool_seconds": 2,
    "kill_seconds": 3,
    "kill_after": 1,
    "trivial_seconds": 1,
    "prefork_requests": 300,
    "prefork_cpu_requests": 60,
    "idle_connections": [1000],
    "settle_ms": 300,
    "criterion": ["--warm-up-time", "0.5", "--measurement-time", "1"],
    "callgrind_n": (5120, 10240),
    "alloc_n": 20480,
}

# Flood rows: (transport, mode label, flags). stdio runs one client: each stdio client starts
# its own server process, so one client is one server as with the other transports' one
# server (see examples/flood.rs).
FLOOD_MODES = [
    ("notify", ["--mode", "notify"]),
    ("call", ["--mode", "call", "--inflight", "256"]),
    ("sequential", ["--mode", "call", "--clients", "1", "--inflight", "1"]),
]
TRANSPORTS = ["unix", "tcp", "tls", "stdio", "ws"]
# The JSON-RPC 2.0 codecs (`flood --protocol`), over unix, each mode: rows beside v1's.
PROTOCOLS = ["jsonrpc", "lsp"]
LIMITS = ["--timeout-ms", "1000", "--concurrency", "64"]
STREAM = ["--mode", "stream"]
TARPC_CODECS = ["json", "bincode"]


class Failed(Exception):
    """A tool that failed, timed out or printed no result."""


class Stop(Exception):
    """A signal asked the script to stop."""


# ------------------------------------------------------------------------------------------
# Processes: every one the script starts is its own process group, ended at the end.

RUNNING = {}


def on_signal(signum, _frame):
    raise Stop(signal.Signals(signum).name)


def end_group(proc):
    """Ends a tool and whatever it started (its process group): SIGTERM, then SIGKILL for
    whatever is left 2 s later. After a tool's normal exit this only sweeps up leftovers."""
    if not signal_group(proc, signal.SIGTERM):
        return
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        proc.poll()  # reaps the leader once it exits, so the group can empty
        if not signal_group(proc, 0):
            return
        time.sleep(0.05)
    signal_group(proc, signal.SIGKILL)
    proc.wait()


def signal_group(proc, sig):
    """Sends `sig` to the tool's process group; False when the group is gone."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return False
    return True


def end_all():
    for proc in list(RUNNING.values()):
        end_group(proc)
    RUNNING.clear()


def run(argv, log, timeout, env=None, cwd=ROOT):
    """Runs argv with stderr to `log`; returns its stdout. Fails on a non-zero exit."""
    with open(log, "ab") as err:
        err.write(f"$ {shlex.join(map(str, argv))}\n".encode())
        err.flush()
        proc = subprocess.Popen(
            [str(a) for a in argv],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
        )
        RUNNING[proc.pid] = proc
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Failed(f"timed out after {timeout} s (log: {Path(log).name})")
        finally:
            RUNNING.pop(proc.pid, None)
            end_group(proc)
    if proc.returncode != 0:
        raise Failed(f"exit status {proc.returncode} (log: {Path(log).name})")
    return out.decode(errors="replace")


def json_line(out, log):
    """The tool's result: the last line of its stdout that is a JSON object."""
    for line in reversed(out.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise Failed(f"no JSON result line (log: {Path(log).name})")


# ------------------------------------------------------------------------------------------
# The build: binaries are copied out of target/ so builds with and without a feature cannot
# replace one another's.


def build(tmp, log, need):
    bins = tmp / "bin"
    bins.mkdir()
    jobs = os.environ.get("CARGO_BUILD_JOBS", "2")
    env = dict(os.environ, CARGO_BUILD_JOBS=jobs)
    paths = {}

    def cargo(args, timeout=3600):
        out = run(["cargo", *args, "--message-format=json-render-diagnostics"], log, timeout, env)
        executables = {}
        for line in out.splitlines():
            if not line.startswith("{"):
                continue
            msg = json.loads(line)
            if msg.get("reason") == "compiler-artifact" and msg.get("executable"):
                executables[msg["target"]["name"]] = msg["executable"]
        return executables

    examples = ["flood", "flood_server", "idle_conns", "pool", "perfprobe"]
    built = cargo(["build", "--release"] + [a for e in examples for a in ("--example", e)])
    for name in examples:
        shutil.copy2(built[name], bins / name)
        paths[name] = bins / name
    if "flood" in need:
        axum = tmp / "bin-axum"
        axum.mkdir()
        built = cargo(["build", "--release", "--features", "axum", "--example", "flood"])
        shutil.copy2(built["flood"], axum / "flood")
        paths["flood_axum"] = axum / "flood"
    if "prefork" in need:
        built = cargo(["build", "--release", "--features", "axum", "--example", "prefork"])
        shutil.copy2(built["prefork"], bins / "prefork")
        paths["prefork"] = bins / "prefork"
    if "tarpc" in need:
        built = cargo(["build", "--release", "--manifest-path", str(TARPC_MANIFEST)])
        paths["tarpc_flood"] = Path(built["tarpc_flood"])
    if "roundtrip" in need:
        cargo(["bench", "--bench", "roundtrip", "--no-run"])
    return paths


# ------------------------------------------------------------------------------------------
# Scenarios: each records its rounds in `results[key]` as a list of dicts, or a failure.


class Results:
    def __init__(self):
        self.rounds = {}
        self.failures = {}

    def add(self, key, value):
        self.rounds.setdefault(key, []).append(value)

    def fail(self, key, reason):
        self.failures.setdefault(key, []).append(reason)

    def get(self, key):
        return self.rounds.get(key, [])


def attempt(results, key, fn):
    try:
        value = fn()
    except Failed as e:
        print(f"  {' '.join(map(str, key))}: FAILED: {e}", file=sys.stderr)
        results.fail(key, str(e))
        return None
    results.add(key, value)
    return value


def flood_flags(transport, flags, seconds):
    clients = [] if "--clients" in flags else ["--clients", "1" if transport == "stdio" else "2"]
    return ["--transport", transport, *flags, *clients, "--seconds", str(seconds)]


def flood_round(ctx, results, r):
    for transport in TRANSPORTS:
        binary = ctx.paths["flood_axum" if transport == "ws" else "flood"]
        for mode, flags in FLOOD_MODES:
            args = flood_flags(transport, flags, ctx.seconds)
            key = ("flood", transport, mode)
            ctx.flood_args[key] = args
            log = ctx.logs / f"flood.{transport}.{mode}.{r}.log"
            tool = lambda: json_line(run([binary, *args], log, ctx.seconds + 90), log)
            value = attempt(results, key, tool)
            report(key, value, "msgs_per_s")
            if (transport, mode) == ("unix", "notify"):
                # The stream flood goes right after the notify flood it is compared with.
                args = flood_flags("unix", STREAM, ctx.seconds)
                key = ("flood", "unix", "stream")
                ctx.flood_args[key] = args
                log = ctx.logs / f"flood.unix.stream.{r}.log"
                tool = lambda: json_line(run([binary, *args], log, ctx.seconds + 90), log)
                report(key, attempt(results, key, tool), "items_per_s")
            if (transport, mode) == ("unix", "call"):
                # The limits and tarpc runs go right after the plain call flood they are
                # compared with.
                args = flood_flags("unix", FLOOD_MODES[1][1] + LIMITS, ctx.seconds)
                key = ("flood", "unix", "call+limits")
                ctx.flood_args[key] = args
                log = ctx.logs / f"flood.unix.limits.{r}.log"
                tool = lambda: json_line(run([binary, *args], log, ctx.seconds + 90), log)
                report(key, attempt(results, key, tool), "msgs_per_s")
                if "tarpc" in ctx.only:
                    tarpc_round(ctx, results, r)
        if transport == "unix":
            for protocol in PROTOCOLS:
                for mode, flags in FLOOD_MODES:
                    args = flood_flags("unix", [*flags, "--protocol", protocol], ctx.seconds)
                    key = ("flood", f"unix {protocol}", mode)
                    ctx.flood_args[key] = args
                    log = ctx.logs / f"flood.unix.{protocol}.{mode}.{r}.log"
                    tool = lambda: json_line(run([binary, *args], log, ctx.seconds + 90), log)
                    report(key, attempt(results, key, tool), "msgs_per_s")


def tarpc_args(codec, seconds):
    return ["--codec", codec, "--clients", "2", "--inflight", "256", "--seconds", str(seconds)]


def tarpc_round(ctx, results, r):
    for codec in TARPC_CODECS:
        key = ("tarpc", codec)
        log = ctx.logs / f"tarpc.{codec}.{r}.log"
        argv = [ctx.paths["tarpc_flood"], *tarpc_args(codec, ctx.seconds)]
        report(key, attempt(results, key, lambda: json_line(run(argv, log, ctx.seconds + 90), log)), "msgs_per_s")


def pool_runs(ctx):
    m = ctx.mode
    return [
        ("workers1", ["--workers", "1", "--seconds", str(m["pool_seconds"])]),
        ("workers2", ["--workers", "2", "--seconds", str(m["pool_seconds"])]),
        ("trivial", ["--workers", "1", "--seconds", str(m["trivial_seconds"]), "--trivial"]),
        (
            "kill",
            ["--workers", "2", "--seconds", str(m["kill_seconds"]), "--kill-after", str(m["kill_after"])],
        ),
    ]


def pool_round(ctx, results, r):
    for name, args in pool_runs(ctx):
        key = ("pool", name)
        log = ctx.logs / f"pool.{name}.{r}.log"
        argv = [ctx.paths["pool"], *args]
        timeout = 2 * int(args[args.index("--seconds") + 1]) + 90
        report(key, attempt(results, key, lambda: json_line(run(argv, log, timeout), log)), "calls_per_s")


# The CPU-bound route's `?work=K`: primes below K counted per request (a few ms each).
PREFORK_WORK = "60000"


def prefork_runs(ctx):
    m = ctx.mode
    fresh, cpu = str(m["prefork_requests"]), str(m["prefork_cpu_requests"])
    return [
        ("fresh", ["--workers", "2", "--requests", fresh, "--concurrency", "8"]),
        ("cpu1", ["--workers", "1", "--requests", cpu, "--concurrency", "8", "--work", PREFORK_WORK]),
        ("cpu2", ["--workers", "2", "--requests", cpu, "--concurrency", "8", "--work", PREFORK_WORK]),
    ]


def prefork_round(ctx, results, r):
    for name, args in prefork_runs(ctx):
        key = ("prefork", name)
        log = ctx.logs / f"prefork.{name}.{r}.log"
        argv = [ctx.paths["prefork"], *args]
        report(key, attempt(results, key, lambda: json_line(run(argv, log, 180), log)), "requests_per_s")


def idle_round(ctx, results, r):
    for n in ctx.mode["idle_connections"]:
        key = ("idle", n)
        log = ctx.logs / f"idle.{n}.{r}.log"
        argv = [ctx.paths["idle_conns"], *idle_args(ctx, n)]
        report(key, attempt(results, key, lambda: json_line(run(argv, log, 300), log)), "per_idle_conn_kb")


def idle_args(ctx, n):
    return ["--connections", str(n), "--settle-ms", str(ctx.mode["settle_ms"])]


ROUNDTRIP_LINE = re.compile(
    r"^\s*(\w+)\s+diarrhoea\s+([\d.]+)/s\s+([\d.]+) us\s+raw\s+([\d.]+)/s\s+([\d.]+) us\s+ratio ([\d.]+)"
)
ROUNDTRIP_BENCHES = ["notify", "call_pipelined", "call_sequential"]


def roundtrip_round(ctx, results, r):
    log = ctx.logs / f"roundtrip.{r}.log"
    # CRITERION_HOME in the temporary directory: no saved baseline from an earlier run.
    env = dict(os.environ, CRITERION_HOME=str(ctx.tmp / "criterion"))
    argv = ["cargo", "bench", "--bench", "roundtrip", "--", *ctx.mode["criterion"]]

    def bench():
        out = run(argv, log, 1200, env)
        figures = {}
        for line in out.splitlines():
            m = ROUNDTRIP_LINE.match(line)
            if m:
                figures[m.group(1)] = {
                    "ours_per_s": float(m.group(2)),
                    "ours_us": float(m.group(3)),
                    "raw_per_s": float(m.group(4)),
                    "raw_us": float(m.group(5)),
                    "ratio": float(m.group(6)),
                }
        if set(figures) != set(ROUNDTRIP_BENCHES):
            raise Failed(f"the bench's summary lines are missing (log: {Path(log).name})")
        return figures

    value = attempt(results, ("roundtrip",), bench)
    if value:
        print("  roundtrip: " + ", ".join(f"{k} {v['ratio']:.2f}" for k, v in value.items()), file=sys.stderr)


SUMMARY_LINE = re.compile(r"^summary:\s*(\d+)", re.M)
# `seq-route` and `seq-typed`: one call at a time to a hand-written route and through a typed
# service's client, with the same arguments: what `#[diarrhoea::service]` costs.
PROBE_MODES = ["notify", "call", "seq", "seq-route", "seq-typed"]


def probe_once(ctx, results):
    """Instructions (callgrind, two sizes) and allocations per round trip, once: both counts
    are repeatable, so rounds would only cost time."""
    small, large = ctx.mode["callgrind_n"]
    for mode in PROBE_MODES:
        key = ("probe", mode)

        def measure():
            log = ctx.logs / f"probe.{mode}.log"
            alloc = json_line(run([ctx.paths["perfprobe"], "--mode", mode, "--n", str(ctx.mode["alloc_n"])], log, 120), log)
            value = {"allocs_per_rt": alloc["allocs_per_rt"], "bytes_per_rt": alloc["bytes_allocated_per_rt"]}
            if ctx.valgrind:
                totals = {}
                for n in (small, large):
                    out_file = ctx.tmp / f"cg.{mode}.{n}"
                    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}",
                            ctx.paths["perfprobe"], "--mode", mode, "--n", str(n)]
                    run(argv, log, 900)
                    m = SUMMARY_LINE.search(out_file.read_text())
                    if not m:
                        raise Failed(f"no summary line in callgrind's output (log: {Path(log).name})")
                    totals[n] = int(m.group(1))
                value["instructions_per_rt"] = (totals[large] - totals[small]) / (large - small)
                value["totals"] = totals
            return value

        value = attempt(results, key, measure)
        if value:
            print(f"  probe {mode}: {value.get('instructions_per_rt', '-')} instructions, {value['allocs_per_rt']} allocations", file=sys.stderr)


def report(key, value, field):
    if value is not None:
        print(f"  {' '.join(map(str, key))}: {value.get(field)}", file=sys.stderr)


# ------------------------------------------------------------------------------------------
# The output.


def rate(x):
    """A rate with three significant figures: 715k, 82.6k, 9.41k."""
    if x is None:
        return "-"
    for div, unit in ((1e6, "M"), (1e3, "k")):
        if x >= div:
            v = x / div
            digits = 0 if v >= 100 else 1 if v >= 10 else 2
            return f"{v:.{digits}f}{unit}"
    return f"{x:.0f}"


def num(x, digits=0):
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def lat(x):
    """A latency: one decimal below 100, whole numbers above."""
    return "-" if x is None else num(x, 1 if x < 100 else 0)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def rounds_list(values, fmt=rate):
    return " / ".join(fmt(v) for v in values)


def failed_note(results, key):
    reasons = results.failures.get(key)
    return f" **failed {len(reasons)}x**: {reasons[0]}" if reasons else ""


def code(args):
    return "`" + shlex.join(args) + "`"


def section_flood(ctx, results, out):
    out.append("## Floods over each transport\n")
    out.append(
        "One server process and N client processes (`examples/flood.rs`), each on a current-thread "
        "tokio runtime. `notify`: `ping` notifications answered by `pong`, at most 1024 "
        "unanswered per client; `call`: `echo` calls, 256 in flight per client; `sequential`: "
        "one client, one call at a time. Rate: round trips (notify) or calls completed per "
        "second over all clients while flooding, the median of the rounds (then each round's); "
        "p50/p99: round-trip latency, the median of the rounds; lost: summed over "
        "the rounds; server RSS: the server's peak (`VmHWM`), the median of the rounds. "
        "`stdio` runs one client, since each stdio client starts a server process of its own. "
        "`unix jsonrpc` and `unix lsp` are the same floods in JSON-RPC 2.0 (`--protocol`: one "
        "object per line, or `Content-Length` framing), both sides speaking it. "
        "Each row ran:\n"
    )
    out.append("```sh\ncargo run --release [--features axum] --example flood -- FLAGS   # --features axum for ws only\n```\n")
    out.append("| transport | mode | FLAGS | per second | rounds | p50 / p99 µs | lost | server RSS |")
    out.append("| --- | --- | --- | ---: | --- | ---: | ---: | ---: |")
    for transport in TRANSPORTS:
        for mode, _ in FLOOD_MODES:
            key = ("flood", transport, mode)
            out.append(flood_row(ctx, results, key, transport, mode))
        if transport == "unix":
            for protocol in PROTOCOLS:
                for mode, _ in FLOOD_MODES:
                    key = ("flood", f"unix {protocol}", mode)
                    out.append(flood_row(ctx, results, key, f"unix {protocol}", mode))
    out.append("")
    out.append("### With a deadline and a concurrency limit\n")
    out.append(
        "The call flood with the server's router behind a tower `Timeout` and a per-connection "
        "`ConcurrencyLimit` (`flood`'s limit flags), run right after the plain call flood in each round; the ratio is "
        "the median of the limited rounds over the median of the plain ones.\n"
    )
    out.append("| run | FLAGS | calls per second | rounds | p50 / p99 µs | lost | ratio to plain |")
    out.append("| --- | --- | ---: | --- | ---: | ---: | ---: |")
    plain, limited = ("flood", "unix", "call"), ("flood", "unix", "call+limits")
    ratio = ratio_of_medians(results.get(limited), results.get(plain), "msgs_per_s")
    for label, key, ratio in [("plain", plain, "-"), ("limits", limited, bold(ratio, 2))]:
        c = flood_cells(results, key)
        out.append(f"| {label} | {code(ctx.flood_args.get(key, []))} | {c['rate']} | {c['rounds']} | "
                   f"{c['latency']} | {c['lost']} | {ratio} |")
    out.append("")
    section_stream(ctx, results, out)


def section_stream(ctx, results, out):
    out.append("### A stream against notifications\n")
    out.append(
        "`flood --mode stream`: each client opens one stream (`count(n)`, an `n` it never "
        "reaches, the default credit window of 256 items) and takes its items as fast as they "
        "come; the rate is items taken per second over all clients. Run right after the unix "
        "`notify` flood in each round; the ratio is the median of the stream's items per "
        "second over the median of the notify flood's round trips per second (the "
        "target: at least 0.8). A stream has no round trip, so no latency.\n"
    )
    out.append("| run | FLAGS | per second | rounds | lost | server RSS | ratio to notify |")
    out.append("| --- | --- | ---: | --- | ---: | ---: | ---: |")
    notify, stream = ("flood", "unix", "notify"), ("flood", "unix", "stream")
    ratio = ratio_of_fields(results.get(stream), "items_per_s", results.get(notify), "msgs_per_s")
    for label, key, field, ratio in [("notify", notify, "msgs_per_s", "-"),
                                     ("stream", stream, "items_per_s", bold(ratio, 2))]:
        c = flood_cells(results, key, field)
        out.append(f"| {label} | {code(ctx.flood_args.get(key, []))} | {c['rate']} | {c['rounds']} | "
                   f"{c['lost']} | {c['rss']} | {ratio} |")
    out.append("")


def flood_row(ctx, results, key, transport, mode):
    c = flood_cells(results, key)
    return (f"| {transport} | {mode} | {code(ctx.flood_args.get(key, []))} | {c['rate']} | {c['rounds']} | "
            f"{c['latency']} | {c['lost']} | {c['rss']} |")


def flood_cells(results, key, field="msgs_per_s"):
    """The cells of a flood (or tarpc) row: median rate, each round's, latency, lost, RSS."""
    runs = results.get(key)
    rates = [r[field] for r in runs]
    rss = median([r["server_rss_kb"] for r in runs])
    return {
        "rate": num(median(rates)) + failed_note(results, key),
        "rounds": rounds_list(rates),
        "latency": f"{lat(median([r['p50_us'] for r in runs]))} / {lat(median([r['p99_us'] for r in runs]))}",
        "lost": num(sum(r["lost"] for r in runs)) if runs else "-",
        "rss": f"{num(rss / 1024, 1)} MiB" if rss is not None else "-",
    }


def bold(x, digits, suffix=""):
    return f"**{x:.{digits}f}{suffix}**" if x else "-"


def ratio_of_medians(runs, base, field):
    return ratio_of_fields(runs, field, base, field)


def ratio_of_fields(runs, field, base, base_field):
    a = median([r[field] for r in runs])
    b = median([r[base_field] for r in base])
    return a / b if a and b else None


def section_tarpc(ctx, results, out):
    out.append("## Against tarpc\n")
    out.append(
        "`perf/tarpc_flood` is `flood --mode call` rebuilt on tarpc (its serde transport: "
        "length-delimited frames of JSON or bincode), a crate of its own with its own "
        "`Cargo.lock`. Same load: one server process and 2 client processes over a Unix socket, "
        "256 `echo(x, seq)` calls in flight per client, `x` 10 bytes. In each round the three "
        "runs go one after the other; the ratio is the median of this crate's rounds over the "
        "median of tarpc's.\n"
    )
    out.append("```sh")
    out.append("cargo run --release --example flood -- " + shlex.join(ctx.flood_args.get(("flood", "unix", "call"), [])))
    for codec in TARPC_CODECS:
        out.append("cargo run --release --manifest-path perf/tarpc_flood/Cargo.toml -- " + shlex.join(tarpc_args(codec, ctx.seconds)))
    out.append("```\n")
    ours = results.get(("flood", "unix", "call"))
    out.append("| implementation | calls per second | rounds | p50 / p99 µs | lost | diarrhoea / this |")
    out.append("| --- | ---: | --- | ---: | ---: | ---: |")
    rows = [("diarrhoea (`flood --mode call`)", ("flood", "unix", "call"))]
    rows += [(f"tarpc {ctx.tarpc_version}, {codec} codec", ("tarpc", codec)) for codec in TARPC_CODECS]
    for label, key in rows:
        c = flood_cells(results, key)
        ratio = "-" if key[0] == "flood" else bold(ratio_of_medians(ours, results.get(key), "msgs_per_s"), 2, "x")
        out.append(f"| {label} | {c['rate']} | {c['rounds']} | {c['latency']} | {c['lost']} | {ratio} |")
    out.append("")


def section_pool(ctx, results, out):
    out.append("## Pool of worker processes\n")
    out.append(
        "`examples/pool.rs`: the program starts N copies of itself as workers (stdin/stdout, "
        "one single-threaded runtime each) behind a `Pool`, and keeps 256 calls in flight. "
        f"`count_primes(20000)` is CPU-bound trial division; `--trivial` floods `noop()` "
        "through the pool after flooding worker 0 over its one connection directly for the same "
        "time; `--kill-after` `SIGKILL`s worker 0 that many seconds in. Medians of the rounds; "
        "in each round the runs go one after the other in this order.\n"
    )
    out.append("```sh")
    for _, args in pool_runs(ctx):
        out.append("cargo run --release --example pool -- " + shlex.join(args))
    out.append("```\n")
    out.append("| run | calls per second | rounds | p50 / p99 ms | share per worker | other |")
    out.append("| --- | ---: | --- | ---: | --- | --- |")
    w1, w2 = results.get(("pool", "workers1")), results.get(("pool", "workers2"))
    for name, args in pool_runs(ctx):
        key = ("pool", name)
        runs = results.get(key)
        rates = [r["calls_per_s"] for r in runs]
        p50 = median([r["p50_us"] for r in runs])
        p99 = median([r["p99_us"] for r in runs])
        latency = f"{lat(p50 / 1000 if p50 else None)} / {lat(p99 / 1000 if p99 else None)}"
        shares = []
        for r in runs:
            total = sum(r["per_worker"]) or 1
            shares.append(" / ".join(f"{100 * w / total:.0f}%" for w in r["per_worker"]))
        lost = sum(r["lost"] for r in runs)
        failed = sum(r["failed"] for r in runs)
        other = f"lost {lost}, failed {failed}"
        if name == "workers2":
            ratio = ratio_of_medians(w2, w1, "calls_per_s")
            other += f"; **{ratio:.2f}x** one worker" if ratio else ""
        if name == "trivial":
            direct = [r.get("direct_calls_per_s") for r in runs]
            cost = [1 - r["calls_per_s"] / r["direct_calls_per_s"] for r in runs if r.get("direct_calls_per_s")]
            other += (f"; direct connection {num(median(direct))} calls/s ({rounds_list(direct)}); "
                      f"the pool costs **{100 * median(cost):.1f}%** of the direct rate "
                      f"({' / '.join(f'{100 * c:.1f}%' for c in cost)})") if cost else ""
        if name == "kill":
            restarts = [r["restarts"] for r in runs]
            retried = [r["retried"] for r in runs]
            rejoin = [r["rejoin_ms"] for r in runs]
            other += (f"; restarts {rounds_list(restarts, str)}, retried {rounds_list(retried, str)}, "
                      f"`rejoin_ms` {num(median(rejoin))} ({rounds_list(rejoin, num)})")
        out.append(f"| {code(args)} | {num(median(rates))}{failed_note(results, key)} | {rounds_list(rates)} | "
                   f"{latency} | {'; '.join(shares) or '-'} | {other} |")
    out.append("")
    out.append(
        "`rejoin_ms`: from the `SIGKILL` to the first call the restarted worker answered. "
        "Share per worker: each round's calls completed by each worker.\n"
    )


def section_prefork(ctx, results, out):
    out.append("## Prefork HTTP: connections handed to workers as descriptors\n")
    out.append(
        "`examples/prefork.rs`: the parent accepts TCP connections on loopback and hands each, as "
        "an open descriptor (`diarrhoea::Fd`, `SCM_RIGHTS`), to one of N HTTP/1.1 worker processes "
        "(hyper, one single-threaded runtime each) through a pool of socket-pair workers; the "
        "parent never reads a byte of them. The load runs in the parent process: each request on "
        f"a fresh connection, 8 at a time. `cpu1`/`cpu2` ask for `?work={PREFORK_WORK}` (primes "
        "below it counted per request). Medians of the rounds; share per worker and the parent's "
        "open descriptors (`/proc/self/fd`) before and after each run.\n"
    )
    out.append("```sh")
    for _, args in prefork_runs(ctx):
        out.append("cargo run --release --features axum --example prefork -- " + shlex.join(args))
    out.append("```\n")
    out.append("| run | requests per second | rounds | ok / failed | share per worker | parent descriptors before -> after | other |")
    out.append("| --- | ---: | --- | --- | --- | --- | --- |")
    one, two = results.get(("prefork", "cpu1")), results.get(("prefork", "cpu2"))
    for name, args in prefork_runs(ctx):
        key = ("prefork", name)
        runs = results.get(key)
        rates = [r["requests_per_s"] for r in runs]
        ok = " / ".join(f"{r['ok']}/{r['failed']}" for r in runs)
        shares = []
        for r in runs:
            total = sum(r["per_worker"].values()) or 1
            shares.append(" / ".join(f"{100 * n / total:.0f}%" for n in r["per_worker"].values()))
        fds = "; ".join(f"{r['parent_fds_before']} -> {r['parent_fds_after']}" for r in runs)
        other = ""
        if name == "cpu2":
            ratio = ratio_of_medians(two, one, "requests_per_s")
            other = f"**{ratio:.2f}x** one worker" if ratio else ""
        out.append(f"| {code(args)} | {num(median(rates))}{failed_note(results, key)} | {rounds_list(rates)} | "
                   f"{ok or '-'} | {'; '.join(shares) or '-'} | {fds or '-'} | {other} |")
    out.append("")


def section_idle(ctx, results, out):
    out.append("## Memory per idle connection\n")
    out.append(
        "`examples/idle_conns.rs` starts the release `flood_server` with `--max-connections N`, "
        "opens N Unix-socket connections, and reads the server's `VmRSS` before any "
        "connection, with the N connections idle, and after one `echo` call on each; each "
        "reading after the settle time of quiet. Per connection: the growth divided by N. "
        "Medians of the rounds.\n"
    )
    out.append("```sh\ncargo build --release --example flood_server --example idle_conns")
    for n in ctx.mode["idle_connections"]:
        out.append("target/release/examples/idle_conns " + shlex.join(idle_args(ctx, n)))
    out.append("```\n")
    out.append("| connections | RSS before | idle | after one call each | per idle connection | rounds | per connection after a call |")
    out.append("| ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for n in ctx.mode["idle_connections"]:
        key = ("idle", n)
        runs = results.get(key)
        col = lambda f: median([r[f] for r in runs])
        per = [r["per_idle_conn_kb"] for r in runs]
        out.append(f"| {num(n)} | {num(col('rss_before_kb'))} KiB | {num(col('rss_idle_kb'))} KiB | "
                   f"{num(col('rss_after_call_kb'))} KiB | **{num(median(per), 2)} KiB**{failed_note(results, key)} | "
                   f"{rounds_list(per, lambda v: num(v, 2))} | {num(col('per_conn_after_call_kb'), 2)} KiB |")
    out.append("")


def section_roundtrip(ctx, results, out):
    out.append("## In one process, against a raw baseline\n")
    out.append(
        "`benches/roundtrip.rs` (criterion): both ends of a socket pair on one current-thread "
        "runtime, this crate (`Connection::builder().pair(..)`) and a raw baseline over "
        "`UnixStream::pair()` (plain tokio + serde_json: the same lines byte for byte, the "
        "same tasks and windows; see the bench's docs). Each run measures both; its figure is "
        "the median over criterion's measured samples (warm-up left out), and the ratio is the "
        "baseline's time over ours (1.00: as fast as the baseline). The table gives the median "
        "over the runs of each column, and each run's ratio.\n"
    )
    out.append("```sh\ncargo bench --bench roundtrip" + (" -- " + shlex.join(ctx.mode["criterion"]) if ctx.mode["criterion"] else "") + "\n```\n")
    runs = results.get(("roundtrip",))
    out.append("| benchmark | diarrhoea | raw baseline | ratio | runs |")
    out.append("| --- | ---: | ---: | ---: | --- |")
    for bench in ROUNDTRIP_BENCHES:
        rows = [r[bench] for r in runs]
        col = lambda f: median([r[f] for r in rows])
        note = failed_note(results, ("roundtrip",))
        if bench == "call_sequential":
            ours, raw = f"{num(col('ours_us'), 2)} µs per call", f"{num(col('raw_us'), 2)} µs"
        else:
            ours, raw = f"{rate(col('ours_per_s'))}/s ({num(col('ours_us'), 2)} µs)", f"{rate(col('raw_per_s'))}/s ({num(col('raw_us'), 2)} µs)"
        ratio = col("ratio")
        out.append(f"| {bench} | {ours}{note} | {raw} | **{num(ratio, 2)}** | "
                   f"{rounds_list([r['ratio'] for r in rows], lambda v: num(v, 2))} |")
    out.append("")


def section_probe(ctx, results, out):
    small, large = ctx.mode["callgrind_n"]
    out.append("## Cost per round trip\n")
    out.append(
        "`examples/perfprobe.rs`: N round trips of one kind in one process, both ends over a "
        "socket pair. Instructions (both ends) under valgrind's callgrind: "
        f"(the `summary:` of the {large}-round-trip run - that of the {small}-round-trip run) / "
        f"{large - small}, so the start-up cost cancels. Allocations: counted by the probe's "
        f"global allocator over {ctx.mode['alloc_n']} round trips, outside valgrind. `notify`: "
        "ping -> pong, 1024 unanswered; `call`: echo, 256 tasks with one call each; `seq`: "
        "echo, one call at a time; `seq-route`: `conn.call(\"twice_route\", (x, i))` to a "
        "hand-written route `|x: String, i: u64|`, one at a time; `seq-typed`: the same "
        "through a `#[diarrhoea::service]` trait's client and `into_router()` (the typed "
        "service's cost is the difference between these two rows). Both counts repeat from "
        "run to run (code placement moves instructions by a few dozen), so each is measured "
        "once.\n"
    )
    out.append("```sh\ncargo build --release --example perfprobe")
    out.append(f"target/release/examples/perfprobe --mode MODE --n {ctx.mode['alloc_n']}")
    out.append(f"for n in {small} {large}; do")
    out.append("  valgrind --tool=callgrind --callgrind-out-file=cg.$n target/release/examples/perfprobe --mode MODE --n $n")
    out.append("done\n```\n")
    if not ctx.valgrind:
        out.append("**Instructions skipped: `valgrind` was not found on this machine.**\n")
    out.append(f"| mode | instructions per round trip | callgrind totals ({small} / {large}) | allocations per round trip | bytes allocated per round trip |")
    out.append("| --- | ---: | ---: | ---: | ---: |")
    for mode in PROBE_MODES:
        key = ("probe", mode)
        runs = results.get(key)
        v = runs[0] if runs else {}
        totals = v.get("totals", {})
        instructions = v.get("instructions_per_rt")
        out.append(f"| `{mode}` | {f'**{num(instructions)}**' if instructions else '-'}{failed_note(results, key)} | "
                   f"{num(totals.get(small))} / {num(totals.get(large))} | "
                   f"{num(v.get('allocs_per_rt'), 2)} | {num(v.get('bytes_per_rt'))} |")
    out.append("")


# ------------------------------------------------------------------------------------------
# The run.


class Context:
    pass


def capture(argv, cwd=ROOT):
    try:
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def lock_version(lock, name):
    try:
        text = Path(lock).read_text()
    except OSError:
        return "?"
    m = re.search(rf'name = "{re.escape(name)}"\nversion = "([^"]+)"', text)
    return m.group(1) if m else "?"


def machine():
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = "?"
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, AttributeError):
        pass
    return f"{cores} cores, {model}, {mem} of memory, {platform.system()} {platform.release()} {platform.machine()}"


def loadavg():
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1].split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="short runs (under 3 minutes on 2 cores, build not counted)")
    parser.add_argument("--rounds", type=int, help="rounds of every scenario (full: 3, quick: 2)")
    parser.add_argument("--seconds", type=int, help="seconds per flood and tarpc run (full: 10, quick: 1)")
    parser.add_argument(
        "--output",
        help="where to write (default: BENCHMARKS.md; with --quick target/BENCHMARKS-quick.md, "
        "with --only target/BENCHMARKS-only.md)",
    )
    parser.add_argument("--only", help="comma-separated scenarios to run (default: all): " + ",".join(SCENARIOS))
    opts = parser.parse_args()

    mode = dict(QUICK if opts.quick else FULL)
    if opts.rounds is not None:
        if opts.rounds < 1:
            parser.error("--rounds must be at least 1")
        mode["rounds"] = opts.rounds
    if opts.seconds is not None:
        if opts.seconds < 1:
            parser.error("--seconds must be at least 1")
        mode["seconds"] = opts.seconds
    only = opts.only.split(",") if opts.only else list(SCENARIOS)
    for name in only:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
    # Only a full run of every scenario replaces BENCHMARKS.md unless told otherwise.
    default = "target/BENCHMARKS-quick.md" if opts.quick else "target/BENCHMARKS-only.md" if opts.only else "BENCHMARKS.md"
    output = Path(opts.output) if opts.output else ROOT / default
    command = shlex.join(["perf/run.py", *sys.argv[1:]])

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    tmp = Path(tempfile.mkdtemp(prefix="diarrhoea-bench."))
    logs = tmp / "logs"
    logs.mkdir()
    keep = False
    started = time.monotonic()
    try:
        ctx = Context()
        ctx.tmp, ctx.logs, ctx.mode, ctx.only = tmp, logs, mode, only
        ctx.seconds = mode["seconds"]
        ctx.flood_args = {}
        ctx.valgrind = shutil.which("valgrind") is not None
        ctx.tarpc_version = lock_version(TARPC_MANIFEST.parent / "Cargo.lock", "tarpc")
        load_start = loadavg()
        date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

        print(f"building (release; log: {logs / 'build.log'})", file=sys.stderr)
        try:
            ctx.paths = build(tmp, logs / "build.log", only)
        except Failed as e:
            keep = True
            print(f"run.py: the build failed: {e}", file=sys.stderr)
            return 1
        built = time.monotonic()

        results = Results()
        round_loads = []
        for r in range(1, mode["rounds"] + 1):
            print(f"round {r}/{mode['rounds']}", file=sys.stderr)
            round_loads.append(loadavg().split()[0])
            if "flood" in only:
                flood_round(ctx, results, r)
            elif "tarpc" in only:
                # The tarpc rows are measured against the plain call flood.
                key = ("flood", "unix", "call")
                args = flood_flags("unix", FLOOD_MODES[1][1], ctx.seconds)
                ctx.flood_args[key] = args
                log = logs / f"flood.unix.call.{r}.log"
                report(key, attempt(results, key, lambda: json_line(run([ctx.paths["flood"], *args], log, ctx.seconds + 90), log)), "msgs_per_s")
                tarpc_round(ctx, results, r)
            if "pool" in only:
                pool_round(ctx, results, r)
            if "prefork" in only:
                prefork_round(ctx, results, r)
            if "idle" in only:
                idle_round(ctx, results, r)
            if "roundtrip" in only:
                roundtrip_round(ctx, results, r)
        if "probe" in only:
            print("probe", file=sys.stderr)
            probe_once(ctx, results)
        finished = time.monotonic()

        commit = capture(["git", "rev-parse", "--short=12", "HEAD"]) or "unknown"
        dirty = capture(["git", "status", "--porcelain", "--untracked-files=no"]) or ""
        changed = [line[3:] for line in dirty.splitlines() if line[3:] != os.path.relpath(output, ROOT)]
        lines = [
            "# Benchmarks",
            "",
            "Generated by `perf/run.py`; every figure below comes from the one run described here, "
            "and nothing is edited by hand. To regenerate this file, run from the repository root:",
            "",
            "```sh",
            command,
            "```",
            "",
            f"- Date: {date}",
            f"- Commit: {commit}" + (f" with uncommitted changes to {', '.join(changed)}" if changed else ""),
            f"- Machine: {machine()}; load average {load_start} at the start, {loadavg()} at the end "
            f"(1 minute, at the start of each round: {' / '.join(round_loads)})",
            f"- Compiler: {capture(['rustc', '--version']) or 'unknown'}; release builds; tokio "
            f"{lock_version(ROOT / 'Cargo.lock', 'tokio')}, serde_json {lock_version(ROOT / 'Cargo.lock', 'serde_json')}"
            + (f"; {capture(['valgrind', '--version'])}" if ctx.valgrind else "; valgrind not found"),
            f"- Mode: {'quick' if opts.quick else 'full'}: {mode['rounds']} rounds, floods of {mode['seconds']} s; "
            f"build {built - started:.0f} s, measurements {finished - built:.0f} s",
            "",
            "The machine may be shared: compare figures within one table, and prefer the ratios, "
            "whose two sides ran in the same rounds, to rates across tables or files.",
            "",
        ]
        sections = [
            ("flood", section_flood),
            ("tarpc", section_tarpc),
            ("pool", section_pool),
            ("prefork", section_prefork),
            ("idle", section_idle),
            ("roundtrip", section_roundtrip),
            ("probe", section_probe),
        ]
        for name, section in sections:
            if name in only:
                section(ctx, results, lines)
        lost = [k for k, runs in results.rounds.items() if any(isinstance(r, dict) and r.get("lost") for r in runs)]
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("\n".join(lines).rstrip("\n") + "\n")
        print(f"wrote {output} (build {built - started:.0f} s, measurements {finished - built:.0f} s)", file=sys.stderr)
        if results.failures or lost:
            keep = True
            for key in lost:
                print(f"run.py: {' '.join(map(str, key))} lost messages", file=sys.stderr)
            print("run.py: some runs failed or lost messages (see the tables)", file=sys.stderr)
            return 1
        return 0
    except Stop as e:
        keep = True
        print(f"run.py: stopped by {e}", file=sys.stderr)
        return 130
    finally:
        end_all()
        if keep:
            print(f"run.py: logs kept in {logs}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

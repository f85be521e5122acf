"""`python -m bench.profile [--label before]`: where the production server spends its time under
load, by py-spy.

The production server (`seqserve serve`) on the reference model (LSTM(64), 8x8) on 127.0.0.1;
the closed-loop load generator (bench/loadgen.py, its own process) keeps 32 callers busy with
one-sequence Predict requests; meanwhile `py-spy record --format raw --threads` samples the
server for `--duration` seconds. The samples are summarised as tables of the top frames by self
samples (the frame was running) and total samples (the frame was on the stack), per thread
kind (the event loop's main thread, the model's compute thread, others), and written to
`bench/results/profile_<label>.md` (`--raw FILE` keeps the raw stacks for flame graph tools).
Before recording, the same load runs 5 s without the profiler: its req/s is the reference.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench import servers
from bench.models import REFERENCE
from bench.run import RESULTS, request_bytes

TOP = 25
SITE = re.compile(r"^.*?/(site-packages|src|lib/python3\.\d+)/")


@dataclass
class Profile:
    """Samples of every stack, summarised per frame."""

    samples: int = 0
    by_thread: Counter[str] = field(default_factory=Counter)
    self_counts: Counter[str] = field(default_factory=Counter)
    total_counts: Counter[str] = field(default_factory=Counter)
    main_self: Counter[str] = field(default_factory=Counter)


def short(frame: str) -> str:
    """`fn (path/to/site-packages/pkg/mod.py:12)` -> `fn (pkg/mod.py:12)`."""
    name, _, where = frame.partition(" (")
    return f"{name} ({SITE.sub('', where)}" if where else name


# Leaf frames of a thread that waits (py-spy's idle detection misses some of them).
WAITING = ("select (selectors.py", "_worker (concurrent/futures/thread.py:81)", "wait (threading")


def thread_kind(name: str, frames: list[str]) -> str:
    """What a thread is, from its name (py-spy's `thread (tid): name` root) and its stack."""
    if name == "MainThread":
        kind = "main (event loop)"
    elif name.startswith("compute-"):
        kind = "model compute thread"
    elif "_poll_wrapper" in name:
        kind = "grpc.aio poller thread"
    elif any("serve_forever" in f for f in frames):
        kind = "metrics HTTP thread"
    else:
        kind = f"other ({name.split(' ')[0]})"
    waiting = frames[-1].startswith(WAITING) or frames[-1].startswith("EpollSelector.select")
    return kind + (", waiting" if waiting else ", busy")


def summarise(raw: str) -> Profile:
    profile = Profile()
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        name = ""
        if frames and frames[0].startswith("thread ("):
            name = frames.pop(0).partition(": ")[2]
        if not frames:
            continue
        frames = [short(f) for f in frames]
        kind = thread_kind(name, frames)
        profile.samples += count
        profile.by_thread[kind] += count
        profile.self_counts[frames[-1]] += count
        if kind.startswith("main"):
            profile.main_self[frames[-1]] += count
        for frame in set(frames):
            profile.total_counts[frame] += count
    return profile


def render(
    profile: Profile,
    label: str,
    loads: tuple[dict, dict],
    seconds: float,
    rate: int,
    native: bool = False,
    seqs: int = 1,
) -> str:
    plain, load = loads
    flag = "--native" if native else "--nonblocking"
    pauses = "py-spy pauses the server per sample" if native else "py-spy does not pause the server"
    n = max(profile.samples, 1)
    main = max(sum(c for k, c in profile.by_thread.items() if k.startswith("main")), 1)
    out = [
        f"# Server profile under load: {label}",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')} · `python -m bench.profile --label {label}` · "
        f"py-spy {rate} Hz for {seconds:g} s (`--format raw --threads {flag}`) · "
        f"reference model {REFERENCE.name}, {seqs} sequence(s) per request, "
        f"{load.get('concurrency', '?')} closed-loop callers: without the profiler "
        f"{plain.get('rps', 0):,.0f} req/s, p50 {plain.get('p50_ms') or 0:.2f} ms, server "
        f"{plain.get('server_cores', 0):.2f} cores; while recorded {load.get('rps', 0):,.0f} "
        f"req/s, server {load.get('server_cores', 0):.2f} cores "
        f"({pauses} and takes CPU of the same 2 cores). `Handle._run` "
        "self time is compiled code run by asyncio callbacks: grpc.aio's Cython layer and C.",
        "",
        "## Samples by thread",
        "",
        "| thread | samples | share |",
        "|---|---:|---:|",
    ]
    for kind, count in profile.by_thread.most_common():
        out.append(f"| {kind} | {count} | {count / n:.1%} |")
    out += [
        "",
        f"## Top {TOP} frames of the event loop's thread by self samples (waiting included)",
        "",
        "| frame | self | share of the loop thread |",
        "|---|---:|---:|",
    ]
    for frame, count in profile.main_self.most_common(TOP):
        out.append(f"| `{frame}` | {count} | {count / main:.1%} |")
    out += [
        "",
        f"## Top {TOP} frames by total samples (all threads: on the stack)",
        "",
        "| frame | total | share |",
        "|---|---:|---:|",
    ]
    for frame, count in profile.total_counts.most_common(TOP):
        out.append(f"| `{frame}` | {count} | {count / n:.1%} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--label", default="latest", help="results file suffix, e.g. before")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds recorded")
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--seqs", type=int, default=1, help="sequences per request")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--server-args", default="", help="extra `seqserve serve` flags")
    parser.add_argument("--raw", type=Path, help="also keep py-spy's raw stacks here")
    parser.add_argument(
        "--native", action="store_true", help="C/C++ frames too (grpc core, TF); pauses the server"
    )
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise SystemExit("py-spy is not installed (pip install -e 'server[dev]')")

    with tempfile.TemporaryDirectory(prefix="seqserve-profile-") as tmpdir:
        tmp = Path(tmpdir)
        repo = tmp / "repo"
        subprocess.run(
            [sys.executable, "-m", "bench.models", str(repo), "-", REFERENCE.name],
            check=True, timeout=180, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        server = servers.serve(repo, args.server_args.split())
        try:
            raw_path = tmp / "raw.txt"
            plain = _load(server, args, tmp, 5.0).communicate(timeout=120)[0]
            load = _record(spy, server, args, tmp, raw_path)
            raw = raw_path.read_text()
        finally:
            server.stop()
    profile = summarise(raw)
    report = render(
        profile,
        args.label,
        (_result(plain), load),
        args.duration,
        args.rate,
        args.native,
        args.seqs,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"profile_{args.label}.md").write_text(report)
    if args.raw:
        args.raw.write_text(raw)
    print(report)
    return 0


def _load(
    server: servers.Running, args: argparse.Namespace, tmp: Path, seconds: float
) -> subprocess.Popen:
    """The load generator on the server for 1 s of warm-up and `seconds` measured."""
    point = {"id": "profile", "request": request_bytes(REFERENCE, args.seqs).hex(),
             "concurrency": args.callers, "duration": seconds, "warmup": 1.0}  # fmt: skip
    spec = tmp / "load.json"
    job = {"target": server.target, "channels": 1, "server_pids": server.pids, "point": point}
    spec.write_text(json.dumps({"jobs": [job]}))
    return subprocess.Popen(
        [sys.executable, "-m", "bench.loadgen", str(spec)], stdout=subprocess.PIPE, text=True
    )


def _result(out: str) -> dict:
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def _record(spy: str, server: servers.Running, args: argparse.Namespace, tmp: Path, raw: Path):
    """Load the server for the whole recording (started 1 s before it)."""
    loadgen = _load(server, args, tmp, args.duration)
    time.sleep(1.0)
    subprocess.run(
        [spy, "record", "--pid", str(server.process.pid), "--duration", str(int(args.duration)),
         "--rate", str(args.rate), "--format", "raw", "--threads",
         *(["--native"] if args.native else ["--nonblocking"]), "--output", str(raw)],
        check=True, timeout=args.duration + 60, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    out, _ = loadgen.communicate(timeout=args.duration + 60)
    return {**_result(out), "concurrency": args.callers}


if __name__ == "__main__":
    sys.exit(main())

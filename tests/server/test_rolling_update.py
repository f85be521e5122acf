"""A rolling update and a crash under load, through the real nginx balancer (issue 23).

Two replicas share a session key and a Redis session store (`every-step`), behind nginx
configured as the compose stack's `lb` (round robin per call; Triton sequences by a consistent
hash of `seqserve-sequence-id`; the next replica when one cannot be reached). While 100
resumable SDK sessions (asyncio) and Triton sequences (`tritonclient`, each request with an
id, retrying what a replica refuses UNAVAILABLE, as a caller without a token does) step
continuously:

- rolling update: every replica in turn gets SIGTERM and is started again on its port;
- crash: one replica gets SIGKILL and is started again.

Every session's and sequence's outputs are then compared with the model run in-process on the
whole sequence (eager Keras, 1e-5): no step missing, duplicated or wrong. `make rolling-update`
runs this file and prints the figures (also written to bench/results/rolling_update.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import pytest

from seqserve_client import AsyncSeqServeClient
from tests.support import redis_server
from tests.support.server_process import ServerProcess, free_port, start_server

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MODEL = "co2_next_week"  # bundled, aligned: every step answered
SESSIONS = 100
CHANNELS = 4  # client channels (HTTP/2 connections to nginx) the sessions share
SEQUENCES = 8
STEP_PAUSE_S = 0.2  # each session's pause between steps: ~500 steps/s in all
MAX_STEPS = 400  # per session or sequence, whatever the phase's length
STEP_TIMEOUT_S = 60  # a step still unanswered then fails its session (the figure counts it)
TOL = 1e-5
RESULTS = ROOT / "bench" / "results" / "rolling_update.md"

NGINX_CONF = """
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    upstream seqserve {{
{servers}
        keepalive 32;
    }}
    upstream seqserve_sequences {{
        hash $http_seqserve_sequence_id consistent;
{servers}
        keepalive 32;
    }}
    map $http_seqserve_sequence_id $seqserve_upstream {{
        ""      seqserve;
        default seqserve_sequences;
    }}
    server {{
        listen 127.0.0.1:{port} http2;
        client_max_body_size 0;
        grpc_read_timeout 1h;
        grpc_send_timeout 1h;
        client_body_timeout 1h;
        keepalive_timeout 1h;
        http2_max_concurrent_streams 1024;
        location / {{
            grpc_pass grpc://$seqserve_upstream;
            grpc_next_upstream error timeout http_502 http_503 http_504;
            grpc_next_upstream_tries 2;
            grpc_connect_timeout 2s;
        }}
    }}
}}
"""


@dataclass
class Replica:
    port: int
    args: list[str]
    repository: Path
    process: ServerProcess | None = None

    def start(self) -> None:
        self.process = start_server(self.repository, *self.args, "--port", str(self.port))

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def kill(self) -> None:
        if self.process is not None:
            self.process.process.kill()
            self.process.process.wait()


@dataclass
class Stream:
    """What one session or sequence was sent and answered, and each step's round trip."""

    inputs: list[np.ndarray] = field(default_factory=list)
    outputs: list[np.ndarray] = field(default_factory=list)
    seconds: list[tuple[float, float]] = field(default_factory=list)  # (start, end) per step
    error: str = ""
    resumes: int = 0  # SDK: resumptions; Triton: requests sent again
    replayed: int = 0  # SDK: steps the SDK sent again after resuming


@pytest.fixture(scope="module")
def nginx() -> str:
    found = shutil.which("nginx")
    if found is None:
        pytest.skip("no nginx on PATH (`make test-tools` installs Debian's nginx)")
    return found


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rolling")
    shutil.copytree(ROOT / "models" / MODEL, root / MODEL)
    return root


@contextlib.contextmanager
def cluster(nginx: str, repository: Path, tmp: Path) -> Iterator[tuple[str, list[Replica]]]:
    """Two replicas (key, store every-step) behind nginx: its target and the replicas."""
    if not redis_server.available():
        pytest.skip(redis_server.MISSING)
    keys = tmp / "session.keys"
    keys.write_text(secrets.token_hex(32) + "\n")
    with redis_server.redis_server() as store:
        args = ["--session-key-file", str(keys), "--session-store", store]
        args += ["--session-store-write", "every-step", "--grace-period-s", "5"]
        replicas = [Replica(free_port(), args, repository) for _ in range(2)]
        for replica in replicas:
            replica.start()
        port = free_port()
        servers = "\n".join(f"        server 127.0.0.1:{r.port} max_fails=0;" for r in replicas)
        (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, servers=servers, port=port))
        lb = subprocess.Popen([nginx, "-c", str(tmp / "nginx.conf"), "-g", "daemon off;"])
        try:
            time.sleep(0.5)
            yield f"127.0.0.1:{port}", replicas
        finally:
            lb.terminate()
            lb.wait(10)
            for replica in replicas:
                replica.stop()


async def _session(
    client: AsyncSeqServeClient, number: int, done: asyncio.Event, stream: Stream
) -> None:
    rng = np.random.default_rng(number)
    features = (await client.metadata(MODEL)).inputs[0].shape[-1]
    async with client.session(MODEL, resumable=True) as session:
        try:
            while not done.is_set() and len(stream.inputs) < MAX_STEPS:
                x = rng.normal(scale=0.5, size=(1, features)).astype(np.float32)
                start = time.monotonic()
                y = await asyncio.wait_for(session.step(x), STEP_TIMEOUT_S)
                stream.seconds.append((start, time.monotonic()))
                stream.inputs.append(x)
                stream.outputs.append(np.asarray(y))
                await asyncio.sleep(STEP_PAUSE_S * (0.5 + rng.random()))
        finally:
            stream.resumes, stream.replayed = session.resumes, session.steps_replayed


def _sequence(target: str, number: int, done: threading.Event, stream: Stream) -> None:
    """A Triton sequence, one step per ModelInfer; UNAVAILABLE is retried (bounded)."""
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    rng = np.random.default_rng(10_000 + number)
    sequence_id = 1000 + number
    headers = {"seqserve-sequence-id": str(sequence_id)}
    client = triton.InferenceServerClient(target)
    try:
        features = int(client.get_model_metadata(MODEL).inputs[0].shape[-1])
        while not done.is_set() and len(stream.inputs) < MAX_STEPS:
            x = rng.normal(scale=0.5, size=(1, 1, features)).astype(np.float32)
            request = triton.InferInput("input", list(x.shape), "FP32")
            request.set_data_from_numpy(x)
            start = time.monotonic()
            for attempt in range(40):
                try:
                    result = client.infer(
                        MODEL, [request], sequence_id=sequence_id,
                        sequence_start=not stream.inputs, headers=headers,
                        request_id=f"{sequence_id}-{len(stream.inputs)}",  # a retry: same id
                    )  # fmt: skip
                    break
                except InferenceServerException as exc:
                    if "UNAVAILABLE" not in str(exc.status()) or attempt == 39:
                        raise
                    stream.resumes += 1
                    time.sleep(0.1 + 0.05 * attempt)
            stream.seconds.append((start, time.monotonic()))
            stream.inputs.append(x[0])
            stream.outputs.append(result.as_numpy("output")[0])
            time.sleep(STEP_PAUSE_S)
    except Exception as exc:  # noqa: BLE001 - reported per sequence
        stream.error = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        client.close()


def _run(
    target: str, disrupt: Callable[[list[float]], None]
) -> tuple[list[Stream], list[Stream], list[float]]:
    """The load, `disrupt(events)` meanwhile (it appends the times replicas went down)."""
    sessions = [Stream() for _ in range(SESSIONS)]
    sequences = [Stream() for _ in range(SEQUENCES)]
    events: list[float] = []
    stop_threads = threading.Event()
    threads = [
        threading.Thread(target=_sequence, args=(target, i, stop_threads, s), daemon=True)
        for i, s in enumerate(sequences)
    ]
    for thread in threads:
        thread.start()

    async def load() -> None:
        done = asyncio.Event()
        clients = [AsyncSeqServeClient(target, timeout=120) for _ in range(CHANNELS)]

        async def guarded(number: int, stream: Stream) -> None:
            try:
                await _session(clients[number % CHANNELS], number, done, stream)
            except Exception as exc:  # noqa: BLE001 - a failed session is a figure
                stream.error = f"{type(exc).__name__}: {exc}"[:300]

        tasks = [asyncio.create_task(guarded(i, s)) for i, s in enumerate(sessions)]
        await asyncio.sleep(3)
        await asyncio.to_thread(disrupt, events)
        await asyncio.sleep(3)
        done.set()
        await asyncio.gather(*tasks)
        for client in clients:
            await client.close()

    asyncio.run(load())
    stop_threads.set()
    for thread in threads:
        thread.join(120)
    return sessions, sequences, events


def _wrong(model: keras.Model, streams: list[Stream]) -> int:
    """Streams whose outputs differ from the model on the whole sequence they sent."""
    wrong = 0
    for stream in streams:
        if not stream.inputs:
            continue
        x = np.concatenate(stream.inputs)[np.newaxis]
        want = keras.ops.convert_to_numpy(model(x, training=False))[0]
        got = np.concatenate([o.reshape(-1, want.shape[-1]) for o in stream.outputs])
        if got.shape != want.shape or not np.allclose(got, want, atol=TOL, rtol=TOL):
            wrong += 1
    return wrong


def _figures(name: str, model: keras.Model, sessions: list[Stream], sequences: list[Stream],
             events: list[float]) -> dict[str, object]:  # fmt: skip
    """The issue's figures for one disruption."""
    crossed, others = [], []
    for stream in sessions:
        for start, end in stream.seconds:
            near = any(start - 1.0 <= t <= end for t in events)
            (crossed if near else others).append(1000 * (end - start))
    return {
        "phase": name,
        "sessions": f"{sum(1 for s in sessions if s.inputs)} ({sum(len(s.inputs) for s in sessions)} steps)",
        "sessions failed": sum(1 for s in sessions if s.error),
        "sessions wrong": _wrong(model, [s for s in sessions if not s.error]),
        "sequences failed": sum(1 for s in sequences if s.error),
        "sequences wrong": _wrong(model, [s for s in sequences if not s.error]),
        "step p50 / p99 (ms)": _percentiles(others),
        "crossing step p50 / p99 (ms)": _percentiles(crossed),
        "SDK resumes / steps replayed": f"{sum(s.resumes for s in sessions)} / "
        f"{sum(s.replayed for s in sessions)}",
        "Triton requests sent again": sum(s.resumes for s in sequences),
        "errors": sorted({s.error for s in sessions + sequences if s.error})[:3],
    }


def _percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return f"{statistics.median(ordered):.1f} / {p99:.1f} ({len(ordered)})"


def _report(rows: list[dict[str, object]]) -> None:
    keys = [k for k in rows[0] if k != "errors"]
    lines = [
        f"`make rolling-update` ({time.strftime('%Y-%m-%d %H:%M')}): 2 replicas behind nginx, "
        f"{SESSIONS} resumable SDK sessions + {SEQUENCES} Triton sequences stepping on {MODEL}",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
        *("| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows),
    ]
    text = "\n".join(lines)
    print("\n" + text)
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(text + "\n\n")


@pytest.mark.timeout(1800)
def test_a_rolling_update_and_a_crash_lose_no_session(
    nginx: str, repository: Path, tmp_path: Path
) -> None:
    model = keras.saving.load_model(repository / MODEL / "1" / "model.keras", safe_mode=True)
    rows = []
    with cluster(nginx, repository, tmp_path) as (target, replicas):

        def rolling(events: list[float]) -> None:
            for number, replica in enumerate(replicas):
                events.append(time.monotonic())
                replica.stop()
                print(f"replica {number} stopped; starting it again", flush=True)
                replica.start()
                print(f"replica {number} serving again", flush=True)
                time.sleep(2)

        def crash(events: list[float]) -> None:
            events.append(time.monotonic())
            replicas[0].kill()
            print("replica 0 killed", flush=True)
            time.sleep(2)
            replicas[0].start()
            print("replica 0 serving again", flush=True)

        for name, disrupt in (("rolling update (SIGTERM)", rolling), ("crash (SIGKILL)", crash)):
            sessions, sequences, events = _run(target, disrupt)
            rows.append(_figures(name, model, sessions, sequences, events))
            print(rows[-1], flush=True)
            for replica in replicas:  # what the replicas logged of failures, for the reader
                assert replica.process is not None
                lines = replica.process.output().splitlines()
                print(*[x for x in lines if "ERROR" in x or "WARNING" in x][:20], sep="\n")
    _report(rows)
    for row in rows:
        assert row["sessions failed"] == 0 and row["sessions wrong"] == 0, row
        assert row["sequences failed"] == 0 and row["sequences wrong"] == 0, row

"""Checks for deploy/stack_test.sh against a running compose stack (localhost only).

`prepare --certs DIR --secrets FILE`: the run's own dev certificates and tokens (with
deploy/make_certs.py's code; the user's deploy/certs/ is left alone): token `stack` (every
model and scope) and `iris-only` (infer on iris_classifier). DIR/tokens.yaml holds their
SHA-256; the tokens go to FILE, outside the directory the containers mount.
`check ...`: through the load balancer, over TLS, with a token:
0. every container runs read-only, without capabilities, with limits (docker inspect);
1. refusals: plaintext to the LB, and to a replica plaintext or TLS without a client certificate
   (its mutual TLS); no token or an unknown one -> UNAUTHENTICATED; a token without the model ->
   PERMISSION_DENIED;
2. N Predict calls to iris_classifier, each equal to Keras in-process;
3. S interleaved Triton sequences (separate ModelInfer calls with sequence_id/start/end and the
   `seqserve-sequence-id` header) to co2_next_week: each one's outputs equal Predict on the whole
   sequence and Keras; a sequence sent without the header is refused (FAILED_PRECONDITION, naming
   it) by the replica that does not hold it (the per-call balancer spreads it);
4. both replicas served Predict calls and whole sequences (each replica's own /metrics: its
   ModelInfer count is a multiple of the calls per sequence);
5. Prometheus scrapes both replicas;
6. sessions outlive their replica: a sequence (with the header) half sent, the replica holding it
   stopped (`docker compose stop`: it writes the sequence to the shared session store), the rest
   sent through the LB reaches the other replica, which continues it from the store (equal to
   Predict on the whole sequence); the stopped replica is started again (`up --wait`);
7. a rolling restart under live sessions: resumable SDK sessions (`resumable=True`, TLS, token)
   step co2_next_week through the LB while each replica in turn is stopped (SIGTERM: it hands
   its sessions off) and started again (`up --wait`): no session fails, and each one's outputs
   equal Predict on its whole sequence (nothing missing, duplicated or wrong).
Exit status 0 when every check passes; the reason otherwise. Run from the repository root as
`python -m deploy.stack_check`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import grpc
import numpy as np
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from deploy.make_certs import (
    Grant,
    write_certs,
    write_password,
    write_session_keys,
    write_tokens,
)
from seqserve_client import PermissionDeniedError, SeqServeClient, UnauthenticatedError
from tests.support.bundled import TOLERANCE, example_input
from tests.support.reference import loader

REPLICAS = ("seqserve-1", "seqserve-2")
MODEL = "iris_classifier"
SEQUENCE_MODEL = "co2_next_week"
SEQUENCE_HEADER = "seqserve-sequence-id"
CHUNKS = 5  # calls per sequence
NOT_HELD = "StatusCode.FAILED_PRECONDITION"  # a replica's answer to a sequence it does not hold
READ_METRICS = (
    "import urllib.request; "
    "print(urllib.request.urlopen('http://127.0.0.1:8502/metrics', timeout=5).read().decode())"
)
# Run inside a replica: health over plaintext, over TLS without a client certificate, and with
# the dev client certificate (the control). Prints the three outcomes.
REPLICA_HANDSHAKES = """
import grpc
from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as hg
def code(channel):
    try:
        hg.HealthStub(channel).Check(h.HealthCheckRequest(), timeout=5)
        return "OK"
    except grpc.RpcError as e:
        return e.code().name
read = lambda name: open(f"/certs/{name}", "rb").read()
mtls = grpc.ssl_channel_credentials(read("ca.crt"), read("client.key"), read("client.crt"))
print(code(grpc.insecure_channel("127.0.0.1:8500")),
      code(grpc.secure_channel("localhost:8500", grpc.ssl_channel_credentials(read("ca.crt")))),
      code(grpc.secure_channel("localhost:8500", mtls)))
"""


def fail(message: str) -> NoReturn:
    print(f"stack check FAILED: {message}", file=sys.stderr)
    sys.exit(1)


# -- prepare ------------------------------------------------------------------------------------


def prepare(certs: Path, secrets_file: Path) -> None:
    certs.mkdir(parents=True, exist_ok=True)
    write_certs(certs)
    grants = [Grant("stack"), Grant("iris-only", models=(MODEL,), scopes=("infer",))]
    write_tokens(certs / "tokens.yaml", grants)
    write_password(certs / "grafana-admin-password")
    write_session_keys(certs / "session.keys")
    secrets_file.write_text(json.dumps({g.name: g.token for g in grants}))
    secrets_file.chmod(0o600)
    print(f"certificates and tokens {[g.name for g in grants]} in {certs}")


# -- replicas' own view -------------------------------------------------------------------------


def in_replica(compose: list[str], replica: str, program: str) -> str:
    return subprocess.run(
        [*compose, "exec", "-T", replica, "python", "-c", program],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip


def replica_requests(compose: list[str], replica: str) -> Counter[tuple[str, str]]:
    """seqserve_requests_total by (model, rpc), as `replica` counts them."""
    counts: Counter[tuple[str, str]] = Counter()
    for family in text_string_to_metric_families(in_replica(compose, replica, READ_METRICS)):
        for sample in family.samples:
            if sample.name == "seqserve_requests_total":
                counts[(sample.labels["model"], sample.labels["rpc"])] += int(sample.value)
    return counts


# -- containers -----------------------------------------------------------------------------------


def check_hardening(compose: list[str]) -> None:
    """Every running container: read-only root, no capabilities (nginx: its three), no new
    privileges, CPU and memory limits, as docker itself reports them."""
    ids = subprocess.run([*compose, "ps", "-q"], capture_output=True, text=True, check=True,
                         timeout=60).stdout.split()  # fmt: skip
    inspected = json.loads(subprocess.run(["docker", "inspect", *ids], capture_output=True,
                                          text=True, check=True, timeout=60).stdout)  # fmt: skip
    for container in inspected:
        name = container["Config"]["Labels"]["com.docker.compose.service"]
        host = container["HostConfig"]
        facts = {
            "read-only root": host["ReadonlyRootfs"] is True,
            "cap_drop ALL": host["CapDrop"] == ["ALL"],
            "cap_add": set(host["CapAdd"] or []) <= {"CAP_CHOWN", "CAP_SETGID", "CAP_SETUID",
                                                    "CHOWN", "SETGID", "SETUID"},
            "no-new-privileges": "no-new-privileges:true" in (host["SecurityOpt"] or []),
            "limits": host["Memory"] > 0 and host["NanoCpus"] > 0,
            "running": container["State"]["Running"],
        }  # fmt: skip
        wrong = [fact for fact, ok in facts.items() if not ok]
        if wrong:
            fail(f"container {name}: not {wrong} ({host['CapAdd']}, {host['SecurityOpt']})")
        tmpfs = sorted(host.get("Tmpfs") or {})
        limits = f"{host['NanoCpus'] / 1e9:g} CPU, {host['Memory'] >> 20} MiB"
        print(f"{name}: read-only root, cap_drop ALL, cap_add {host['CapAdd'] or []}, {limits}, "
              f"tmpfs {tmpfs}")  # fmt: skip


# -- refusals -----------------------------------------------------------------------------------


def plaintext_code(target: str) -> str:
    with grpc.insecure_channel(target) as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        except grpc.RpcError as e:
            return str(e.code().name)
    return "OK"


def refused_with(kind: type[Exception], call: Callable[[], object]) -> str:
    try:
        call()
    except kind as e:
        return type(e).__name__
    fail(f"expected {kind.__name__}, the call succeeded")


def check_refusals(lb: str, ca: bytes, tokens: dict[str, str], compose: list[str]) -> None:
    code = plaintext_code(lb)
    if code == "OK":
        fail(f"plaintext health check through the LB {lb} succeeded")
    print(f"plaintext to the LB: refused ({code})")
    for replica in REPLICAS:
        plain, no_cert, control = in_replica(compose, replica, REPLICA_HANDSHAKES).split()
        if "OK" in (plain, no_cert) or control != "OK":
            fail(
                f"{replica}: plaintext {plain}, TLS without a client cert {no_cert}, mTLS {control}"
            )
        print(f"{replica}: plaintext {plain}, TLS without client cert {no_cert}, mTLS {control}")
    x = np.ones((1, 4), np.float32)
    for label, token in (("no token", None), ("unknown token", "not-a-token")):
        with SeqServeClient(lb, tls=True, root_certificates=ca, token=token, timeout=30) as c:
            got = refused_with(UnauthenticatedError, lambda c=c: c.predict(MODEL, x))
        print(f"{label}: {got}")
    with SeqServeClient(
        lb, tls=True, root_certificates=ca, token=tokens["iris-only"], timeout=30
    ) as limited:
        limited.predict(MODEL, x)
        x_seq = np.ones((1, 3, 1), np.float32)
        got = refused_with(PermissionDeniedError, lambda: limited.predict(SEQUENCE_MODEL, x_seq))
    print(f"token iris-only: {MODEL} allowed, {SEQUENCE_MODEL} {got}")


# -- traffic ------------------------------------------------------------------------------------


def check_predict(client: SeqServeClient, keras_model: Callable, calls: int) -> None:
    rng = np.random.default_rng(0)
    started = time.monotonic()
    for i in range(calls):
        x = example_input(MODEL, rng)[: 1 + i % 4]
        got = np.asarray(client.predict(MODEL, x))
        want = np.asarray(keras_model(x, training=False))
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-5, atol=TOLERANCE):
            fail(f"Predict call {i}: served {got!r}, Keras {want!r}")
    elapsed = time.monotonic() - started
    print(f"{calls} Predict calls through the LB in {elapsed:.2f}s, each equal to Keras")


def tensor(x: np.ndarray) -> triton.InferInput:
    t = triton.InferInput("input", list(x.shape), "FP32")
    t.set_data_from_numpy(x)
    return t


def headers(token: str, sequence: int | None) -> dict[str, str]:
    found = {"authorization": f"Bearer {token}"}
    if sequence is not None:
        found[SEQUENCE_HEADER] = str(sequence)
    return found


def check_sequences(
    v2: triton.InferenceServerClient, v1: SeqServeClient, keras_model: Callable,
    token: str, count: int,
) -> None:  # fmt: skip
    """`count` sequences, their calls interleaved (round by round, in a shuffled order)."""
    rng = np.random.default_rng(1)
    xs = np.concatenate([example_input(SEQUENCE_MODEL, rng) for _ in range(count)])[:count]
    ids = [int(i) for i in rng.choice(10**9, size=count, replace=False) + 1]
    cuts = [np.sort(rng.choice(np.arange(1, xs.shape[1]), CHUNKS - 1, replace=False))
            for _ in range(count)]  # fmt: skip
    chunks = [np.split(x, c) for x, c in zip(xs, cuts, strict=True)]
    outputs: list[list[np.ndarray]] = [[] for _ in range(count)]
    started = time.monotonic()
    for round_ in range(CHUNKS):
        for s in rng.permutation(count):
            result = v2.infer(
                SEQUENCE_MODEL, [tensor(chunks[s][round_][None])], sequence_id=ids[s],
                sequence_start=round_ == 0, sequence_end=round_ == CHUNKS - 1,
                headers=headers(token, ids[s]), client_timeout=30,
            )  # fmt: skip
            outputs[s].append(result.as_numpy("output")[0])
    elapsed = time.monotonic() - started
    whole = np.concatenate([v1.predict(SEQUENCE_MODEL, xs[i : i + 8]) for i in range(0, count, 8)])
    reference = np.asarray(keras_model(xs, training=False))
    for s in range(count):
        got = np.concatenate(outputs[s])
        for name, want in (("Predict", whole[s]), ("Keras", reference[s])):
            if got.shape != want.shape or not np.allclose(got, want, rtol=1e-5, atol=TOLERANCE):
                worst = np.max(np.abs(got - want)) if got.shape == want.shape else got.shape
                fail(f"sequence {ids[s]}: its calls differ from {name} on the whole ({worst})")
    calls = count * CHUNKS
    print(
        f"{count} interleaved sequences ({calls} ModelInfer calls) in {elapsed:.2f}s: "
        "each equal to Predict on the whole sequence and to Keras"
    )


def check_unrouted_sequence(v2: triton.InferenceServerClient, token: str) -> None:
    """Without the header the balancer spreads a sequence's calls: a replica that does not hold
    it must refuse, naming it, rather than answer from no state."""
    sequence = 4242
    x = np.ones((1, 1, 1), np.float32) * 340
    v2.infer(SEQUENCE_MODEL, [tensor(x)], sequence_id=sequence, sequence_start=True,
             headers=headers(token, None), client_timeout=30)  # fmt: skip
    for sent in range(2, 5):
        try:
            v2.infer(SEQUENCE_MODEL, [tensor(x)], sequence_id=sequence,
                     headers=headers(token, None), client_timeout=30)  # fmt: skip
        except InferenceServerException as e:
            if e.status() != NOT_HELD or str(sequence) not in (e.message() or ""):
                fail(f"expected {NOT_HELD} naming sequence {sequence}, got {e}")
            print(f"a sequence without the header: call {sent} refused ({e.status()}), "
                  f"naming it: {e.message()}")  # fmt: skip
            return
    fail("4 calls of a sequence without the header all succeeded: was it balanced per call?")


# -- replicas and Prometheus ----------------------------------------------------------------------


def served(before: dict[str, Counter], after: dict[str, Counter], key: tuple[str, str]) -> dict:
    return {r: after[r][key] - before[r][key] for r in REPLICAS}


def check_replicas(
    predicts: dict[str, int], infers: dict[str, int], calls: int, count: int
) -> None:
    """Both replicas served Predict calls and whole sequences: every replica's ModelInfer count is
    a multiple of the calls per sequence (no sequence was split), and each one got some."""
    sequences = {r: n // CHUNKS for r, n in infers.items()}
    print(f"per replica: Predict {predicts}, ModelInfer {infers} = sequences {sequences}")
    if sum(predicts.values()) != calls or 0 in predicts.values():
        fail(f"{calls} Predict calls, counted per replica: {predicts}")
    if sum(infers.values()) != count * CHUNKS or any(n % CHUNKS for n in infers.values()):
        fail(f"{count} sequences of {CHUNKS} calls, ModelInfer counted per replica: {infers}")
    if 0 in sequences.values():
        fail(f"a replica got none of the {count} sequences: {sequences}")


def prom_query(base: str, query: str) -> list[dict]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    with urllib.request.urlopen(url, timeout=10) as reply:
        body = json.load(reply)
    if body.get("status") != "success":
        fail(f"Prometheus query {query!r}: {body}")
    return body["data"]["result"]


def check_prometheus(base: str, at_least: int, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        up = prom_query(base, 'up{job="seqserve"}')
        up_replicas = {s["metric"].get("replica") for s in up if s["value"][1] == "1"}
        series = prom_query(
            base, f'sum by (replica) (seqserve_requests_total{{model="{MODEL}",rpc="Predict"}})'
        )
        scraped = {s["metric"].get("replica"): float(s["value"][1]) for s in series}
        if (
            len(up) == len(REPLICAS)
            and up_replicas == set(REPLICAS)
            and set(scraped) == set(REPLICAS)
            and sum(scraped.values()) >= at_least
        ):
            break
        if time.monotonic() > deadline:
            fail(f"Prometheus: up={up} seqserve_requests_total by replica={scraped}")
        time.sleep(2)
    print("Prometheus: up{job=seqserve}==1 for", sorted(up_replicas), "Predict:", scraped)


# -- main ---------------------------------------------------------------------------------------


def check(args: argparse.Namespace) -> None:
    compose = shlex.split(args.compose)
    ca = (args.certs / "ca.crt").read_bytes()
    tokens = json.loads(args.secrets.read_text())
    load = loader(args.models)
    check_hardening(compose)
    check_refusals(args.lb, ca, tokens, compose)

    def snapshot() -> dict[str, Counter]:
        return {r: replica_requests(compose, r) for r in REPLICAS}

    before = snapshot()
    token = tokens["stack"]
    with (
        SeqServeClient(args.lb, tls=True, root_certificates=ca, token=token, timeout=30) as v1,
        triton.InferenceServerClient(
            args.lb, ssl=True, root_certificates=str(args.certs / "ca.crt")
        ) as v2,
    ):
        if not v1.health():
            fail(f"health through the load balancer {args.lb} is not SERVING")
        check_predict(v1, load(MODEL), args.calls)
        middle = snapshot()
        check_sequences(v2, v1, load(SEQUENCE_MODEL), token, args.sequences)
        after = snapshot()
        check_unrouted_sequence(v2, token)
    check_replicas(
        served(before, middle, (MODEL, "Predict")),
        served(middle, after, (SEQUENCE_MODEL, "ModelInfer")),
        args.calls,
        args.sequences,
    )
    at_least = sum(b[(MODEL, "Predict")] for b in before.values()) + args.calls
    check_prometheus(args.prometheus, at_least, args.prometheus_wait)
    with (
        SeqServeClient(args.lb, tls=True, root_certificates=ca, token=token, timeout=30) as v1,
        triton.InferenceServerClient(
            args.lb, ssl=True, root_certificates=str(args.certs / "ca.crt")
        ) as v2,
    ):
        check_failover(v2, v1, compose, token, snapshot)
        check_rolling_restart(args.lb, ca, token, compose, v1, args.live_sessions)
    print("stack check passed")


def check_failover(
    v2: triton.InferenceServerClient, v1: SeqServeClient, compose: list[str], token: str,
    snapshot: Callable[[], dict[str, Counter]],
) -> None:  # fmt: skip
    """A sequence continues on the other replica after the one holding it stops (the shared
    session store); the stopped replica comes back afterwards."""
    sequence = 515151
    x = example_input(SEQUENCE_MODEL, np.random.default_rng(9))[0]
    chunks = np.array_split(x, 6)
    before = snapshot()
    outputs = []
    for i, chunk in enumerate(chunks[:3]):
        result = v2.infer(SEQUENCE_MODEL, [tensor(chunk[None])], sequence_id=sequence,
                          sequence_start=i == 0, headers=headers(token, sequence),
                          client_timeout=30)  # fmt: skip
        outputs.append(result.as_numpy("output")[0])
    after = snapshot()
    holder = next(r for r in REPLICAS if after[r] != before[r])
    subprocess.run([*compose, "stop", holder], capture_output=True, timeout=120, check=True)
    for i, chunk in enumerate(chunks[3:], start=3):
        deadline = time.monotonic() + 60
        while True:  # the balancer finds the stopped replica gone after a refused connection
            try:
                result = v2.infer(SEQUENCE_MODEL, [tensor(chunk[None])], sequence_id=sequence,
                                  sequence_end=i == len(chunks) - 1,
                                  headers=headers(token, sequence), client_timeout=30)  # fmt: skip
                break
            except InferenceServerException as e:
                if e.status() != "StatusCode.UNAVAILABLE" or time.monotonic() > deadline:
                    fail(f"sequence {sequence} after {holder} stopped: {e}")
                time.sleep(0.5)
        outputs.append(result.as_numpy("output")[0])
    want = v1.predict(SEQUENCE_MODEL, x[None])[0]
    got = np.concatenate(outputs)
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-5, atol=TOLERANCE):
        fail(f"sequence {sequence} continued after {holder} stopped differs from Predict")
    print(f"sequence {sequence}: {holder} stopped after 3 of {len(chunks)} calls, the other "
          "replica continued it from the shared session store (equal to Predict)")  # fmt: skip
    subprocess.run([*compose, "up", "-d", "--wait", "--wait-timeout", "300", holder],
                   capture_output=True, timeout=360, check=True)  # fmt: skip
    print(f"{holder} started again")


class LiveSession(threading.Thread):
    """One resumable SDK session stepping a week at a time until told to stop."""

    def __init__(self, lb: str, ca: bytes, token: str, number: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.client = SeqServeClient(lb, tls=True, root_certificates=ca, token=token, timeout=60)
        self.rng, self.stop = np.random.default_rng(number), stop
        self.weeks: list[np.ndarray] = []
        self.outputs: list[np.ndarray] = []
        self.error = ""

    def run(self) -> None:
        try:
            with self.client, self.client.session(SEQUENCE_MODEL, resumable=True) as session:
                level = 340.0
                while not self.stop.is_set() or len(self.weeks) < 20:
                    level += float(self.rng.normal(0.03, 0.3))
                    week = np.array([[level]], np.float32)
                    out = session.step(week)
                    self.weeks.append(week)
                    self.outputs.append(np.asarray(out))
                    time.sleep(0.05)
        except Exception as exc:  # noqa: BLE001 - reported per session
            self.error = f"{type(exc).__name__}: {exc}"[:300]


def check_rolling_restart(
    lb: str, ca: bytes, token: str, compose: list[str], v1: SeqServeClient, count: int
) -> None:
    """Live resumable sessions through the LB while each replica in turn stops (its sessions
    handed off) and starts again: none fails, each equals Predict on its whole sequence."""
    stop = threading.Event()
    sessions = [LiveSession(lb, ca, token, 700 + i, stop) for i in range(count)]
    for session in sessions:
        session.start()
    time.sleep(3)
    started = time.monotonic()
    for replica in REPLICAS:
        subprocess.run([*compose, "stop", replica], capture_output=True, timeout=120, check=True)
        subprocess.run([*compose, "up", "-d", "--wait", "--wait-timeout", "300", replica],
                       capture_output=True, timeout=360, check=True)  # fmt: skip
    took = time.monotonic() - started
    time.sleep(3)
    stop.set()
    for session in sessions:
        session.join(120)
    failed = [s.error or "still running" for s in sessions if s.error or s.is_alive()]
    if failed:
        fail(f"{len(failed)} of {count} live sessions failed across the restarts: {failed[:3]}")
    for number, session in enumerate(sessions):
        want = v1.predict(SEQUENCE_MODEL, np.concatenate(session.weeks)[None])[0]
        got = np.concatenate(session.outputs)
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-5, atol=TOLERANCE):
            fail(f"live session {number} differs from Predict on its whole sequence")
    steps = sum(len(s.weeks) for s in sessions)
    print(
        f"rolling restart under {count} live resumable sessions ({steps} steps): each replica "
        f"stopped and started again in {took:.0f} s; 0 failed, 0 wrong (equal to Predict)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare")
    prep.add_argument("--certs", type=Path, required=True)
    prep.add_argument("--secrets", type=Path, required=True)
    run = sub.add_parser("check")
    run.add_argument("--lb", required=True)
    run.add_argument("--prometheus", required=True)
    run.add_argument("--compose", required=True)
    run.add_argument("--certs", type=Path, required=True)
    run.add_argument("--secrets", type=Path, required=True)
    run.add_argument("--models", type=Path, required=True, help="the image's model source")
    run.add_argument("--calls", type=int, default=50)
    run.add_argument("--sequences", type=int, default=40)
    run.add_argument("--prometheus-wait", type=float, default=60.0)
    run.add_argument("--live-sessions", type=int, default=20)
    args = ap.parse_args()
    if args.command == "prepare":
        prepare(args.certs, args.secrets)
    else:
        check(args)


if __name__ == "__main__":
    main()

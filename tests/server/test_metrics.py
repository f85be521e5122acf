"""Prometheus metrics: the series exist, count what happened, pass promtool's lint, and a real
Prometheus (Debian's package, started here on 127.0.0.1) scrapes them."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from seqserve_client import SeqServeClient, SeqServeError
from tests.support.metrics import samples, scrape, value
from tests.support.server_process import ServerProcess, free_port

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_prometheus = pytest.mark.skipif(
    not (PROMTOOL and PROMETHEUS), reason="Debian's prometheus package (make test installs it)"
)


def test_requests_latency_batches_and_errors_are_counted(
    client: SeqServeClient, server: ServerProcess
) -> None:
    x = np.ones((3, 5, 3), np.float32)
    before = scrape(server)
    for _ in range(4):
        client.predict("gru", x)
    with pytest.raises(SeqServeError):
        client.predict("gru", np.ones((1, 5, 9), np.float32))
    list(client.predict_stream("gru", x))
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok = dict(model="gru", rpc="Predict", code="OK", version="1")
    assert delta("seqserve_requests_total", **ok) == 4
    assert delta("seqserve_requests_total", model="gru", code="INVALID_ARGUMENT") == 1
    assert delta("seqserve_request_duration_seconds_count", model="gru", rpc="Predict") == 5
    assert delta("seqserve_time_to_first_output_seconds_count", model="gru") == 1
    assert delta("seqserve_batch_size_count", model="gru") == 5
    assert delta("seqserve_batch_size_sum", model="gru") == 15
    assert delta("seqserve_compute_seconds_count", model="gru") == 5
    assert value(after, "seqserve_inflight_requests", model="gru") == 0
    assert value(after, "seqserve_model_state", model="gru", seqserve_model_state="ready") == 1
    assert value(after, "seqserve_model_state", model="unsafe", seqserve_model_state="failed") == 1
    assert value(after, "seqserve_model_load_seconds", model="gru") > 0


def test_unknown_model_names_share_one_series(
    client: SeqServeClient, server: ServerProcess
) -> None:
    for name in ("typo-1", "typo-2"):
        with pytest.raises(SeqServeError):
            client.predict(name, np.ones((1, 2, 3), np.float32))
    text = scrape(server)
    assert value(text, "seqserve_requests_total", model="_unknown", code="NOT_FOUND") >= 2
    assert not any("typo" in str(key) for key in samples(text, "seqserve_requests_total"))


def test_only_the_metrics_path_answers(server: ServerProcess) -> None:
    assert "seqserve_requests_total" in scrape(server)
    for path in ("/", "/admin", "/metrics/x", "/favicon.ico"):
        url = f"http://127.0.0.1:{server.metrics_port}{path}"
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(url, timeout=10)
        assert missing.value.code == 404


@needs_prometheus
def test_promtool_accepts_the_metrics(client: SeqServeClient, server: ServerProcess) -> None:
    client.predict("iris_like", np.ones((1, 4), np.float32))
    result = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=scrape(server), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def prometheus(server: ServerProcess, tmp_path: Path) -> Iterator[str]:
    """Debian's Prometheus on 127.0.0.1, scraping the test server every second."""
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: seqserve\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{server.metrics_port}']}}]\n"
    )
    port = free_port()
    process = subprocess.Popen(
        [
            str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(30)


def query(base: str, promql: str) -> list[dict]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)["data"]["result"]
    except OSError:
        return []


@needs_prometheus
def test_prometheus_scrapes_the_server(client: SeqServeClient, prometheus: str) -> None:
    client.predict("iris_like", np.ones((2, 4), np.float32))
    deadline = time.monotonic() + 60
    result: list[dict] = []
    while time.monotonic() < deadline and not result:
        result = query(prometheus, 'seqserve_requests_total{model="iris_like",code="OK"}')
        time.sleep(0.5)
    assert result, "Prometheus never returned the seqserve series"
    assert float(result[0]["value"][1]) >= 1
    assert query(prometheus, 'up{job="seqserve"}')[0]["value"][1] == "1"

"""Static checks of the deployment files: compose, nginx, Prometheus, Grafana, Dockerfile.

Fast and engine-free. `docker compose config` runs when the docker CLI and its compose plugin are
installed (deploy/install_compose.sh installs the plugin without an engine); everything else is
parsed here. The live stack is exercised by deploy/stack_test.sh (`make stack-test`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "seqserve.json"

REPLICAS = {"seqserve-1", "seqserve-2"}
# `make certs` writes deploy/certs; the stack test mounts its own (SEQSERVE_CERTS_DIR).
CERTS_MOUNT = "${SEQSERVE_CERTS_DIR:-./deploy/certs}:/certs:ro"
# The metric names the server exports (the only ones the dashboard may use).
METRICS = {
    "seqserve_requests_total",
    "seqserve_request_duration_seconds_bucket",
    "seqserve_batch_size_bucket",
    "seqserve_queue_depth",
    "seqserve_open_sessions",
    "seqserve_inflight_requests",
}


def compose_file() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _compose_cli_reason() -> str | None:
    if shutil.which("docker") is None:
        return "no docker CLI on PATH (apt-get install docker.io; no engine needed)"
    probe = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, timeout=30
    )
    if probe.returncode != 0:
        return "docker compose plugin absent: run deploy/install_compose.sh (no engine needed)"
    return None


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    return subprocess.run(
        ["docker", "compose", "--project-directory", str(ROOT), "-f", str(COMPOSE), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )


# --- compose ----------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", [None, "grafana"])
def test_compose_config_is_valid(profile: str | None) -> None:
    reason = _compose_cli_reason()
    if reason:
        pytest.skip(reason)
    args = ["--profile", profile] if profile else []
    result = _compose(*args, "config", "-q")
    assert result.returncode == 0, result.stderr
    resolved = json.loads(_compose(*args, "config", "--format", "json").stdout)
    expected = {"seqserve-1", "seqserve-2", "lb", "prometheus", "redis"} | (
        {"grafana"} if profile else set()
    )
    assert set(resolved["services"]) == expected


def test_compose_services_health_and_order() -> None:
    services = compose_file()["services"]
    for name in [*REPLICAS, "lb", "prometheus", "grafana", "redis"]:
        assert "healthcheck" in services[name], f"{name} has no healthcheck"
    for name in REPLICAS:
        svc = services[name]
        assert svc["healthcheck"]["test"][:2] == ["CMD", "python"], "replicas probe gRPC health"
        assert "healthcheck.py" in " ".join(svc["healthcheck"]["test"])
        assert svc["image"] == services["seqserve-1"]["image"]
    assert "build" in services["seqserve-1"]
    assert all(services[r].get("init") is True for r in REPLICAS), "tini forwards SIGTERM"
    lb_deps = services["lb"]["depends_on"]
    assert set(lb_deps) == REPLICAS
    assert all(d["condition"] == "service_healthy" for d in lb_deps.values())
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_grafana_is_optional_and_nothing_else_is() -> None:
    services = compose_file()["services"]
    assert services["grafana"]["profiles"] == ["grafana"]
    assert [n for n, s in services.items() if s.get("profiles")] == ["grafana"]


def test_published_ports_default_to_localhost() -> None:
    services = compose_file()["services"]
    published = {n: s["ports"] for n, s in services.items() if "ports" in s}
    assert set(published) == {"lb", "prometheus", "grafana"}, "replicas are reached via the LB"
    for name, ports in published.items():
        for port in ports:
            assert port.startswith("${SEQSERVE_BIND:-127.0.0.1}:"), (name, port)


def test_replicas_serve_mutual_tls_and_tokens_from_a_read_only_mount() -> None:
    services = compose_file()["services"]
    for name in REPLICAS:
        svc = services[name]
        env = svc["environment"]
        assert env["SEQSERVE_TLS_CERT"] == "/certs/server.crt"
        assert env["SEQSERVE_TLS_KEY"] == "/certs/server.key"
        assert env["SEQSERVE_TLS_CLIENT_CA"] == "/certs/ca.crt"
        assert env["SEQSERVE_AUTH_TOKENS_FILE"] == "/certs/tokens.yaml"
        assert env["HEALTHCHECK_TLS_CA"] == "/certs/ca.crt", "the probe speaks TLS"
        assert CERTS_MOUNT in svc["volumes"]
    assert CERTS_MOUNT in services["lb"]["volumes"]


def test_containers_are_read_only_unprivileged_and_limited() -> None:
    for name, svc in compose_file()["services"].items():
        assert svc.get("read_only") is True, name
        assert "/tmp" in svc.get("tmpfs", []), f"{name}: no writable /tmp"
        assert svc.get("cap_drop") == ["ALL"], name
        assert set(svc.get("cap_add", [])) <= {"CHOWN", "SETGID", "SETUID"}, name
        assert "no-new-privileges:true" in svc.get("security_opt", []), name
        limits = svc["deploy"]["resources"]["limits"]
        assert limits.get("cpus") and limits.get("memory"), name
    assert "cap_add" not in compose_file()["services"]["seqserve-1"]


def test_prometheus_and_grafana_admin_are_closed() -> None:
    services = compose_file()["services"]
    assert not any("enable-lifecycle" in arg for arg in services["prometheus"]["command"])
    env = services["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    secret = compose_file()["secrets"]["grafana_admin_password"]
    assert secret["file"] == "${SEQSERVE_CERTS_DIR:-./deploy/certs}/grafana-admin-password"


def test_replicas_share_a_session_key_and_a_store_on_the_compose_network() -> None:
    """Sessions outlive their replica: every replica reads the session key from the read-only
    /certs mount (`make certs` writes session.keys) and writes to the `redis` service, which
    starts first, persists nothing and publishes no port."""
    services = compose_file()["services"]
    for name in REPLICAS:
        env = services[name]["environment"]
        assert env["SEQSERVE_SESSION_KEY_FILE"] == "/certs/session.keys"
        assert env["SEQSERVE_SESSION_STORE"] == "redis://redis:6379/0"
        assert env["SEQSERVE_SESSION_STORE_WRITE"] == "${SEQSERVE_SESSION_STORE_WRITE:-on-drain}"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert CERTS_MOUNT in services[name]["volumes"]
    redis = services["redis"]
    assert "ports" not in redis and redis["expose"] == ["6379"]
    command = redis["command"]
    assert command[0] == "redis-server"
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options["--save"] == "" and options["--appendonly"] == "no", "nothing persisted"
    assert options["--maxmemory-policy"] == "noeviction"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert redis["user"] != "root"


# --- load balancer ----------------------------------------------------------------------------


def nginx_conf() -> str:
    return re.sub(r"#.*", "", (DEPLOY / "nginx" / "nginx.conf").read_text())


def upstream_servers(conf: str, name: str) -> tuple[set[str], str]:
    block = re.search(rf"upstream\s+{name}\s*\{{(.*?)\}}", conf, re.S)
    assert block, f"no `upstream {name}` block"
    return set(re.findall(r"^\s*server\s+([\w.-]+):8500\b", block.group(1), re.M)), block.group(1)


def test_nginx_balances_grpc_over_both_replicas() -> None:
    conf = nginx_conf()
    servers, _ = upstream_servers(conf, "seqserve")
    assert servers == REPLICAS
    assert re.search(r"listen\s+8500\s+ssl\s+http2", conf)
    assert "grpc_pass grpcs://$seqserve_upstream;" in conf


def test_nginx_routes_a_sequence_by_its_header_to_one_replica() -> None:
    """Calls with `seqserve-sequence-id` go by a consistent hash of it (every call of a sequence
    to the replica holding its state), over the same replicas; calls without it round robin."""
    conf = nginx_conf()
    servers, block = upstream_servers(conf, "seqserve_sequences")
    assert servers == REPLICAS
    assert re.search(r"^\s*hash\s+\$http_seqserve_sequence_id\s+consistent;", block, re.M)
    assert "hash" not in upstream_servers(conf, "seqserve")[1], "the default stays round robin"
    mapping = re.search(
        r"map\s+\$http_seqserve_sequence_id\s+\$seqserve_upstream\s*\{(.*?)\}", conf, re.S
    )
    assert mapping, "no map from the header to the upstream"
    entries = dict(re.findall(r'^\s*("[^"]*"|\S+)\s+(\S+);', mapping.group(1), re.M))
    assert entries == {'""': "seqserve", "default": "seqserve_sequences"}


def test_nginx_terminates_tls_and_reencrypts_with_a_client_certificate() -> None:
    """Callers reach the LB over TLS; the LB verifies the replicas and presents the client
    certificate their mutual TLS requires (all files from `make certs`, mounted at /certs)."""
    conf = nginx_conf()
    directives = dict(re.findall(r"^\s*(\w+)\s+([^;]+);", conf, re.M))
    assert directives["ssl_certificate"] == "/certs/server.crt"
    assert directives["ssl_certificate_key"] == "/certs/server.key"
    assert directives["grpc_ssl_verify"] == "on"
    assert directives["grpc_ssl_trusted_certificate"] == "/certs/ca.crt"
    assert directives["grpc_ssl_certificate"] == "/certs/client.crt"
    assert directives["grpc_ssl_certificate_key"] == "/certs/client.key"
    assert "grpc://" not in conf, "no plaintext hop"


def nginx_seconds(value: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return int(value[:-1]) * units[value[-1]] if value[-1] in units else int(value)


def test_nginx_lets_sessions_run_long_and_large() -> None:
    """client_max_body_size counts a whole HTTP/2 stream: a session's messages add up, so it
    must be unbounded (single messages are bounded by the server); timeouts outlast a session's
    idle timeout."""
    conf = nginx_conf()
    sizes = re.findall(r"client_max_body_size\s+(\S+);", conf)
    assert sizes == ["0"], sizes
    for directive in ("grpc_read_timeout", "grpc_send_timeout", "client_body_timeout"):
        found = re.findall(rf"{directive}\s+(\w+);", conf)
        assert found and nginx_seconds(found[0]) >= 3600, (directive, found)


# --- Prometheus -------------------------------------------------------------------------------


def test_prometheus_scrapes_every_replica() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {t for sc in jobs["seqserve"]["static_configs"] for t in sc["targets"]}
    assert targets == {f"{r}:8502" for r in REPLICAS}
    assert jobs["seqserve"].get("metrics_path", "/metrics") == "/metrics"
    for sc in jobs["seqserve"]["static_configs"]:
        assert sc["labels"]["replica"] + ":8502" == sc["targets"][0]
    # Scaling stays consistent: every replica service is scraped and balanced.
    replicas = {n for n in compose_file()["services"] if n.startswith("seqserve-")}
    assert replicas == REPLICAS


# --- Grafana ----------------------------------------------------------------------------------


def test_grafana_provisioning_parses() -> None:
    prov = DEPLOY / "grafana" / "provisioning"
    datasources = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus"
    assert ds["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((prov / "dashboards" / "seqserve.yml").read_text())["providers"]
    mounts = compose_file()["services"]["grafana"]["volumes"]
    dash_mount = next(m for m in mounts if m.startswith("./deploy/grafana/dashboards:"))
    assert providers[0]["options"]["path"] == dash_mount.split(":")[1]
    dashboard = json.loads(DASHBOARD.read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"]}
    assert uids == {ds["uid"]}


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or"}
PROMQL_WORDS |= {"unless", "offset", "bool", "le", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers outside matchers, ranges and groupings."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # groupings
    names = set(re.findall(r"(?<![\w$])([a-zA-Z_:][\w:]*)\b(?!\s*\()", expr))
    return {n for n in names if n.lower() not in PROMQL_WORDS}


def test_metric_names_parser() -> None:
    expr = 'histogram_quantile(0.99, sum by (le, model) (rate(x_bucket{code!="OK"}[$__rate_interval])))'
    assert metric_names(expr) == {"x_bucket"}


def test_dashboard_uses_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(dashboard["panels"]) >= 6 and exprs
    used: set[str] = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= METRICS, f"{expr!r} uses {names - METRICS}"
        used |= names
    assert used == METRICS, f"no panel for {METRICS - used}"
    quantiles = " ".join(exprs)
    for q in ("0.5", "0.99"):
        assert f"histogram_quantile({q}, sum by (le, model) " in quantiles
    assert 'code!="OK"' in quantiles, "no errors-by-code panel"
    for variable in dashboard["templating"]["list"]:
        assert metric_names(variable["definition"].split("(", 1)[1].split(",")[0]) <= METRICS


# --- image ------------------------------------------------------------------------------------


def test_dockerfile_essentials() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in lines
    assert "STOPSIGNAL SIGTERM" in lines
    assert re.search(r"^CMD \[.*\]$", text, re.M), "CMD must be exec form"
    assert re.search(r"^USER (?!root)\w+", text, re.M), "runs as a non-root user"
    assert re.search(r"^HEALTHCHECK .*\n?.*healthcheck\.py", text, re.M)
    assert "--no-index" in text, "installs from the wheelhouse only"
    assert "ENV" in text and "SEQSERVE_HOST=0.0.0.0" in text


def test_dockerignore_sends_only_artifacts() -> None:
    patterns = [
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert patterns[0] == "*", "deny by default"
    assert not any(
        "training" in p or (p.endswith(".py") and "healthcheck" not in p) for p in patterns
    )
    assert "!models/*/*/model.keras" in patterns


def test_healthcheck_probe_reports_unreachable_server() -> None:
    probe = subprocess.run(
        [sys.executable, str(DEPLOY / "healthcheck.py")],
        env={**os.environ, "HEALTHCHECK_TARGET": "127.0.0.1:1"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert probe.returncode == 1
    assert "unhealthy" in probe.stderr


@pytest.mark.parametrize("script", sorted(p.name for p in DEPLOY.rglob("*.sh")))
def test_shell_scripts_parse(script: str) -> None:
    path = next(DEPLOY.rglob(script))
    assert os.access(path, os.X_OK), f"{script} is not executable"
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr

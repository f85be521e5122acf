"""The Kubernetes and KServe manifests (deploy/kubernetes/): rendered, validated, consistent.

Every kustomization is rendered with `kubectl kustomize`; each object is validated against the
Kubernetes schemas of every supported version (kubernetes-validate's, strict: unknown fields
fail), the ServiceMonitor against prometheus-operator's fields and the KServe objects against
KServe's own types (deploy/kubernetes/schemas/). Then the pieces are checked against each other
and against the server: ports, probes, labels and selectors, the balancer's hash header, the
environment variables (`seqserve_server.config.Settings`), the metric the autoscaler reads. The
two shell scripts the manifests carry (the model repository's init container, the KServe layout)
run here on temporary directories.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import referencing
import yaml
from kubernetes_validate import utils as kv

from deploy.make_certs import Authority, write_session_keys
from seqserve_server.config import Settings
from seqserve_server.core.session_store import WriteMode
from seqserve_server.core.session_tokens import SessionKeys
from seqserve_server.metrics import ServerMetrics
from tests.support import redis_server
from tests.support.server_process import served

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
SCHEMAS = K8S / "schemas"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "seqserve.json"
HEALTHCHECK = ROOT / "deploy" / "healthcheck.py"

KUSTOMIZATIONS = ["base", "overlays/dev", "overlays/production", "kserve"]
SERVER_OVERLAYS = KUSTOMIZATIONS[:3]
# The Kubernetes versions the manifests are written for (native gRPC probes: 1.27 and later).
VERSIONS = ["1.29", "1.31", "1.33", "1.35"]
SEQUENCE_HEADER = "seqserve-sequence-id"  # shared with the compose balancer (deploy/nginx)
CRD_KINDS = {"ServiceMonitor", "ServingRuntime", "InferenceService"}
K8S_DEFS = "https://kubernetes.io/api/_definitions.json"
# The dev overlay's session key: the file `make certs` writes (gitignored), outside the overlay,
# so that overlay renders with kustomize's load restrictor off.
DEV_SESSION_KEYS = ROOT / "deploy" / "certs" / "session.keys"
READS_OUTSIDE = {"overlays/dev"}


# --- rendering --------------------------------------------------------------------------------


@cache
def dev_session_keys() -> str:
    """A session key file as `make certs` writes it (deploy/certs/ may not exist here)."""
    with tempfile.TemporaryDirectory() as directory:
        write_session_keys(Path(directory) / "session.keys")
        return (Path(directory) / "session.keys").read_text()


@cache
def render(kustomization: str) -> tuple[dict[str, Any], ...]:
    """`kubectl kustomize`; an overlay that reads deploy/certs/ is rendered from a copy of
    deploy/ (kubernetes, grafana) with dev_session_keys() there, not from the working tree."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (it renders the kustomizations)")
    with tempfile.TemporaryDirectory() as directory:
        k8s, flags = K8S, []
        if kustomization in READS_OUTSIDE:
            deploy = Path(directory) / "deploy"
            for part in ("kubernetes", "grafana"):
                shutil.copytree(ROOT / "deploy" / part, deploy / part)
            keys = deploy / DEV_SESSION_KEYS.relative_to(ROOT / "deploy")
            keys.parent.mkdir()
            keys.write_text(dev_session_keys())
            k8s, flags = deploy / "kubernetes", ["--load-restrictor", "LoadRestrictionsNone"]
        result = subprocess.run(
            ["kubectl", "kustomize", *flags, str(k8s / kustomization)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(kustomization: str, kind: str) -> list[dict[str, Any]]:
    return [o for o in render(kustomization) if o["kind"] == kind]


def one(kustomization: str, kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects(kustomization, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kustomization}: {kind}/{name} x{len(found)}"
    return found[0]


def container(deployment: dict[str, Any], name: str, init: bool = False) -> dict[str, Any]:
    key = "initContainers" if init else "containers"
    return next(c for c in deployment["spec"]["template"]["spec"][key] if c["name"] == name)


def env_of(c: dict[str, Any]) -> dict[str, str]:
    names = [e["name"] for e in c.get("env", [])]
    assert len(names) == len(set(names)), f"duplicate env in {c['name']}: {names}"
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_kustomization_renders(kustomization: str) -> None:
    kinds = {o["kind"] for o in render(kustomization)}
    if kustomization == "kserve":
        assert kinds == {"ServingRuntime", "InferenceService"}
    else:
        assert {"Deployment", "Service", "NetworkPolicy", "HorizontalPodAutoscaler",
                "PodDisruptionBudget", "ServiceMonitor", "ConfigMap"} <= kinds  # fmt: skip


# --- schemas ----------------------------------------------------------------------------------


@cache
def k8s_registry(version: str) -> referencing.Registry:  # type: ignore[type-arg]
    """kubernetes-validate's strict definitions for `version`, loaded once."""
    definitions = kv.schema_contents(
        f"kubernetes-json-schema/v{version}.0-local-strict/_definitions.json", version
    )
    return referencing.Resource.from_contents(definitions) @ referencing.Registry()


def k8s_schema(kind: str, api_version: str, version: str) -> dict[str, Any]:
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema: dict[str, Any] = kv.schema_contents(
        f"kubernetes-json-schema/v{version}.0-local-strict/{kind.lower()}-{group}.json", version
    )
    return schema


def crd_schema(kind: str) -> dict[str, Any]:
    if kind == "ServiceMonitor":
        schema: dict[str, Any] = json.loads((SCHEMAS / "servicemonitor.json").read_text())
        return schema
    kserve = json.loads((SCHEMAS / "kserve.json").read_text())
    return {**kserve, **kserve["kinds"][kind]}


def validate(obj: dict[str, Any], version: str) -> None:
    kind = obj["kind"]
    schema = crd_schema(kind) if kind in CRD_KINDS else k8s_schema(kind, obj["apiVersion"], version)
    validator = jsonschema.Draft202012Validator(schema, registry=k8s_registry(version))
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message[:300]}"
        for e in validator.iter_errors(obj)
    ]
    assert not errors, f"{kind}/{obj['metadata']['name']} (Kubernetes {version}): {errors}"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_object_validates(kustomization: str, version: str) -> None:
    for obj in render(kustomization):
        validate(obj, version)


def test_validation_catches_mistakes() -> None:
    """The schemas are strict: a misspelt field fails in Kubernetes' and in the CRDs' objects."""
    deployment = json.loads(json.dumps(one("base", "Deployment", "seqserve")))
    container(deployment, "seqserve")["readinessProbe"]["grpc"]["prot"] = 8500
    runtime = json.loads(json.dumps(objects("kserve", "ServingRuntime")[0]))
    runtime["spec"]["supportedModelFormat"] = runtime["spec"].pop("supportedModelFormats")
    isvc = json.loads(json.dumps(objects("kserve", "InferenceService")[0]))
    del isvc["spec"]["predictor"]["model"]["modelFormat"]  # required
    monitor = json.loads(json.dumps(objects("base", "ServiceMonitor")[0]))
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    for broken in (deployment, runtime, isvc, monitor):
        with pytest.raises(AssertionError):
            validate(broken, VERSIONS[-1])


# --- the server's pods ------------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", SERVER_OVERLAYS)
def test_server_pod_matches_the_server_and_the_image(kustomization: str) -> None:
    deployment = one(kustomization, "Deployment", "seqserve")
    pod = deployment["spec"]["template"]["spec"]
    server = container(deployment, "seqserve")
    env = env_of(server)
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    # Ports: container ports == the server's flags == the scrape annotation.
    assert ports == {
        "grpc": int(env["SEQSERVE_PORT"]),
        "metrics": int(env["SEQSERVE_METRICS_PORT"]),
    }
    assert env["SEQSERVE_HOST"] == "0.0.0.0"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    assert annotations["prometheus.io/scrape"] == "true"
    # Every SEQSERVE_* variable, in any container and however it gets its value, is a flag of
    # `seqserve serve`; the server's, with a value it accepts.
    names = {
        e["name"].removeprefix("SEQSERVE_").lower()
        for c in pod["containers"] + pod["initContainers"]
        for e in c.get("env", [])
        if e["name"].startswith("SEQSERVE_")
    }
    assert names <= set(Settings.model_fields), names - set(Settings.model_fields)
    flags = {
        k.removeprefix("SEQSERVE_").lower(): v for k, v in env.items() if k.startswith("SEQSERVE_")
    }
    Settings(**flags)  # type: ignore[arg-type]
    # ... and no Service injects one (docker-link variables: seqserve-metrics would set
    # SEQSERVE_METRICS_PORT=tcp://...).
    assert pod["enableServiceLinks"] is False
    # Probes: the standard gRPC health service on the gRPC port (or, behind TLS, the image's
    # health check, which reads SEQSERVE_PORT).
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = server[probe]
        if "grpc" in spec:
            assert spec["grpc"]["port"] == ports["grpc"] and "service" not in spec["grpc"]
        else:
            assert spec["exec"]["command"][-1] == "/usr/local/lib/seqserve/healthcheck.py"
            assert "SEQSERVE_TLS_CERT" in env and "HEALTHCHECK_TLS_CA" in env
    # Draining (SEQSERVE_GRACE_PERIOD_S after the preStop pause; the handoffs and the store
    # writes happen within it) ends before SIGKILL, with at least compose's margin
    # (stop_grace_period 20 s for a grace period of 10 s).
    pause = int(server["lifecycle"]["preStop"]["exec"]["command"][-1])
    drain = pause + float(env["SEQSERVE_GRACE_PERIOD_S"])
    assert pod["terminationGracePeriodSeconds"] >= drain + 10
    # The Dockerfile's user, no privileges, a read-only root with a writable /tmp.
    uid = int(re.search(r"--uid (\d+)", (ROOT / "Dockerfile").read_text())[1])  # type: ignore[index]
    assert pod["securityContext"]["runAsUser"] == uid and pod["securityContext"]["runAsNonRoot"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for c in pod["containers"] + pod["initContainers"]:
        context = c["securityContext"]
        assert context["readOnlyRootFilesystem"] and not context["allowPrivilegeEscalation"]
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert c["resources"]["requests"] and c["resources"]["limits"]
        for mount in c["volumeMounts"]:
            assert mount["name"] in volumes
    mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]] and env["TMPDIR"] == "/tmp"
    assert mounts[env["SEQSERVE_MODEL_REPOSITORY"]] == "model-repository"
    # Every file the server is pointed at lies in a mounted volume (Secrets in production).
    for name in ("SEQSERVE_TLS_CERT", "SEQSERVE_TLS_KEY", "SEQSERVE_TLS_CLIENT_CA",
                 "SEQSERVE_AUTH_TOKENS_FILE", "SEQSERVE_SESSION_KEY_FILE", "HEALTHCHECK_TLS_CA",
                 "HEALTHCHECK_TLS_CERT"):  # fmt: skip
        if name in env:
            directory = str(Path(env[name]).parent)
            assert "secret" in volumes[mounts[directory]], name


@pytest.mark.parametrize("kustomization", SERVER_OVERLAYS)
def test_services_policies_and_scaling_select_the_right_pods(kustomization: str) -> None:
    server = one(kustomization, "Deployment", "seqserve")
    balancer = one(kustomization, "Deployment", "seqserve-envoy")
    server_ports = {p["name"]: p["containerPort"] for p in container(server, "seqserve")["ports"]}
    envoy_ports = {p["name"]: p["containerPort"] for p in container(balancer, "envoy")["ports"]}
    for deployment in (server, balancer):
        assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels(deployment))
    # Services: selectors and named target ports.
    for name, target, ports in (
        ("seqserve-grpc", server, server_ports),
        ("seqserve-metrics", server, server_ports),
        ("seqserve", balancer, envoy_ports),
    ):
        service = one(kustomization, "Service", name)
        assert selects(service["spec"]["selector"], pod_labels(target)), name
        assert not selects(
            service["spec"]["selector"], pod_labels(balancer if target is server else server)
        )
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (name, port)
    grpc = one(kustomization, "Service", "seqserve-grpc")
    assert grpc["spec"]["clusterIP"] == "None" and grpc["spec"]["ports"][0]["appProtocol"] == "grpc"
    # NetworkPolicy: gRPC only from the balancer, metrics only from Prometheus.
    policy = one(kustomization, "NetworkPolicy", "seqserve-server")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels(server))
    rules = {r["ports"][0]["port"]: r["from"] for r in policy["spec"]["ingress"]}
    assert set(rules) == set(server_ports.values())
    assert selects(
        rules[server_ports["grpc"]][0]["podSelector"]["matchLabels"], pod_labels(balancer)
    )
    prometheus = rules[server_ports["metrics"]][0]
    assert prometheus["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    # HPA on the server Deployment; PDBs select their pods.
    hpa = one(kustomization, "HorizontalPodAutoscaler", "seqserve")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "seqserve",
    }
    assert hpa["spec"]["minReplicas"] <= server["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    for pdb, target in (("seqserve", server), ("seqserve-envoy", balancer)):
        selector = one(kustomization, "PodDisruptionBudget", pdb)["spec"]["selector"]["matchLabels"]
        assert selects(selector, pod_labels(target))


@pytest.mark.parametrize("kustomization", SERVER_OVERLAYS)
def test_metrics_reach_prometheus_the_adapter_and_the_autoscaler(kustomization: str) -> None:
    exported = {m.name for m in ServerMetrics().registry.collect()}
    hpa = one(kustomization, "HorizontalPodAutoscaler", "seqserve")
    custom = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert custom and {m["type"] for m in hpa["spec"]["metrics"]} == {"Resource", "Pods"}
    rules = yaml.safe_load(
        one(kustomization, "ConfigMap", "seqserve-prometheus-adapter-rules")["data"]["config.yaml"]
    )["rules"]
    served_as = {r["name"]["as"]: r["seriesQuery"].split("{")[0] for r in rules}
    for metric in custom:
        assert served_as[metric] in exported, metric
    # The ServiceMonitor finds the metrics Service and its port.
    monitor = objects(kustomization, "ServiceMonitor")[0]
    service = one(kustomization, "Service", "seqserve-metrics")
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {
        p["name"] for p in service["spec"]["ports"]
    }
    # The Grafana dashboard is the compose stack's file itself.
    dashboard = one(kustomization, "ConfigMap", "seqserve-grafana-dashboard")
    assert dashboard["data"]["seqserve.json"] == DASHBOARD.read_text()
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"


# --- sessions that outlive their replica: the session store and the session key ---------------

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SESSION_KEYS_SECRET = "seqserve-session-keys"


def compose_default(value: str) -> str:
    """`${NAME:-default}` -> default (compose's own default for a variable)."""
    match = re.fullmatch(r"\$\{\w+:-([^}]*)\}", value)
    return match[1] if match else value


def hardened(deployment: dict[str, Any]) -> None:
    """The pod rules every Deployment here follows (the restricted Pod Security Standard)."""
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    for c in pod["containers"]:
        context = c["securityContext"]
        assert context["readOnlyRootFilesystem"] and not context["allowPrivilegeEscalation"]
        assert context["runAsNonRoot"] and context["capabilities"] == {"drop": ["ALL"]}
        assert c["resources"]["requests"] and c["resources"]["limits"]
        for mount in c["volumeMounts"]:
            assert "emptyDir" in volumes[mount["name"]] or mount.get("readOnly"), mount


@pytest.mark.parametrize("kustomization", SERVER_OVERLAYS)
def test_every_deployment_is_hardened(kustomization: str) -> None:
    deployments = objects(kustomization, "Deployment")
    assert {d["metadata"]["name"] for d in deployments} == {
        "seqserve", "seqserve-envoy", "seqserve-redis"
    }  # fmt: skip
    for deployment in deployments:
        hardened(deployment)


@pytest.mark.parametrize("kustomization", SERVER_OVERLAYS)
def test_session_store_runs_like_the_compose_one_and_only_seqserve_reaches_it(
    kustomization: str,
) -> None:
    redis = one(kustomization, "Deployment", "seqserve-redis")
    service = one(kustomization, "Service", "seqserve-redis")
    server = one(kustomization, "Deployment", "seqserve")
    balancer = one(kustomization, "Deployment", "seqserve-envoy")
    compose = COMPOSE["services"]["redis"]
    # One store (never two behind the Service, even during an update), compose's image and
    # command: nothing persisted, bounded memory without eviction, its files on an emptyDir.
    assert redis["spec"]["replicas"] == 1 and redis["spec"]["strategy"] == {"type": "Recreate"}
    assert selects(redis["spec"]["selector"]["matchLabels"], pod_labels(redis))
    store = container(redis, "redis")
    assert store["image"] == compose_default(compose["image"]) == "redis:7.2"
    assert store["args"] == compose["command"]
    args = dict(zip(store["args"][1::2], store["args"][2::2], strict=True))
    assert args["--save"] == "" and args["--appendonly"] == "no"
    assert args["--maxmemory-policy"] == "noeviction"
    maxmemory = int(args["--maxmemory"].removesuffix("mb")) * 2**20
    limit = store["resources"]["limits"]["memory"]
    assert limit.endswith("Mi") and maxmemory < int(limit.removesuffix("Mi")) * 2**20
    hardened(redis)
    pod = redis["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in store["volumeMounts"]}
    assert "emptyDir" in volumes[mounts[args["--dir"]]]
    for probe in ("readinessProbe", "livenessProbe"):
        assert store[probe]["exec"]["command"] == ["redis-cli", "ping"]
        assert compose["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    ports = {p["name"]: p["containerPort"] for p in store["ports"]}
    assert ports == {"redis": 6379}
    # The Service reaches the store's pod and no other.
    assert service["spec"]["type"] == "ClusterIP"
    assert selects(service["spec"]["selector"], pod_labels(redis))
    for other in (server, balancer):
        assert not selects(service["spec"]["selector"], pod_labels(other))
    (port,) = service["spec"]["ports"]
    assert port["port"] == 6379 and port["targetPort"] == "redis"
    # NetworkPolicy: 6379 from the seqserve server pods only (not the balancer, not the world).
    policy = one(kustomization, "NetworkPolicy", "seqserve-redis")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels(redis))
    for other in (server, balancer):
        assert not selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels(other))
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}  # this namespace only
    assert selects(peer["podSelector"]["matchLabels"], pod_labels(server))
    assert not selects(peer["podSelector"]["matchLabels"], pod_labels(balancer))
    # No other policy selects the store's pod (one that did would widen who reaches it).
    assert [
        p["metadata"]["name"]
        for p in objects(kustomization, "NetworkPolicy")
        if selects(p["spec"]["podSelector"]["matchLabels"], pod_labels(redis))
    ] == ["seqserve-redis"]


@pytest.mark.parametrize("kustomization", SERVER_OVERLAYS)
def test_server_reaches_the_store_and_reads_the_shared_session_key(kustomization: str) -> None:
    deployment = one(kustomization, "Deployment", "seqserve")
    pod = deployment["spec"]["template"]["spec"]
    server = container(deployment, "seqserve")
    env = env_of(server)
    settings = Settings(
        session_key_file=env["SEQSERVE_SESSION_KEY_FILE"],  # type: ignore[arg-type]
        session_store=env["SEQSERVE_SESSION_STORE"],
        session_store_write=env["SEQSERVE_SESSION_STORE_WRITE"],  # type: ignore[arg-type]
    )
    # The store URL names the redis Service and its port (same namespace: the short name).
    service = one(kustomization, "Service", "seqserve-redis")
    match = re.fullmatch(r"redis://([\w.-]+):(\d+)/(\d+)", settings.session_store or "")
    assert match, settings.session_store
    assert match[1] == service["metadata"]["name"]
    assert int(match[2]) in {p["port"] for p in service["spec"]["ports"]}
    # Written on drain, as compose does by default.
    compose = COMPOSE["x-seqserve"]["environment"]
    assert settings.session_store_write == WriteMode(
        compose_default(compose["SEQSERVE_SESSION_STORE_WRITE"])
    )
    # The key file: key `session.keys` of the Secret every replica mounts read-only.
    key_file = Path(env["SEQSERVE_SESSION_KEY_FILE"])
    (mount,) = [m for m in server["volumeMounts"] if m["mountPath"] == str(key_file.parent)]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    secret = volume["secret"]
    assert secret["items"] == [{"key": "session.keys", "path": key_file.name}]
    assert "optional" not in secret  # no key, no start: a replica without it cannot resume
    assert secret["defaultMode"] & 0o007 == 0  # not world-readable
    generated = [
        o for o in objects(kustomization, "Secret") if o["metadata"]["name"] == secret["secretName"]
    ]
    if kustomization == "overlays/dev":
        # Generated from the file `make certs` writes (hashed name: a new key rolls the pods).
        (generated_secret,) = generated
        assert secret["secretName"].startswith(SESSION_KEYS_SECRET + "-")
        text = base64.b64decode(generated_secret["data"]["session.keys"]).decode()
        assert text == dev_session_keys()
        assert dev_session_keys_source() == DEV_SESSION_KEYS
    else:
        # Created beforehand (overlays/production lists it with the others).
        assert secret["secretName"] == SESSION_KEYS_SECRET and not generated
        if kustomization == "overlays/production":
            text = (K8S / kustomization / "kustomization.yaml").read_text()
            assert f"#   {SESSION_KEYS_SECRET} session.keys:" in text


def dev_session_keys_source() -> Path:
    """The file the dev overlay's secretGenerator reads, resolved from the overlay."""
    overlay = K8S / "overlays" / "dev"
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    (generator,) = kustomization["secretGenerator"]
    assert generator["name"] == SESSION_KEYS_SECRET
    (source,) = generator["files"]
    key, _, path = source.partition("=")
    assert key == "session.keys"
    return (overlay / path).resolve()


def test_dev_session_key_opens_and_compose_mounts_the_same_file(tmp_path: Path) -> None:
    """The dev overlay's Secret holds a key file the server accepts, from the file compose
    mounts (deploy/certs/session.keys, from `make certs`)."""
    secret = next(
        o
        for o in objects("overlays/dev", "Secret")
        if o["metadata"]["name"].startswith(SESSION_KEYS_SECRET)
    )
    (tmp_path / "session.keys").write_bytes(base64.b64decode(secret["data"]["session.keys"]))
    assert len(SessionKeys.from_file(tmp_path / "session.keys").key_ids) == 1
    compose = COMPOSE["x-seqserve"]
    (volume,) = compose["volumes"]
    source, target, mode = volume.rsplit(":", 2)
    assert mode == "ro" and compose_default(source) == "./deploy/certs"
    assert (ROOT / compose_default(source)).resolve() / "session.keys" == DEV_SESSION_KEYS
    key_file = compose["environment"]["SEQSERVE_SESSION_KEY_FILE"]
    assert key_file == f"{target}/{DEV_SESSION_KEYS.name}"


def envoy_files(kustomization: str) -> dict[str, Any]:
    configs = [
        o
        for o in objects(kustomization, "ConfigMap")
        if o["metadata"]["name"].startswith("seqserve-envoy")
    ]
    assert len(configs) == 1
    return {name: yaml.safe_load(text) for name, text in configs[0]["data"].items()}


@pytest.mark.parametrize("kustomization", SERVER_OVERLAYS)
def test_envoy_hashes_sequences_and_balances_the_rest_per_call(kustomization: str) -> None:
    files = envoy_files(kustomization)
    bootstrap = files["envoy.yaml"]
    for source in ("lds_config", "cds_config"):
        path = bootstrap["dynamic_resources"][source]["path_config_source"]["path"]
        assert Path(path).name in files
    (listener,) = files["listeners.yaml"]["resources"]
    (cluster,) = files["clusters.yaml"]["resources"]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    (route,) = manager["route_config"]["virtual_hosts"][0]["routes"]
    # The one hash input is the sequence header; without it no hash, so a random replica per call.
    assert route["route"]["hash_policy"] == [{"header": {"header_name": SEQUENCE_HEADER}}]
    assert route["route"]["cluster"] == cluster["name"] and cluster["lb_policy"] == "RING_HASH"
    assert "grpc_health_check" in cluster["health_checks"][0]
    # Envoy listens where its container port is, and reaches the headless Service's port.
    balancer = one(kustomization, "Deployment", "seqserve-envoy")
    ports = {p["name"]: p["containerPort"] for p in container(balancer, "envoy")["ports"]}
    assert listener["address"]["socket_address"]["port_value"] == ports["grpc"]
    health = bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert health["port_value"] == ports["health"]
    (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    service = one(kustomization, "Service", "seqserve-grpc")
    assert address == {
        "address": "seqserve-grpc",
        "port_value": service["spec"]["ports"][0]["port"],
    }
    # TLS to the replicas exactly when the replicas serve TLS; the files Envoy reads are mounted.
    server_tls = "SEQSERVE_TLS_CERT" in env_of(
        container(one(kustomization, "Deployment", "seqserve"), "seqserve")
    )
    assert ("transport_socket" in cluster) == server_tls
    mounts = [m["mountPath"] for m in container(balancer, "envoy")["volumeMounts"]]
    text = json.dumps(cluster)
    for filename in re.findall(r'"filename": "([^"]+)"', text):
        assert any(filename.startswith(m + "/") for m in mounts), filename


@pytest.mark.parametrize("kustomization", SERVER_OVERLAYS)
def test_envoy_config_parses_as_envoy_api(kustomization: str) -> None:
    """Every Envoy file against Envoy's own API (xds-protos: the generated data-plane-api):
    unknown fields, wrong types, unknown enum values and unknown typed_config types fail, as
    they would when Envoy loads them. (Envoy's own value constraints are not checked here.)"""
    # Register the extension types the files name in typed_config.
    from envoy.config.bootstrap.v3 import bootstrap_pb2
    from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
    from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
        http_connection_manager_pb2,
    )
    from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401
    from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
    from envoy.service.discovery.v3 import discovery_pb2
    from google.protobuf import json_format

    files = envoy_files(kustomization)
    json_format.ParseDict(files.pop("envoy.yaml"), bootstrap_pb2.Bootstrap())
    for name, content in files.items():
        response = json_format.ParseDict(content, discovery_pb2.DiscoveryResponse())
        assert len(response.resources) == 1, name


def test_production_reads_models_from_a_volume_and_configs_from_a_configmap() -> None:
    deployment = one("overlays/production", "Deployment", "seqserve")
    init = container(deployment, "model-repository", init=True)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}
    source = volumes[mounts[env_of(init)["MODEL_SOURCE"]]]
    assert (
        source["persistentVolumeClaim"]["claimName"]
        == one("overlays/production", "PersistentVolumeClaim", "seqserve-models")["metadata"][
            "name"
        ]
    )
    configs = volumes[mounts[env_of(init)["MODEL_CONFIGS"]]]["configMap"]["name"]
    data = one("overlays/production", "ConfigMap", configs)["data"]
    assert set(data) == {"co2_next_week.yaml"}
    ingress = objects("overlays/production", "Ingress")[0]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "seqserve"  # Envoy, which hashes: not the pods directly
    assert (
        ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
    )


# --- the scripts the manifests carry ----------------------------------------------------------


def run_script(
    c: dict[str, Any], args: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """A container's `sh -c SCRIPT NAME ARGS...` command, run here with `env`."""
    command = [*c["command"], *args]
    assert command[:2] == ["sh", "-c"]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=30, env={**os.environ, **env}
    )


def test_init_container_builds_the_repository_with_configmap_configs(tmp_path: Path) -> None:
    from seqserve_server.core.model_config import read_config

    deployment = one("overlays/production", "Deployment", "seqserve")
    init = container(deployment, "model-repository", init=True)
    source, configs, repository = tmp_path / "models", tmp_path / "configs", tmp_path / "repository"
    shutil.copytree(ROOT / "models" / "co2_next_week", source / "co2_next_week")
    shutil.copytree(ROOT / "models" / "iris_classifier", source / "iris_classifier")
    configs.mkdir()
    repository.mkdir()
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    config_map = one(
        "overlays/production", "ConfigMap", volumes["model-configs"]["configMap"]["name"]
    )
    for key, text in config_map["data"].items():
        (configs / key).write_text(text)
    env = {
        "MODEL_SOURCE": str(source),
        "MODEL_CONFIGS": str(configs),
        "SEQSERVE_MODEL_REPOSITORY": str(repository),
    }
    result = run_script(init, [], env)
    assert result.returncode == 0, result.stderr
    assert (repository / "iris_classifier" / "1" / "model.keras").is_file()
    overridden = read_config(repository / "co2_next_week")
    assert overridden.max_queue_delay_ms == 2 and overridden.max_sessions == 512
    assert read_config(repository / "iris_classifier") == read_config(
        ROOT / "models" / "iris_classifier"
    )
    # A config for a model the repository lacks stops the pod with a reason, not silently.
    (configs / "no_such_model.yaml").write_text("max_batch_size: 4\n")
    failed = run_script(init, [], env)
    assert failed.returncode != 0 and "no_such_model" in failed.stderr


def kserve_layout(tmp_path: Path, storage: Path, name: str) -> Path:
    """Run the ServingRuntime's command on `storage`; the repository it hands the server."""
    runtime = objects("kserve", "ServingRuntime")[0]
    c = runtime["spec"]["containers"][0]
    args = [a.replace("{{.Name}}", name) for a in c["args"]]
    assert args[1] == "/mnt/models" and args[2:] == ["seqserve", "serve"]
    show = [sys.executable, "-c", "import os; print(os.environ['SEQSERVE_MODEL_REPOSITORY'])"]
    (tmp_path / "tmp").mkdir(exist_ok=True)
    result = run_script(c, [args[0], str(storage), *show], {"TMPDIR": str(tmp_path / "tmp")})
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip())


@pytest.mark.parametrize("layout", ["model file", "model directory", "repository"])
def test_kserve_runtime_serves_what_the_storage_initializer_writes(
    tmp_path: Path, layout: str
) -> None:
    from seqserve_server.core.repository import ModelRepository

    storage, model = tmp_path / "mnt-models", ROOT / "models" / "iris_classifier"
    if layout == "model file":
        storage.mkdir()
        shutil.copy(model / "1" / "model.keras", storage / "model.keras")
        shutil.copy(model / "config.yaml", storage / "config.yaml")
        expected = "iris"
    elif layout == "model directory":
        shutil.copytree(model, storage)
        expected = "iris"
    else:
        shutil.copytree(model, storage / "iris_classifier")
        expected = "iris_classifier"
    repository = ModelRepository(kserve_layout(tmp_path, storage, "iris"))
    repository.scan()
    assert [e.name for e in repository.entries()] == [expected]
    (version,) = repository.entry(expected).versions.values()
    assert version.version == 1 and version.config.labels == ["setosa", "versicolor", "virginica"]
    assert (version.path / "model.keras").read_bytes() == (model / "1" / "model.keras").read_bytes()


def test_kserve_objects_fit_together_and_the_server() -> None:
    (runtime,) = objects("kserve", "ServingRuntime")
    (isvc,) = objects("kserve", "InferenceService")
    spec = runtime["spec"]
    c = spec["containers"][0]
    env = env_of(c)
    flags = {
        k.removeprefix("SEQSERVE_").lower(): v for k, v in env.items() if k.startswith("SEQSERVE_")
    }
    assert set(flags) <= set(Settings.model_fields)
    Settings(**flags)  # type: ignore[arg-type]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"h2c": int(env["SEQSERVE_PORT"])}
    assert c["readinessProbe"]["grpc"]["port"] == ports["h2c"]
    assert spec["annotations"]["prometheus.kserve.io/port"] == env["SEQSERVE_METRICS_PORT"]
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] in spec["protocolVersions"] == ["grpc-v2"]
    assert {k: model["modelFormat"][k] for k in ("name", "version")} in [
        {k: f[k] for k in ("name", "version")} for f in spec["supportedModelFormats"]
    ]
    assert model["modelFormat"]["name"] == "keras"


# --- the health check behind TLS -----------------------------------------------------------


def health(target_port: int, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK)], capture_output=True, text=True, timeout=30,
        env={**os.environ, "SEQSERVE_PORT": str(target_port), **env},
    )  # fmt: skip


def mutual_tls(directory: Path) -> tuple[list[str], dict[str, str]]:
    """Certificates for a server (its flags) and for the probe (its environment)."""
    servers, clients = Authority("server CA"), Authority("client CA")
    cert, key = servers.server().write(directory, "server")
    client_cert, client_key = clients.client().write(directory, "client")
    (directory / "servers.pem").write_bytes(servers.pem)
    (directory / "clients.pem").write_bytes(clients.pem)
    flags = [
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        "--tls-client-ca",
        str(directory / "clients.pem"),
    ]
    env = {
        "HEALTHCHECK_TLS_CA": str(directory / "servers.pem"),
        "HEALTHCHECK_TLS_SERVER_NAME": "localhost",
        "HEALTHCHECK_TLS_CERT": str(client_cert),
        "HEALTHCHECK_TLS_KEY": str(client_key),
    }
    return flags, env


def assert_probe_needs_mutual_tls(port: int, env: dict[str, str]) -> None:
    """SERVING over mutual TLS; without the client certificate, or in plaintext (all a kubelet
    gRPC probe can do), the probe fails."""
    ok = health(port, env)
    assert ok.returncode == 0 and ok.stdout.strip() == "SERVING", ok.stderr
    no_client_cert = {
        k: v for k, v in env.items() if k not in ("HEALTHCHECK_TLS_CERT", "HEALTHCHECK_TLS_KEY")
    }
    assert health(port, no_client_cert).returncode == 1
    assert health(port, {}).returncode == 1


def test_health_check_speaks_mutual_tls(tmp_path: Path) -> None:
    """The probe production runs, against the standard health service behind the same kind of
    mutual TLS seqserve serves (gRPC's own server: seconds, not a TensorFlow start)."""
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health as grpc_health
    from grpc_health.v1 import health_pb2_grpc

    flags, env = mutual_tls(tmp_path)
    files = dict(zip(flags[::2], (Path(f).read_bytes() for f in flags[1::2]), strict=True))
    credentials = grpc.ssl_server_credentials(
        [(files["--tls-key"], files["--tls-cert"])],
        files["--tls-client-ca"],
        require_client_auth=True,
    )
    server = grpc.server(futures.ThreadPoolExecutor(2))
    health_pb2_grpc.add_HealthServicer_to_server(grpc_health.HealthServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        assert_probe_needs_mutual_tls(port, env)
    finally:
        server.stop(None)


@pytest.mark.slow
def test_health_check_probes_seqserve_behind_mutual_tls(tmp_path: Path) -> None:
    flags, env = mutual_tls(tmp_path)
    (tmp_path / "repository").mkdir()
    with served(tmp_path / "repository", *flags) as server:
        assert_probe_needs_mutual_tls(server.port, env)


# --- the pod's filesystem -------------------------------------------------------------------

ROOT_FS_SCRIPT = """
set -eu
mount --make-rprivate /
mount -o remount,bind,ro /
mount --bind -o ro "$MODELS" /mnt
mount --bind -o ro "$KEYS" /srv
mount -t tmpfs -o size=256m,mode=1777 tmpfs /tmp
exec setpriv --inh-caps=-all --bounding-set=-all --no-new-privs env -i "$@"
"""


@pytest.mark.slow
def test_server_runs_on_a_read_only_root_like_the_pod(tmp_path: Path) -> None:
    """The Deployment's environment on a read-only root with only /tmp writable (an in-memory
    tmpfs, like the pod's emptyDir) and no capabilities: the server loads, proves and serves
    its models, with its session key (read-only, like the Secret's mount) and a session store.
    A private mount namespace stands in for the container (root and unshare needed); the uid
    stays 0 here because the venv's Python lives under /root."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("setpriv") is None:
        pytest.skip("needs root, unshare and setpriv (a private mount namespace)")
    if not redis_server.available():
        pytest.skip(redis_server.MISSING)
    server = container(one("base", "Deployment", "seqserve"), "seqserve")
    writable = {m["mountPath"] for m in server["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/tmp"}
    models = tmp_path / "models"
    for name in ("iris_classifier", "co2_next_week"):
        shutil.copytree(ROOT / "models" / name, models / name)
    env = {**env_of(server), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    keys = tmp_path / "session-keys"
    keys.mkdir()
    (keys / "session.keys").write_text(dev_session_keys())
    env |= {"SEQSERVE_HOST": "127.0.0.1", "SEQSERVE_PORT": "0", "SEQSERVE_METRICS_PORT": "0",
            "SEQSERVE_MODEL_REPOSITORY": "/mnt", "SEQSERVE_SESSION_KEY_FILE": "/srv/session.keys"}  # fmt: skip
    command = [sys.executable, "-m", "seqserve_server.cli", "serve"]
    with redis_server.redis_server() as store:
        env["SEQSERVE_SESSION_STORE"] = store
        run_like_the_pod(command, env, models, keys)


def run_like_the_pod(command: list[str], env: dict[str, str], models: Path, keys: Path) -> None:
    process = subprocess.Popen(
        ["unshare", "--mount", "--fork", "--kill-child=SIGKILL", "sh", "-c", ROOT_FS_SCRIPT,
         "pod", *(f"{k}={v}" for k, v in env.items()), *command],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "MODELS": str(models), "KEYS": str(keys)},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        log = []
        for line in process.stdout:
            log.append(line)
            if match := re.search(r"seqserve ready on \S+:(\d+) metrics (\d+)", line):
                break
        else:
            pytest.fail("the server did not start:\n" + "".join(log))
        probe = health(int(match[1]), {})
        assert probe.returncode == 0 and probe.stdout.strip() == "SERVING", probe.stderr
        assert "model co2_next_week version 1 ready" in "".join(log)
        write = env["SEQSERVE_SESSION_STORE_WRITE"]
        assert f"(sequences written {write})" in "".join(log), "".join(log)
    finally:
        # unshare ignores SIGTERM while it waits: stop the server itself (its only child).
        child = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True)
        for pid in child.stdout.split():
            os.kill(int(pid), signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()  # --kill-child: the server goes with it
            process.wait(10)

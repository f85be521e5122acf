#!/usr/bin/env bash
# End-to-end test of the compose stack on this machine (`make stack-test`):
#   install what is missing (apt: docker.io iptables debootstrap ca-certificates; compose plugin),
#   start dockerd if none runs (and stop only that one at the end), build the stand-in images once
#   (python:3.11-slim, nginx, prom/prometheus, redis), the wheelhouse and the server image, make this run's
#   own certificates and tokens (deploy/.stack-logs/certs, SEQSERVE_CERTS_DIR; deploy/certs is left
#   alone), `docker compose up` without Grafana, then deploy/stack_check.py: every container
#   read-only without capabilities; plaintext, no token, an unknown token and a token without the
#   model refused; N Predict calls over TLS with a token through the load balancer (equal to Keras);
#   S interleaved Triton sequences routed by the seqserve-sequence-id header (each equal to Predict
#   on the whole sequence); both replicas served; Prometheus scraped both; a sequence continues on
#   the other replica (through the shared session store, redis) after the one holding it stops;
#   20 resumable SDK sessions live through a rolling restart of both replicas. Then
#   `docker compose down -v` (always). STACK_TEST_SCALE=1 also measures 2 replicas vs 1
#   (deploy/stack_scale.py; table in deploy/.stack-logs/scale.md).
# Everything listens on 127.0.0.1 only (free ports picked at start); traffic stays on this machine.
#
# Environment: STACK_TEST_TIMEOUT (s, whole run, default 900), STACK_TEST_CALLS (default 50),
# STACK_TEST_SEQUENCES (default 40), STACK_TEST_KEEP=1 (leave the stack up for a look; still stops
# a dockerd this script started... so use it with an engine that was already running).
# Needs root (apt, dockerd) and .venv (`make venv`).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

TIMEOUT="${STACK_TEST_TIMEOUT:-900}"
if [[ -z "${_STACK_TEST_INNER:-}" ]]; then
  # Bound the whole run: on expiry every process of the run gets SIGTERM (the cleanup trap runs),
  # then SIGKILL 120 s later. dockerd is started in its own session and is stopped by the trap.
  exec timeout --kill-after=120 "$TIMEOUT" env _STACK_TEST_INNER=1 bash "$0" "$@"
fi

PROJECT=seqserve-stacktest
STATE="$ROOT/deploy/.stack-logs"
mkdir -p "$STATE"
PY="$ROOT/.venv/bin/python"
CALLS="${STACK_TEST_CALLS:-50}"
SEQUENCES="${STACK_TEST_SEQUENCES:-40}"
START=$SECONDS
DOCKERD_PID=""
COMPOSE_STARTED=""
log() { printf '[stack-test %4ds] %s\n' "$((SECONDS - START))" "$*"; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [[ $rc -eq 143 ]] && log "timed out or terminated (STACK_TEST_TIMEOUT=${TIMEOUT}s)"
  if [[ -n "$COMPOSE_STARTED" ]]; then
    if [[ $rc -ne 0 ]]; then
      log "FAILED (exit $rc): container state and logs follow (also in $STATE/compose.log)"
      "${COMPOSE[@]}" ps -a || true
      "${COMPOSE[@]}" logs --no-color >"$STATE/compose.log" 2>&1 || true
      tail -n 60 "$STATE/compose.log" || true
    fi
    if [[ -z "${STACK_TEST_KEEP:-}" ]]; then
      rm -f "$STATE/tokens.json"
      log "docker compose down -v"
      timeout 90 "${COMPOSE[@]}" down -v --remove-orphans --timeout 20 >/dev/null 2>&1 \
        || log "compose down failed"
    fi
  fi
  if [[ -n "$DOCKERD_PID" ]]; then
    log "stopping the dockerd this run started (pid $DOCKERD_PID)"
    kill -TERM "$DOCKERD_PID" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$DOCKERD_PID" 2>/dev/null && log "dockerd $DOCKERD_PID still running" || true
    rm -f "$STATE/dockerd.pid"
  fi
  log "done in $((SECONDS - START))s: $([[ $rc -eq 0 ]] && echo PASSED || echo "FAILED ($rc)")"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# --- 1. tools ----------------------------------------------------------------------------------
[[ -x "$PY" ]] || { echo "no .venv: run 'make venv' first" >&2; exit 1; }
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker >/dev/null || missing+=(docker.io)
command -v iptables >/dev/null || missing+=(iptables)
command -v debootstrap >/dev/null || missing+=(debootstrap)
[[ -s /etc/ssl/certs/ca-certificates.crt ]] || missing+=(ca-certificates)
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    $(printf '%s\n' "${missing[@]}" | sort -u) >"$STATE/apt.log" 2>&1
fi
PYTHON="$PY" deploy/install_compose.sh >/dev/null 2>&1 || deploy/install_compose.sh

# --- 2. engine ---------------------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd (log: $STATE/dockerd.log)"
  setsid dockerd >"$STATE/dockerd.log" 2>&1 </dev/null &
  DOCKERD_PID=$!
  echo "$DOCKERD_PID" >"$STATE/dockerd.pid"
  for _ in $(seq 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { tail -n 20 "$STATE/dockerd.log" >&2; exit 1; }
fi
log "engine: $(docker info --format '{{.ServerVersion}}'), $(docker compose version)"

# --- 3. images ---------------------------------------------------------------------------------
log "stand-in images (built once, then cached)"
deploy/images/build.sh 2>&1 | grep -v -e DEPRECATED -e 'legacy builder' -e buildx -e '^ *$' || true
docker image inspect python:3.11-slim nginx:1.27 prom/prometheus:v2.53.0 redis:7.2 >/dev/null
log "wheelhouse"
deploy/build_wheelhouse.sh 2>&1 | grep -v '^WARNING: Location' || true
ls deploy/.wheelhouse/project/seqserve_server-*.whl >/dev/null
if [[ -f models/iris_classifier/1/model.keras && -f models/co2_next_week/1/model.keras ]]; then
  export SEQSERVE_MODEL_SOURCE=models
else
  log "models/iris_classifier or co2_next_week not trained yet: building stand-in models"
  rm -rf deploy/.stack-models
  "$PY" deploy/stack_models.py deploy/.stack-models 2>/dev/null
  export SEQSERVE_MODEL_SOURCE=deploy/.stack-models
fi

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export SEQSERVE_BIND=127.0.0.1
SEQSERVE_LB_PORT="$(free_port)"
PROMETHEUS_PORT="$(free_port)"
export SEQSERVE_LB_PORT PROMETHEUS_PORT
# This run's own certificates and tokens (the tokens themselves only in $STATE/tokens.json).
export SEQSERVE_CERTS_DIR="$STATE/certs"
rm -rf "$SEQSERVE_CERTS_DIR"
"$PY" -m deploy.stack_check prepare --certs "$SEQSERVE_CERTS_DIR" --secrets "$STATE/tokens.json"
COMPOSE=(docker compose --project-directory "$ROOT" -f "$ROOT/docker-compose.yml" -p "$PROJECT")

log "building the server image (models from $SEQSERVE_MODEL_SOURCE)"
"${COMPOSE[@]}" build >"$STATE/build.log" 2>&1 || { tail -n 40 "$STATE/build.log" >&2; exit 1; }
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' seqserve/server

# --- 4. stack ----------------------------------------------------------------------------------
log "docker compose up (no Grafana): LB 127.0.0.1:$SEQSERVE_LB_PORT, Prometheus 127.0.0.1:$PROMETHEUS_PORT"
COMPOSE_STARTED=1
"${COMPOSE[@]}" up -d --wait --wait-timeout 300 >"$STATE/up.log" 2>&1 \
  || { tail -n 30 "$STATE/up.log" >&2; exit 1; }
"${COMPOSE[@]}" ps --format 'table {{.Service}}\t{{.Status}}'

# --- 5. checks ---------------------------------------------------------------------------------
log "checks: hardening, refusals, $CALLS Predict calls and $SEQUENCES sequences through the LB (TLS + token), replicas, Prometheus"
TF_CPP_MIN_LOG_LEVEL=2 "$PY" -m deploy.stack_check check --lb "127.0.0.1:$SEQSERVE_LB_PORT" \
  --prometheus "http://127.0.0.1:$PROMETHEUS_PORT" --compose "$(printf '%q ' "${COMPOSE[@]}")" \
  --certs "$SEQSERVE_CERTS_DIR" --secrets "$STATE/tokens.json" --models "$SEQSERVE_MODEL_SOURCE" \
  --calls "$CALLS" --sequences "$SEQUENCES"

# --- 6. scale-out (STACK_TEST_SCALE=1): 2 replicas, then 1, through the LB ---------------------
if [[ -n "${STACK_TEST_SCALE:-}" ]]; then
  log "scale-out: throughput through the LB with 2 replicas, then 1 (deploy/stack_scale.py)"
  TF_CPP_MIN_LOG_LEVEL=2 "$PY" -m deploy.stack_scale --lb "127.0.0.1:$SEQSERVE_LB_PORT" \
    --compose "$(printf '%q ' "${COMPOSE[@]}")" --certs "$SEQSERVE_CERTS_DIR" \
    --secrets "$STATE/tokens.json" --models "$SEQSERVE_MODEL_SOURCE" | tee "$STATE/scale.md"
fi

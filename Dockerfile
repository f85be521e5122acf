# seqserve server image: CPython 3.11 slim + seqserve from a local wheelhouse + bundled models.
#
# The build needs no network. Before `docker build` / `docker compose build`, prepare the
# wheelhouse on the host:   deploy/build_wheelhouse.sh   (fills deploy/.wheelhouse/)
# On a machine without an image registry, first build the stand-in base image tagged
# python:3.11-slim:   deploy/build_base_image.sh   (see deploy/README.md).
#
# Layers, from the least to the most often changed: OS user -> third-party wheels (tensorflow-cpu,
# ~1 GB installed, cached while deploy/.wheelhouse/deps is unchanged) -> seqserve wheels -> probe ->
# models. Everything uses the classic builder's syntax too (no heredocs, no RUN --mount).

ARG PYTHON_IMAGE=python:3.11-slim

# --- models: keep only servable artifacts (config.*, <version>/model.keras, cards) -------------
# A model directory is what the server would serve (core/repository.py): a name not starting with
# "." or "_", holding at least one <positive integer>/model.keras; config.* is optional.
FROM ${PYTHON_IMAGE} AS models
# MODEL_SOURCE: a model repository inside the build context (default: the bundled models/).
ARG MODEL_SOURCE=models
COPY ${MODEL_SOURCE}/ /src/models/
RUN set -eu; mkdir -p /models; cd /src/models; \
    for dir in */; do \
      name="${dir%/}"; \
      case "$name" in _*) continue ;; esac; \
      for keras in "$name"/*/model.keras; do \
        [ -f "$keras" ] || continue; \
        version="$(basename "$(dirname "$keras")")"; \
        case "$version" in ''|*[!0-9]*) continue ;; esac; \
        [ "$version" -gt 0 ] || continue; \
        mkdir -p "/models/$name/$version"; cp "$keras" "/models/$name/$version/"; \
      done; \
      [ -d "/models/$name" ] || continue; \
      for extra in "$name"/config.* "$name"/MODEL_CARD.md "$name"/README.md; do \
        if [ -f "$extra" ]; then cp "$extra" "/models/$name/"; fi; \
      done; \
    done; \
    if [ -z "$(ls /models)" ]; then \
      echo "no servable model under $MODEL_SOURCE (want <name>/<n>/model.keras);" \
           "train them with 'make models'" >&2; \
      exit 1; \
    fi; \
    find /models -type f | sort

# --- runtime -----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/seqserve \
    PATH=/opt/seqserve/bin:$PATH \
    KERAS_BACKEND=tensorflow \
    TF_CPP_MIN_LOG_LEVEL=2 \
    SEQSERVE_HOST=0.0.0.0 \
    SEQSERVE_PORT=8500 \
    SEQSERVE_METRICS_PORT=8502 \
    SEQSERVE_MODEL_REPOSITORY=/models \
    SEQSERVE_GRACE_PERIOD_S=10

RUN groupadd --system --gid 10001 seqserve \
    && useradd --system --uid 10001 --gid seqserve --create-home --home-dir /home/seqserve \
       --shell /usr/sbin/nologin seqserve \
    && python3 -m venv "$VIRTUAL_ENV"

# Third-party wheels (tensorflow-cpu and the rest): their own layer, rebuilt only when the
# wheelhouse's deps/ changes. The wheels are removed in the same step, and so are TensorFlow's
# C++ headers (~290 MB, only for compiling custom ops). The byte-code pip compiled stays: it halves
# the TensorFlow import at every start (about 4 s instead of 8-10 s here).
COPY deploy/.wheelhouse/deps/ /tmp/wheels/
RUN pip install --no-index --find-links /tmp/wheels /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels "$VIRTUAL_ENV"/lib/python3*/site-packages/tensorflow/include \
    && python -c "import tensorflow, keras, grpc"

# seqserve itself: a few hundred KiB, rebuilt on every code change.
COPY deploy/.wheelhouse/project/ /tmp/project/
RUN pip install --no-index --no-deps /tmp/project/*.whl \
    && rm -rf /tmp/project \
    && seqserve serve --help >/dev/null

COPY deploy/healthcheck.py /usr/local/lib/seqserve/healthcheck.py
COPY --from=models /models/ /models/

USER seqserve:seqserve
WORKDIR /home/seqserve
EXPOSE 8500 8502

# gRPC health (grpc.health.v1.Health/Check, service ""): SERVING once every model is loaded,
# NOT_SERVING while draining. start-period covers TensorFlow import and model warm-up.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/lib/seqserve/healthcheck.py"]

# SIGTERM -> health NOT_SERVING, in-flight work finishes within SEQSERVE_GRACE_PERIOD_S, exit.
# Exec form: seqserve is PID 1 and receives the signal itself (no shell in between).
STOPSIGNAL SIGTERM
CMD ["seqserve", "serve"]

# syntax=docker/dockerfile:1
#
# scorebeater images, one Dockerfile, two targets:
#
#   runtime (default, last stage)  the daemon and the replay Score API: `scorebeater run`,
#                                  `scorebeater replay-api`, `check-config`, `once`. No TensorFlow:
#                                  the daemon talks to TF Serving over REST.
#   model                          the same plus the [model] extra (tensorflow-cpu, scikit-learn,
#                                  matplotlib) for `scorebeater train`, `evaluate` and `serve-model`.
#
#   docker build -t scorebeater .                             # runtime
#   docker build --target model -t scorebeater-model .        # model
#
# Both run as the unprivileged user `scorebeater` (uid 10001) in /app. The config is baked at
# /app/config (mount a directory over it to override), model/ is a volume shared with TF Serving,
# /app/var holds local storage and reports. Secrets (Score API token, admin token, Postgres DSN,
# AWS credentials) come only from the environment at run time; none is baked in.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: a virtualenv with the pinned dependencies, then the package -----------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first, from pyproject.toml under constraints.txt, so that editing the code does
# not reinstall them (a separate layer per extra keeps tensorflow-cpu out of the runtime image).
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies']))" > requirements.txt \
    && pip install --no-cache-dir -c constraints.txt -r requirements.txt
COPY scorebeater ./scorebeater
RUN pip install --no-cache-dir --no-deps -c constraints.txt . \
    && python -c "import scorebeater.cli"

# ---- builder-model: the builder's virtualenv plus the [model] extra -----------------------------
FROM builder AS builder-model
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['optional-dependencies']['model']))" > requirements-model.txt \
    && pip install --no-cache-dir -c constraints.txt -r requirements-model.txt

# ---- base: what both targets share, without any virtualenv ---------------------------------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    SCOREBEATER_HEALTHCHECK_URL=http://127.0.0.1:8080/healthz
RUN groupadd --system --gid 10001 scorebeater \
    && useradd --system --uid 10001 --gid scorebeater --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin scorebeater \
    && mkdir -p /app/model/score_beater /app/var \
    && chown -R scorebeater:scorebeater /app/model /app/var
WORKDIR /app
# The config is read-only for the service user (owned by root). model/ starts empty: the compose
# stack's trainer service publishes the first version into the volume (or mount a model/ dir).
COPY config/ /app/config/
VOLUME ["/app/model", "/app/var"]
ENTRYPOINT ["scorebeater"]

# ---- model: training, evaluation and the TF Serving stand-in -------------------------------------
FROM base AS model
COPY --from=builder-model /opt/venv /opt/venv
ENV TF_CPP_MIN_LOG_LEVEL=2 \
    SCOREBEATER_HEALTHCHECK_URL=http://127.0.0.1:8501/v1/models/score_beater
USER 10001:10001
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['SCOREBEATER_HEALTHCHECK_URL'], timeout=4)"]
CMD ["serve-model", "--host", "0.0.0.0", "--port", "8501", "--model-base-path", "/app/model/score_beater"]

# ---- runtime (default): the daemon --------------------------------------------------------------
FROM base AS runtime
COPY --from=builder /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8080 8600
# urlopen raises on a refused connection, a timeout or any non-2xx status: exit 1 = unhealthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['SCOREBEATER_HEALTHCHECK_URL'], timeout=4)"]
CMD ["run", "--config", "/app/config/compose-local.toml"]

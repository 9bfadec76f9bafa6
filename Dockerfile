# syntax=docker/dockerfile:1
# mediamoderation container image.
#
#   docker build -t mediamoderation .
#   docker run --read-only --tmpfs /tmp -v mediamoderation-data:/data -p 8080:8080 mediamoderation
#
# Reproducible: the base image is pinned by digest and every dependency by version and file hash
# (requirements.lock, requirements-build.lock; see their headers to regenerate them).
#
# Stage 1 builds wheels for the service and every dependency (a compiler is at hand for any dependency
# without a binary wheel for the platform); stage 2 installs only those wheels on a clean slim image,
# runs as an unprivileged user and needs no write access outside /data (store, outbox) and /tmp (the CPU
# pool's forkserver socket; numba's cache of the PDQ index kernels, compiled at the first start, ~15 s of CPU).
# The default config in the image is ./config.yaml with its store and outbox moved under /data; mount
# your own at /etc/mediamoderation/config.yaml (the Helm chart does) and bank files under
# /etc/mediamoderation/banks/.

# The official image by the digest of its multi-platform index (amd64, arm64, arm/v7, 386, ppc64le; Python
# 3.11.16 on Debian bookworm, built 2026-08-25), as recorded for this tag in docker-library/repo-info
# (repos/python/remote/3.11-slim-bookworm.md).  The tag is for people; the digest is what is pulled, so a
# rebuild gets the same base.  To move to a newer base: `docker buildx imagetools inspect
# python:3.11-slim-bookworm`, copy the index "Digest:" here and rebuild; tests/test_deploy.py requires a digest.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:0bee7276f83efd4a1ee05bbbf4281d95ed28e079220a9457f25a93e3f1e3c31b

FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Compilers live in this stage only; they never reach the runtime image, so they are not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# Dependencies first (a layer that changes only with the lock files): every file is checked against the
# lock's hashes, and pip refuses anything unpinned.  The build backend is installed the same way and the
# service's own wheel is built with it (no build isolation: no unpinned setuptools from the index).
COPY requirements.lock requirements-build.lock ./
RUN pip install --require-hashes --no-deps -r requirements-build.lock \
    && pip wheel --require-hashes --wheel-dir /wheels -r requirements.lock
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

# The image's default configuration: the shipped config.yaml and example bank, with the writable
# paths moved to the /data volume (the root filesystem is read-only at run time) and the HTTP server
# on every address (the shipped config binds 127.0.0.1; in a container the port mapping needs 0.0.0.0).
COPY config.yaml /src/config.yaml
COPY banks/example.csv /out/etc/mediamoderation/banks/example.csv
RUN sed -e 's#^\(  path: \)\./data/#\1/data/#' \
        -e 's#^\(    outbox_dir: \)\./outbox#\1/data/outbox#' \
        -e 's#^  host: 127\.0\.0\.1.*#  host: 0.0.0.0#' \
        /src/config.yaml > /out/etc/mediamoderation/config.yaml \
    && grep -q '^  path: /data/' /out/etc/mediamoderation/config.yaml \
    && grep -q '^    outbox_dir: /data/outbox' /out/etc/mediamoderation/config.yaml \
    && grep -q '^  host: 0.0.0.0$' /out/etc/mediamoderation/config.yaml


FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="mediamoderation" \
      org.opencontainers.image.description="Keeps known child-sexual-abuse and terrorist media off a wiki: upload stream -> fetch -> thumbnail -> match -> act" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="GPL-3.0-or-later" \
      org.opencontainers.image.source="https://github.com/mediamoderation/mediamoderation" \
      org.opencontainers.image.url="https://github.com/mediamoderation/mediamoderation" \
      org.opencontainers.image.documentation="https://github.com/mediamoderation/mediamoderation#readme" \
      org.opencontainers.image.vendor="mediamoderation"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MEDIAMODERATION_CONFIG=/etc/mediamoderation/config.yaml \
    TMPDIR=/tmp \
    NUMBA_CACHE_DIR=/tmp/mediamoderation-numba \
    HEALTHCHECK_PORT=8080

RUN groupadd --system --gid 10001 mediamoderation \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin mediamoderation \
    && mkdir -p /data \
    && chown 10001:10001 /data

# Only the wheels built above (hash-checked there), without resolving anything: exactly the locked set;
# `pip check` proves it consistent.  No compiler, no source tree, no pip cache in this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --no-deps /wheels/*.whl \
    && pip check

COPY --from=build /out/etc/mediamoderation /etc/mediamoderation

USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
STOPSIGNAL SIGTERM

# /healthz answers 200 while the process and its event loop run (503 when the pipeline crashed).
# The slim image has no curl: ask with Python.  HEALTHCHECK_PORT must match http.port in the config.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; url = 'http://127.0.0.1:%s/healthz' % os.environ.get('HEALTHCHECK_PORT', '8080'); sys.exit(0 if urllib.request.urlopen(url, timeout=4).status == 200 else 1)"]

ENTRYPOINT ["mediamoderation"]
CMD ["run", "--config", "/etc/mediamoderation/config.yaml"]

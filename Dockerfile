# syntax=docker/dockerfile:1
# The one fraudops image: scorer, drift job and exporter, retrain trigger and pipeline steps all run the
# `fraudops` CLI from it. Build: docker build -t fraudops:<version from pyproject.toml> .   (never :latest)

# Python 3.11 on Debian bookworm, pinned by version tag and by digest of the multi-platform index.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# --- builder: a virtualenv with the project and its dependencies ------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, from the project metadata alone, so that code changes do not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir -p fraudops pipelines services \
 && touch fraudops/__init__.py pipelines/__init__.py services/__init__.py \
 && pip install . \
 && pip uninstall -y fraudops

# Then the project itself (pip compiles the bytecode: the runtime root filesystem is read-only).
COPY fraudops ./fraudops
COPY pipelines ./pipelines
COPY services ./services
RUN pip install --no-deps . \
 && fraudops --help > /dev/null

# --- runtime: the virtualenv on a clean slim image, no compilers or build files -------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="fraudops" \
      org.opencontainers.image.description="Kubernetes-native lifecycle for fraud-detection models" \
      org.opencontainers.image.source="https://github.com/fraudops/fraudops" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 10001 fraudops \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/fraudops --no-create-home \
            --shell /usr/sbin/nologin fraudops \
 && mkdir -p /var/lib/fraudops/bentoml /var/lib/fraudops/trigger /var/lib/fraudops/predictions \
             /var/lib/fraudops/monitor \
 && chown -R 10001:10001 /var/lib/fraudops

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/fraudops \
    BENTOML_HOME=/var/lib/fraudops/bentoml \
    BENTOML_DO_NOT_TRACK=True

WORKDIR /var/lib/fraudops
USER 10001:10001

# scorer, drift exporter, retrain trigger
EXPOSE 3000 9108 8080

ENTRYPOINT ["fraudops"]
CMD ["--help"]

# syntax=docker/dockerfile:1
# The one fraudops image: scorer, drift job and exporter, retrain trigger and pipeline steps all run the
# `fraudops` CLI from it; the feature store runs its Debian redis-server. Build with `make image` (scripts/image.sh), which tags it fraudops:<version from
# pyproject.toml> (never :latest).
#
# PYTHON_IMAGE is the base of both stages: any Debian bookworm image with python3 (3.11) and its venv module.
# The default is the public python image, pinned by version tag and by digest of the multi-platform index.
# Without a registry, scripts/image.sh builds an equivalent base offline (debootstrap + Debian's python3, see
# docker/python-offline.Dockerfile) and passes it here: --build-arg PYTHON_IMAGE=fraudops-python:3.11-bookworm.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# --- builder: a virtualenv with the project and its pinned dependencies ----------------------------------------
FROM ${PYTHON_IMAGE} AS builder

# Certificate authorities of an inspecting proxy, if the network has one (docker/ca-certificates/README.md).
COPY docker/ca-certificates/ /usr/local/share/ca-certificates/extra/
RUN if ls /usr/local/share/ca-certificates/extra/*.crt > /dev/null 2>&1; then update-ca-certificates; fi

ENV PIP_NO_CACHE_DIR=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, from the project metadata alone, so that code changes do not reinstall them. The versions
# are the ones the test suite ran with (constraints.txt).
# (the alert rules travel in the wheel, see pyproject.toml)
COPY pyproject.toml README.md constraints.txt ./
COPY monitoring/rules ./monitoring/rules
RUN mkdir -p fraudops pipelines services \
 && touch fraudops/__init__.py pipelines/__init__.py services/__init__.py \
 && pip install --upgrade pip \
 && pip install -c constraints.txt . \
 && pip uninstall -y fraudops

# Then the project itself (pip compiles the bytecode: the runtime root filesystem is read-only).
COPY fraudops ./fraudops
COPY pipelines ./pipelines
COPY services ./services
RUN pip install --no-deps . \
 && fraudops --help > /dev/null

# --- runtime: the virtualenv on a clean base, no compilers or build files --------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="fraudops" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.description="Kubernetes-native lifecycle for fraud-detection models" \
      org.opencontainers.image.source="https://github.com/fraudops/fraudops" \
      org.opencontainers.image.licenses="Apache-2.0"

# Debian's redis-server: the chart's feature store runs this image too (featureStore in values.yaml).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin

RUN groupadd --system --gid 10001 fraudops \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/fraudops --no-create-home \
            --shell /usr/sbin/nologin fraudops \
 && mkdir -p /var/lib/fraudops/bentoml /var/lib/fraudops/trigger /var/lib/fraudops/predictions \
             /var/lib/fraudops/monitor \
 && chown -R 10001:10001 /var/lib/fraudops

COPY --from=builder /opt/venv /opt/venv

# MPLCONFIGDIR: matplotlib (the PR-curve plot of a training run) writes its cache there; /tmp is a volume in
# every pod of the chart, since the root filesystem is read-only.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/fraudops \
    BENTOML_HOME=/var/lib/fraudops/bentoml \
    BENTOML_DO_NOT_TRACK=True \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /var/lib/fraudops
USER 10001:10001

# scorer, drift exporter, retrain trigger
EXPOSE 3000 9108 8080

ENTRYPOINT ["fraudops"]
CMD ["--help"]

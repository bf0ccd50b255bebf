# A Python 3.11 base image made without a registry: Debian bookworm's own python3 on a Debian root filesystem
# that scripts/image.sh makes with debootstrap and `docker import`s as DEBIAN_IMAGE. It stands in for the public
# python:3.11-slim-bookworm image as the base of the project Dockerfile (PYTHON_IMAGE).
ARG DEBIAN_IMAGE=fraudops-debian:bookworm
FROM ${DEBIAN_IMAGE}

# debootstrap configures the release alone: add its security and point-release updates, then upgrade. The mirror
# is the one debootstrap used (the security archive is Debian's own).
ARG DEBIAN_MIRROR=http://deb.debian.org/debian
RUN printf '%s\n' \
      "deb ${DEBIAN_MIRROR} bookworm main" \
      "deb ${DEBIAN_MIRROR} bookworm-updates main" \
      'deb http://deb.debian.org/debian-security bookworm-security main' > /etc/apt/sources.list \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get upgrade -y \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv ca-certificates tzdata \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin

ENV LANG=C.UTF-8
CMD ["python3"]

# gateproxy image: `docker build -t gateproxy:0.1.0 .` from the repository root.
# See deploy/README.md for running it (docker run, compose, Kubernetes) and for building it
# with podman where no registry is reachable.
#
# The base is pinned by version. To pin it by digest as well (recommended for production),
# build with --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest>.
# Any image with python3 (3.11 or later) and its venv module will do: deploy/base-image.sh
# makes one from Debian's packages alone. Both stages must use the same base: the virtual
# environment copied into the final stage points at the base image's python3.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- build: turn the source into a wheel, then install it and its dependencies -----------
FROM ${PYTHON_IMAGE} AS build

# PIP_CONSTRAINT (the lock file) also pins the build backend in pip's isolated build.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_CONSTRAINT=/src/constraints.txt \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Only what the wheel needs (.dockerignore keeps the context down to this list as well).
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY gateproxy/ ./gateproxy/

# A private package index or a TLS-inspecting proxy's CA reaches pip as a build secret,
# mounted for this one RUN and never stored in a layer:
#   docker build --secret id=pip_conf,src=pip.conf --secret id=pip_ca,src=ca.pem .
#   (podman build takes the same --secret options)
# pip_conf is a pip configuration file (index-url with its credentials, for instance);
# pip_ca a PEM bundle that pip trusts instead of its own. Both are optional.
#
# pip runs from a venv of its own (/opt/build): the runtime venv is made without pip, so it
# never carries pip or setuptools. The wheel is built without its dependencies, then
# installed with its `fast` extra (uvloop) and the locked dependency versions; `set --`
# expands the wheel's file name so that the extra can be appended. pip compiles the .pyc
# files here: the read-only final image never needs to write them.
RUN --mount=type=secret,id=pip_conf --mount=type=secret,id=pip_ca \
    if [ -f /run/secrets/pip_conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip_conf; fi \
    && if [ -f /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
    && python3 -m venv /opt/build \
    && /opt/build/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && python3 -m venv --without-pip /opt/gateproxy \
    && set -- /wheels/gateproxy-*.whl \
    && /opt/build/bin/pip --python /opt/gateproxy/bin/python install "$1[fast]"

# ---- final: the runtime only: no compilers, no pip cache, no wheel, no source tree --------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="gateproxy" \
      org.opencontainers.image.description="Health-gate sidecar proxy for the platform-server" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric user, so that Kubernetes' runAsNonRoot can verify it without /etc/passwd.
RUN groupadd --system --gid 10001 gateproxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin gateproxy

COPY --from=build /opt/gateproxy /opt/gateproxy
# The default configuration. Override it by mounting a file over this path (or a directory
# over /etc/gateproxy), by pointing GATEPROXY_CONFIG elsewhere, or key by key with the
# environment variables listed in docs/configuration.md (they win over the file).
COPY deploy/gateproxy.yaml /etc/gateproxy/gateproxy.yaml

# GATEPROXY_HEALTHCHECK_URL is read by HEALTHCHECK only: change it together with
# admin_port / admin_prefix if you change those in the configuration.
ENV PATH=/opt/gateproxy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEPROXY_CONFIG=/etc/gateproxy/gateproxy.yaml \
    GATEPROXY_HEALTHCHECK_URL=http://127.0.0.1:9901/_gateproxy/live

USER 10001:10001
WORKDIR /tmp

# 8080: the proxy (what clients and the Service use); 9901: admin (live, ready, status,
# metrics), kept off the Service.
EXPOSE 8080 9901

# No curl in a slim image: Python is already there. Any non-2xx answer, refused connection
# or timeout makes open() raise, hence a non-zero exit. ProxyHandler({}) ignores any
# HTTP_PROXY in the environment: the check is always local.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open(os.environ['GATEPROXY_HEALTHCHECK_URL'], timeout=2)"]

# Exec form: gateproxy is PID 1 and receives SIGTERM itself; it handles SIGTERM and SIGINT
# (drain, then exit 0) and starts no child processes, so no init is needed.
ENTRYPOINT ["gateproxy"]
CMD ["serve"]

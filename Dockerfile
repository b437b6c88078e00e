# syntax=docker/dockerfile:1
#
# sidecar-agent image: docker build -t sidecar-agent:0.1.0 .
#   --build-arg EXTRAS=all        (default) every optional check client: redis, postgres, grpc,
#                                 and the admission webhook's jsonpatch (sidecar-agent webhook)
#   --build-arg EXTRAS=redis,grpc only those; EXTRAS= (empty) none: process, http, tcp, exec,
#                                 file, heartbeat and dns checks need no extra library
# Multi-stage: the wheel is built and installed into a virtualenv in the build stage; the final
# stage copies that virtualenv (made without pip: the base's pip installs into it) onto the same
# slim base, so no build tool, compiler, pip or pip cache reaches the image that runs.
# The tag is agent.IMAGE, sidecar-agent:<package version>; docs/image.md says how to push it.
#
# The tests build and run it (.ci/build-image, buildah) where no registry is reachable, on a stand-in
# for the base: Debian 12 with Debian's Python, so 3.11 in /usr/bin (python and pip linked from
# /usr/local/bin) instead of 3.12 in /usr/local/bin. Nothing below depends on the difference.

ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS build
ARG EXTRAS=all
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# binutils for strip, in the build stage only: the extension modules of some dependencies come with
# their debug information (asyncpg's alone holds 9 MB of it), a third of the virtualenv's size.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends binutils \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps the rest of the checkout out of the context).
COPY pyproject.toml README.md ./
COPY agent ./agent
# --only-binary: every dependency must come as a prebuilt wheel, so nothing is ever compiled here
# either (a missing wheel fails the build loudly instead of pulling in a compiler).
# ${EXTRAS:+[...]}: "wheel[redis,grpc]", or the bare wheel when EXTRAS is empty (pip refuses "wheel[]").
# Then what runs nothing: debug information, Cython and C sources, type stubs, packages' own tests
# (lib/python3.X/site-packages/PACKAGE/tests). The .pyc files stay: the root filesystem is read-only,
# so whatever is not compiled here is compiled again at every start.
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && python -m venv --without-pip /opt/sidecar-agent \
    && pip --python /opt/sidecar-agent/bin/python install --only-binary=:all: "$(echo /wheels/sidecar_agent-*.whl)${EXTRAS:+[${EXTRAS}]}" \
    && find /opt/sidecar-agent \( -name "*.so" -o -name "*.so.*" \) -exec strip --strip-unneeded {} + \
    && find /opt/sidecar-agent \( -name "*.pyx" -o -name "*.pxd" -o -name "*.pyi" -o -name "*.[ch]" -o -name "*.cpp" \) -delete \
    && find /opt/sidecar-agent/lib -mindepth 4 -maxdepth 4 -type d -name tests -prune -exec rm -rf {} + \
    && /opt/sidecar-agent/bin/sidecar-agent --version

FROM python:${PYTHON_VERSION}-slim
LABEL org.opencontainers.image.title="sidecar-agent" \
      org.opencontainers.image.description="A health-and-shutdown sidecar for Kubernetes pods: cached probes, metrics, ordered graceful shutdown." \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/sidecar-agent /opt/sidecar-agent
# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only in the pod (the wheel's modules were
# compiled at install time). PYTHONUNBUFFERED: log lines reach the kubelet as they are written.
ENV PATH=/opt/sidecar-agent/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A numeric non-root user (the distroless "nonroot" id), so runAsNonRoot can verify it without
# an /etc/passwd entry. Run the app under the same uid so the agent may signal it (see docs/deploy.md).
USER 65532:65532
EXPOSE 8686
ENTRYPOINT ["sidecar-agent"]
CMD ["run"]

# mfu-agent container image.
#
# NVML (libnvidia-ml.so) is NOT in this image: it comes from the host driver, injected at run time by
# the NVIDIA Container Toolkit (docker run --gpus all / --runtime nvidia, or runtimeClassName: nvidia in
# Kubernetes). The toolkit reads NVIDIA_VISIBLE_DEVICES (which GPUs) and NVIDIA_DRIVER_CAPABILITIES
# (which driver libraries); "utility" is the capability that carries NVML and nvidia-smi, and is all a
# monitoring agent needs (no compute, no graphics).
#
#   docker build -t mfu-agent .
#   docker run -d --gpus all --pid host --user 0 --cap-drop ALL --cap-add SYS_ADMIN -p 8469:8469 \
#       -v /etc/mfu-agent/report-token:/run/secrets/report-token:ro \
#       -e MFU_AGENT_REPORT_TOKEN_FILE=/run/secrets/report-token mfu-agent
#
# --pid host lets the agent map the host pids NVML reports to pods / Slurm jobs (see docs/deploy.md).
# --user 0 --cap-add SYS_ADMIN (its only capability) is for GPM, the source of the SM activity series:
# the driver gives the GPU's profiling counters only to CAP_SYS_ADMIN while the nvidia module has
# NVreg_RestrictProfilingToAdminUsers=1 (its default), else NVML answers NO_PERMISSION
# (mfu_gpu_gpm_status); a capability reaches only uid 0 in a container. Where the nodes set
# NVreg_RestrictProfilingToAdminUsers=0, leave both out: the image's own user 10001 then suffices.
# `docker run ... mfu-agent doctor` checks a node (NVML, GPM, PIDs, port, token) and names each fix.
# The image listens on 0.0.0.0, where the agent refuses to start without a report token.

ARG PYTHON_IMAGE=python:3.12-slim

# ---------------------------------------------------------------------------------------------------
# Build stage: build the project's wheel and the wheels of the agent's dependencies (the `agent`
# extra; the bare package is the training-side client only).
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY mfu_agent/ ./mfu_agent/
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[agent]'

# ---------------------------------------------------------------------------------------------------
# Final stage: the wheels installed offline into a clean slim image; no compiler, no build backend,
# no pip left behind.
FROM ${PYTHON_IMAGE}

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="mfu-agent" \
      org.opencontainers.image.description="Per-node GPU agent: NVML telemetry, SM activity and live model FLOPs utilisation (MFU) as Prometheus metrics" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.12-slim"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MFU_AGENT_LISTEN=0.0.0.0:8469 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=utility

# A fixed numeric uid/gid so that Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 mfu-agent \
    && useradd --system --uid 10001 --gid mfu-agent --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin mfu-agent \
    && install -d -m 0700 -o 10001 -g 10001 /var/lib/mfu-agent

RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels "mfu-agent[agent]==${VERSION}" \
    && pip uninstall --yes pip

USER 10001:10001
WORKDIR /tmp
EXPOSE 8469

# slim has no curl: probe /healthz with the interpreter, on the port MFU_AGENT_LISTEN names.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('MFU_AGENT_LISTEN', ':8469').rpartition(':')[2] or '8469'; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]

ENTRYPOINT ["mfu-agent"]
CMD ["run"]

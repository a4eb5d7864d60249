# syntax=docker/dockerfile:1
# The cnop image: every service in one package; the command picks the role.
#
#   docker run IMAGE serve gateway|user|order|inventory|insights|worker   (default: gateway)
#   docker run IMAGE db init                                               (the init job)
#   docker run IMAGE audit                                                 (the periodic audit)
#
# Stages: `web-assets` (Node: the web app's pinned npm assets), `build` (a virtualenv with the
# app and its locked dependencies), `runtime` (slim Python, that virtualenv, nothing else).
# No container engine runs on the development machines or in CI here: the commands below are the
# ones the end-to-end test runs as processes, and a test checks that every command the compose
# file and the Kubernetes manifests name is one `cnop` has.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NODE_IMAGE=node:22-bookworm-slim

# --- web assets -------------------------------------------------------------------------------
# The web app's npm assets (htmx, lightweight-charts), installed from the lock file without
# running any package script.
FROM ${NODE_IMAGE} AS web-assets
WORKDIR /assets
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --omit=dev --no-audit --no-fund

# --- build ------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY src ./src
RUN python -m venv /opt/cnop \
 && /opt/cnop/bin/pip install -c requirements.lock . \
 && /opt/cnop/bin/pip uninstall -y pip setuptools wheel

# --- runtime ----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 cnop \
 && useradd --system --uid 10001 --gid cnop --home-dir /app --no-create-home --shell /usr/sbin/nologin cnop \
 && mkdir -p /app && chown cnop:cnop /app
COPY --from=build /opt/cnop /opt/cnop
COPY --from=web-assets /assets/node_modules /app/node_modules
ENV PATH=/opt/cnop/bin:$PATH \
    CNOP_WEB_ASSETS_DIR=/app/node_modules \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CNOP_SHAPE=cloud \
    CNOP_STORE=dynamodb \
    CNOP_SHUTDOWN_DRAIN_SECONDS=5
WORKDIR /app
USER 10001:10001
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=4s --start-period=20s --retries=3 CMD ["cnop", "probe", "--port", "8080", "--path", "/health"]
ENTRYPOINT ["cnop"]
CMD ["serve", "gateway", "--host", "0.0.0.0", "--port", "8080"]

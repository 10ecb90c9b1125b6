# syntax=docker/dockerfile:1
# Three stages: Node installs GraphiQL's pinned browser assets, a builder makes the wheel with the
# same script CI runs (scripts/build-wheel.sh), and a slim runtime holds only that wheel and the
# hashed runtime lock: no compiler, no Node, no test tools, no source tree.

FROM node:20-slim AS assets
WORKDIR /src/web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error

FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY requirements-build.lock ./
RUN pip install --require-hashes --no-deps -r requirements-build.lock
COPY pyproject.toml README.md .gitignore ./
COPY scripts/ scripts/
COPY web/package.json web/package-lock.json web/
# node_modules at the locked versions: the build copies the assets without running npm.
COPY --from=assets /src/web/node_modules web/node_modules
COPY wallet/ wallet/
RUN PYTHON=python scripts/build-wheel.sh /dist

FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    WALLET_ENV=production
# The lock first, so a code change reuses the dependency layer; bind mounts leave no copy behind.
RUN --mount=type=bind,source=requirements-runtime.lock,target=/tmp/requirements-runtime.lock \
    pip install --require-hashes --no-deps -r /tmp/requirements-runtime.lock
RUN --mount=type=bind,from=builder,source=/dist,target=/dist \
    pip install --no-deps /dist/wallet-*.whl \
    && useradd --system --no-create-home --uid 10001 wallet
USER wallet
WORKDIR /tmp
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/readyz', timeout=3)"]
# Needs DATABASE_URL (the embedded PostgreSQL is a workstation's extra, not in this image) and,
# beyond loopback, credentials: create a key with `wallet keys create` before exposing it.
CMD ["wallet", "serve", "--host", "0.0.0.0", "--port", "3000"]

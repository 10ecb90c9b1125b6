FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /app

# The lock alone first, so a code change reuses the dependency layer.
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock

COPY . .
# Editable, from /app (the migrations ship inside the package).
RUN pip install --no-deps --no-build-isolation -e . \
    && useradd --system --no-create-home --uid 10001 wallet

USER wallet
EXPOSE 3000
# Needs DATABASE_URL: the embedded PostgreSQL is for development on a workstation.
CMD ["wallet", "serve", "--host", "0.0.0.0", "--port", "3000"]

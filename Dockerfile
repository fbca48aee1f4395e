# Multi-protocol gateway: one image for both the web (daphne) and the
# worker (MQTT bridge) processes; docker-compose.yml picks the command.
FROM python:3.11-slim

# DATABASE_URL defaults to an SQLite file in /data, the only directory the
# runtime user can write to (mount a volume there to keep it).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    DATABASE_URL=sqlite:////data/gateway.sqlite3

WORKDIR /app

# Unprivileged runtime user. /data holds the SQLite database; a named volume
# mounted there inherits this ownership when it is first created.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin app \
    && mkdir -p /data \
    && chown app:app /data

# Dependencies from the hash-pinned lock that `make run` installs from (requirements/run.lock;
# `make lock` writes it), in a layer of their own that source changes do not rebuild.
COPY requirements/run.lock requirements/run.lock
RUN pip install --no-cache-dir --require-hashes -r requirements/run.lock

# PostgreSQL's driver, for DATABASE_URL=postgres://... (docker-compose.yml's ha profile builds
# with WITH_POSTGRES=1): the same pins and the driver, from requirements/postgres.lock.
ARG WITH_POSTGRES=0
COPY requirements/postgres.lock requirements/postgres.lock
RUN if [ "$WITH_POSTGRES" = 1 ]; then \
        pip install --no-cache-dir --require-hashes -r requirements/postgres.lock; fi

# Project sources stay owned by root, read-only for the runtime user. The gateway itself is
# installed without dependencies: every one of them came from the lock above.
COPY . .
RUN pip install --no-cache-dir --no-deps .

USER app

EXPOSE 8000

# Web process. The worker overrides this with:
#   python manage.py runworker mqtt-bridge
CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "config.asgi:application"]

# syntax=docker/dockerfile:1
#
# One image for every regionvault process; the command picks the role:
#   celery -A workers worker -Q backup.<domain>   (with REGIONVAULT_DOMAIN=<domain>)
#   celery -A workers beat
#   regionvault flower          (Flower with Retry and the Backups page; auth required)
#   regionvault <command>                          (the operator CLI)
# The Helm chart (charts/regionvault) and docker-compose.yml set these commands.

ARG PYTHON_VERSION=3.11
ARG DEBIAN_RELEASE=trixie
# The PostgreSQL client tools of every major the fleet runs. Each source is dumped by the
# pg_dump of its own server's major, and a restore uses the pg_restore that suits the target's
# major (regionvault.sources.pgtools chooses among /usr/lib/postgresql/*/bin). pg_dump refuses
# a server newer than itself, so the list must reach the newest major among the sources
# (docker-compose.yml runs postgres:18); add a major when the fleet gains one.
ARG PG_MAJORS="14 15 16 17 18"

# --- build: install regionvault and its dependencies into a virtual environment ---------------
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/regionvault
WORKDIR /src
COPY pyproject.toml README.md beat_schedule.py regionvault_cli.py ./
COPY regionvault ./regionvault
COPY tasks ./tasks
COPY workers ./workers
# A regular (not editable) install: `workers`, `tasks`, `beat_schedule` and `regionvault_cli`
# (the `regionvault` console script) land in site-packages, so `celery -A workers` works from
# any directory.
RUN /opt/regionvault/bin/pip install . \
    && /opt/regionvault/bin/python -c "import workers, beat_schedule, regionvault_cli"

# --- runtime: Python, the PostgreSQL client, tini and the virtual environment ------------------
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS runtime

ARG PG_MAJORS
# postgresql-common ships the PGDG signing key and the script that adds the PGDG repository,
# which carries every supported major for this Debian release (Debian itself ships only one).
# mariadb-client brings mariadb-dump and mariadb for the mysql sources (MySQL and MariaDB).
# tini is PID 1: it forwards SIGTERM to Celery (not to its pool children, so the worker's own
# soft shutdown decides what happens to a running step) and reaps pg_dump's zombies.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates postgresql-common tini \
    && /usr/share/postgresql-common/pgdg/apt.postgresql.org.sh -y \
    && apt-get install -y --no-install-recommends mariadb-client \
       $(for major in ${PG_MAJORS}; do echo postgresql-client-$major; done) \
    && rm -rf /var/lib/apt/lists/* \
    && for major in ${PG_MAJORS}; do /usr/lib/postgresql/$major/bin/pg_dump --version; done \
    && mariadb-dump --version

# A fixed, numeric, non-root user: Kubernetes' runAsNonRoot can only verify a numeric USER.
RUN groupadd --system --gid 10001 regionvault \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/regionvault \
       --shell /usr/sbin/nologin regionvault \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/regionvault \
       /var/lib/regionvault/spool /var/lib/regionvault/spool/us /var/lib/regionvault/spool/eu \
       /var/lib/regionvault/spool/au /var/lib/regionvault/beat \
    && install -d -m 0755 /etc/regionvault

COPY --from=build /opt/regionvault /opt/regionvault

ENV PATH=/opt/regionvault/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    REGIONVAULT_CONFIG=/etc/regionvault/config.yaml

USER 10001:10001
WORKDIR /var/lib/regionvault

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["regionvault", "--help"]

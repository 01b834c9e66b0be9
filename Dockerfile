# syntax=docker/dockerfile:1
# One image for every netsync process; compose.yaml and deploy/k8s choose the command:
#   uvicorn app.main:app --host 0.0.0.0 --port 8000      Response API
#   arq jobs.WorkerSettings                              sync worker (probes and metrics on 9100)
#   arq jobs.BulkWorkerSettings                          bulk worker (probes and metrics on 9102)
#   python -m importer                                   importer daemon (probes and metrics on 9101)
#   uvicorn importer.api:app --host 0.0.0.0 --port 8001  Request API
#   python -m netsync.migrate response && python -m app.bootstrap
#                                                        Response migrations, then the administrator
#   python -m netsync.migrate request                    Request migrations

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, so that a code change reuses this layer. Only the runtime part of the lock,
# every package pinned and hash-checked.
COPY requirements.lock pyproject.toml ./
COPY deploy/runtime_requirements.py deploy/
RUN python deploy/runtime_requirements.py > runtime.lock \
    && pip install --require-hashes -r runtime.lock

# The project itself, built with the setuptools the lock pinned above (no unpinned download).
# netsync.migrate looks for alembic.ini and migrations/ in the directory that holds its package,
# so they are copied into site-packages next to it. (README.md* : copied when it exists.)
COPY README.md* alembic.ini ./
COPY app app
COPY jobs jobs
COPY importer importer
COPY exchange exchange
COPY netsync netsync
COPY migrations migrations
RUN pip install --no-deps --no-build-isolation . \
    && site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && cp -r alembic.ini migrations "$site/" \
    && pip uninstall --yes pip

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NETSYNC_ENV=production \
    NETSYNC_EXPORTS_DIR=/var/lib/netsync/exports \
    NETSYNC_METRICS_HOST=0.0.0.0
# A fixed uid/gid, so that volumes and Kubernetes securityContext can name it. A named volume
# mounted on the exports directory (or the importer's own state directory) starts out owned by
# it, so both sides can write there.
RUN groupadd --system --gid 10001 netsync \
    && useradd --system --uid 10001 --gid netsync --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin netsync \
    && install -d -o netsync -g netsync -m 0750 /var/lib/netsync /var/lib/netsync/exports \
        /var/lib/netsync/importer
COPY --from=build /opt/venv /opt/venv
WORKDIR /var/lib/netsync
USER 10001:10001
# The APIs, then the daemons' /health, /ready and /metrics (worker, importer, bulk worker).
EXPOSE 8000 8001 9100 9101 9102
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000", "--no-access-log"]

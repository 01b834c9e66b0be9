# One image for every netsync process; compose.yaml and deploy/k8s choose the command:
#   uvicorn app.main:app --host 0.0.0.0 --port 8000      Response API
#   arq jobs.WorkerSettings                              sync worker (probes and metrics on 9100)
#   arq jobs.BulkWorkerSettings                          bulk worker (probes and metrics on 9102)
#   python -m importer                                   importer daemon (probes and metrics on 9101)
#   uvicorn importer.api:app --host 0.0.0.0 --port 8001  Request API
#   python -m ops.migrate response && python -m app.bootstrap
#                                                        Response migrations, then the administrator
#   python -m ops.migrate request                    Request migrations
#
# No BuildKit-only syntax: the classic builder (DOCKER_BUILDKIT=0) builds it too, and needs no
# registry for a frontend image. Sites without a registry or PyPI build the base images and a
# wheelhouse with deploy/images/build.sh, which passes the three build arguments below.

# Any Debian-based CPython 3.11 with venv: the public image, or netsync-base/python:3.11-bookworm
# built from Debian packages by deploy/images/build.sh. The build stage may run on another image
# with the same interpreter and build tools (build.sh's python-build adds binutils): where it has
# `strip`, the wheels' native libraries lose their debugging symbols (~40 MB).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG PYTHON_BUILD_IMAGE=${PYTHON_IMAGE}

FROM ${PYTHON_BUILD_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, so that a code change reuses this layer: the runtime part of the lock
# (deploy/runtime_requirements.py's selection, without ./run up's embedded PostgreSQL and Valkey)
# and the lock's setuptools, which builds the project below and is removed with pip once it has;
# deploy/images/locks.py says which entries and why. Every package pinned and hash-checked.
# deploy/images/wheelhouse holds the wheels deploy/images/build.sh downloaded on the host (it is
# empty otherwise): with PIP_NO_INDEX=1 pip installs from it alone, else it downloads from the
# index (PyPI or PIP_INDEX_URL) too. The wheels stay in this stage.
ARG PIP_NO_INDEX=
COPY requirements.lock pyproject.toml ./
COPY deploy/runtime_requirements.py deploy/
COPY deploy/images/locks.py deploy/images/
COPY deploy/images/wheelhouse /wheels
RUN python deploy/images/locks.py image requirements.lock pyproject.toml > runtime.lock \
    && PIP_FIND_LINKS=/wheels pip install --require-hashes -r runtime.lock \
    && if command -v strip >/dev/null; then \
        find /opt/venv -type f -name '*.so*' -exec strip --strip-unneeded '{}' +; \
    fi

# The project itself, built with that setuptools (--no-build-isolation: no download).
# ops.migrate looks for alembic.ini and migrations/ in the directory that holds its package,
# so they are copied into site-packages next to it. (README.md* : copied when it exists.)
COPY README.md* alembic.ini ./
COPY app app
COPY jobs jobs
COPY importer importer
COPY exchange exchange
COPY netsync netsync
COPY ops ops
COPY migrations migrations
RUN pip install --no-deps --no-build-isolation . \
    && site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && cp -r alembic.ini migrations "$site/" \
    && pip uninstall --yes setuptools pip

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
# The venv runs on this image's interpreter: a build stage on an image with another one fails here.
RUN python -c 'import netsync'
WORKDIR /var/lib/netsync
USER 10001:10001
# The APIs, then the daemons' /health, /ready and /metrics (worker, importer, bulk worker).
EXPOSE 8000 8001 9100 9101 9102
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000", "--no-access-log"]

#!/usr/bin/env bash
# Build every image compose.yaml runs from Debian bookworm packages and the project's lock, with
# no image registry: the way a site without one builds from its own Debian and PyPI mirrors.
#
#   deploy/images/build.sh              build the images that are missing or out of date
#   deploy/images/build.sh --rebuild    build them all again, without Docker's layer cache
#
# The images, each tagged as below unless the variable names another tag:
#
#   NETSYNC_PYTHON_IMAGE        netsync-base/python:3.11-bookworm        Debian's CPython 3.11:
#                               python3, python3-venv, python-is-python3, ca-certificates,
#                               passwd, tzdata
#   NETSYNC_PYTHON_BUILD_IMAGE  netsync-base/python-build:3.11-bookworm  the same and binutils,
#                               for the Dockerfile's build stage (it strips the wheels' libraries);
#                               where NETSYNC_PYTHON_IMAGE names an image, that one by default
#   NETSYNC_POSTGRES_IMAGE      netsync-base/postgres:15-bookworm        postgresql-15 and
#                               postgres-entrypoint.sh (the public image's POSTGRES_* variables)
#   NETSYNC_REDIS_IMAGE         netsync-base/redis:7.0-bookworm          redis-server, in /data
#   NETSYNC_IMAGE               netsync:local                            the Dockerfile
#
# The base images are root file systems made by mmdebstrap (variant minbase: the required
# packages, apt and what is named; no Recommends, no documentation but copyright files, no
# manuals, translations or apt lists), loaded with `docker import`: one layer each. A base image
# that exists is kept unless --rebuild.
#
# netsync:local is built by the Dockerfile with the classic builder (BuildKit would fetch its
# frontend from a registry) and no network: the part of requirements.lock the image installs is
# downloaded here, on the host, into deploy/images/wheelhouse/ (`pip download --require-hashes`,
# wheels only, for the base image's CPython on this architecture), and the build installs from
# that directory alone (PIP_NO_INDEX=1), every file checked against the lock's hashes again. It
# is rebuilt whenever what it is built from changed (the files .dockerignore lets in, the
# Dockerfile, the Python images): it carries their digest as a label.
#
# Environment: NETSYNC_DEBIAN_MIRROR (http://deb.debian.org/debian) and
# NETSYNC_DEBIAN_SECURITY_MIRROR (http://deb.debian.org/debian-security), the archives the root
# file systems come from (apt checks their signatures with the host's Debian archive keyring);
# pip's own variables (PIP_INDEX_URL, PIP_CERT, ...) for the wheelhouse; SOURCE_DATE_EPOCH, which
# mmdebstrap honours. Needs root (mmdebstrap chroots), docker, mmdebstrap, and a Python 3.11+
# with pip and packaging (the project's .venv, which ./run creates, or NETSYNC_PIP_PYTHON).
# deploy/images/install-docker.sh installs docker and mmdebstrap on Debian.
#
# mmdebstrap runs each hook under sh with the root file system as "$1": single quotes on purpose.
# shellcheck disable=SC2016
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
SUITE=bookworm
MIRROR="${NETSYNC_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${NETSYNC_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
PYTHON_IMAGE="${NETSYNC_PYTHON_IMAGE:-netsync-base/python:3.11-bookworm}"
# The build stage's image must hold the same interpreter as the Python image (the venv links to
# it): build.sh's own pair, or, for a Python image named by the site, that image itself.
if [[ -n ${NETSYNC_PYTHON_IMAGE:-} ]]; then
    PYTHON_BUILD_IMAGE="${NETSYNC_PYTHON_BUILD_IMAGE:-$PYTHON_IMAGE}"
else
    PYTHON_BUILD_IMAGE="${NETSYNC_PYTHON_BUILD_IMAGE:-netsync-base/python-build:3.11-bookworm}"
fi
POSTGRES_IMAGE="${NETSYNC_POSTGRES_IMAGE:-netsync-base/postgres:15-bookworm}"
REDIS_IMAGE="${NETSYNC_REDIS_IMAGE:-netsync-base/redis:7.0-bookworm}"
APP_IMAGE="${NETSYNC_IMAGE:-netsync:local}"
WHEELHOUSE="$HERE/wheelhouse"
# bookworm's glibc is 2.36: manylinux wheels for it and every older glibc run on it
GLIBC_MINOR=36
SOURCE_LABEL=org.netsync.source-digest
PATH_ENV='PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
PYTHON_PACKAGES=python3,python3-venv,python-is-python3,ca-certificates,passwd,tzdata

usage() { sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
log() { printf 'build: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

rebuild=0
for arg in "$@"; do
    case "$arg" in
        --rebuild) rebuild=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $arg" ;;
    esac
done

command -v docker >/dev/null || die "docker not found: run deploy/images/install-docker.sh"
docker info >/dev/null 2>&1 || die "the Docker daemon does not answer: run deploy/images/install-docker.sh"

work="$(mktemp -d "${TMPDIR:-/tmp}/netsync-images.XXXXXX")"
trap 'rm -rf "$work"' EXIT

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# run LOG COMMAND...: COMMAND's output goes to $work/LOG, shown only when it fails
run() {
    local name="$1"
    shift
    if ! "$@" > "$work/$name" 2>&1; then
        tail -n 40 "$work/$name" >&2
        die "failed: $*"
    fi
}

# mmdebstrap's options shared by every base image.
MMDEBSTRAP_OPTS=(
    --variant=minbase
    --format=tar
    # merged /usr as debootstrap makes it, with usr-is-merged: otherwise init-system-helpers'
    # "usrmerge | usr-is-merged" brings in usrmerge, and with it perl (~50 MB)
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
    --aptopt='APT::Install-Recommends "false"'
    --aptopt='APT::Install-Suggests "false"'
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-exclude=/usr/share/lintian/*'
    --dpkgopt='path-exclude=/usr/share/bug/*'
    # the leap-second ("right/") time zones: nothing here reads them
    --dpkgopt='path-exclude=/usr/share/zoneinfo/right/*'
    # no device nodes in the tarball (the container runtime provides /dev); /run is emptied by
    # the hook below rather than by mmdebstrap, to keep what an image needs there
    --skip=output/dev
    --skip=cleanup/run
    --customize-hook='rm -rf "$1"/var/log/apt/* "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old'
)
SOURCES=(
    "deb $MIRROR $SUITE main"
    "deb $MIRROR $SUITE-updates main"
    "deb $SECURITY_MIRROR $SUITE-security main"
)

# rootfs NAME PACKAGES [mmdebstrap options...]: a root file system as $work/NAME.tar
rootfs() {
    local name="$1" packages="$2"
    shift 2
    command -v mmdebstrap >/dev/null || die "mmdebstrap not found: run deploy/images/install-docker.sh"
    [[ $(id -u) -eq 0 ]] || die "mmdebstrap builds the root file systems as root (chroot): run as root"
    log "$name: mmdebstrap $SUITE minbase + $packages"
    run "mmdebstrap-$name.log" mmdebstrap "${MMDEBSTRAP_OPTS[@]}" --include="$packages" "$@" \
        --customize-hook='find "$1/run" -mindepth 1 -maxdepth 1 ! -name postgresql -exec rm -rf {} +' \
        "$SUITE" "$work/$name.tar" "${SOURCES[@]}"
}

# image TAG NAME INSTRUCTION...: load $work/NAME.tar with `docker import`, then set its
# configuration (ENV, USER, ENTRYPOINT, STOPSIGNAL, ...) with a Dockerfile of those instructions
# only, which adds no layer (`docker import --change` knows no STOPSIGNAL).
image() {
    local tag="$1" name="$2" id
    shift 2
    id="$(docker import --message "deploy/images/build.sh: Debian $SUITE" "$work/$name.tar")"
    rm -f "$work/$name.tar"
    printf '%s\n' "FROM $id" "$@" > "$work/$name.Dockerfile"
    run "image-$name.log" env DOCKER_BUILDKIT=0 docker build --tag "$tag" - < "$work/$name.Dockerfile"
}

build_python() {
    rootfs python "$PYTHON_PACKAGES"
    image "$PYTHON_IMAGE" python "ENV $PATH_ENV LANG=C.UTF-8" 'CMD ["python3"]'
}

build_python_build() {
    rootfs python-build "$PYTHON_PACKAGES,binutils"
    image "$PYTHON_BUILD_IMAGE" python-build "ENV $PATH_ENV LANG=C.UTF-8" 'CMD ["python3"]'
}

build_postgres() {
    # Debian's server links LLVM (~120 MB with libz3) for JIT compilation alone: left out, and
    # jit = off in the cluster's configuration (postgres-entrypoint.sh). So is the main cluster
    # the package creates at install time: the entry point creates one in the volume instead.
    # The snakeoil certificate's private key would be the same in every container: removed (the
    # server does not use TLS; the database network is the compose network).
    rootfs postgres postgresql-15,tzdata \
        --dpkgopt='path-exclude=/usr/lib/*/libLLVM-*' \
        --dpkgopt='path-exclude=/usr/lib/llvm-*' \
        --dpkgopt='path-exclude=/usr/lib/*/libz3.so*' \
        --dpkgopt='path-exclude=/usr/lib/postgresql/*/lib/llvmjit*' \
        --dpkgopt='path-exclude=/usr/lib/postgresql/*/lib/bitcode/*' \
        --essential-hook='mkdir -p "$1/etc/postgresql-common/createcluster.d" && echo "create_main_cluster = false" > "$1/etc/postgresql-common/createcluster.d/netsync.conf"' \
        --customize-hook="install -m 0755 '$HERE/postgres-entrypoint.sh' \"\$1/usr/local/bin/postgres-entrypoint\"" \
        --customize-hook='rm -f "$1/etc/ssl/private/ssl-cert-snakeoil.key" "$1/etc/ssl/certs/ssl-cert-snakeoil.pem"' \
        --customize-hook='chroot "$1" install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data' \
        --customize-hook='chroot "$1" install -d -o postgres -g postgres -m 2775 /run/postgresql' \
        --customize-hook="chroot \"\$1\" sh -c 'echo \$(id -u postgres):\$(id -g postgres)' > '$work/postgres.user'"
    local user
    user="$(cat "$work/postgres.user")"
    # SIGINT: PostgreSQL's fast shutdown (SIGTERM would wait for every client to leave)
    image "$POSTGRES_IMAGE" postgres \
        "ENV PATH=/usr/lib/postgresql/15/bin:${PATH_ENV#PATH=} LANG=C.UTF-8 PGDATA=/var/lib/postgresql/data" \
        'VOLUME /var/lib/postgresql/data' \
        "USER $user" \
        'EXPOSE 5432' \
        'STOPSIGNAL SIGINT' \
        'ENTRYPOINT ["/usr/local/bin/postgres-entrypoint"]' \
        'CMD ["postgres"]'
}

build_redis() {
    # compose passes every setting on the command line; /data holds the append-only file
    rootfs redis redis-server \
        --customize-hook='chroot "$1" install -d -o redis -g redis -m 0750 /data' \
        --customize-hook="chroot \"\$1\" sh -c 'echo \$(id -u redis):\$(id -g redis)' > '$work/redis.user'"
    local user
    user="$(cat "$work/redis.user")"
    image "$REDIS_IMAGE" redis \
        "ENV $PATH_ENV" \
        'VOLUME /data' \
        'WORKDIR /data' \
        "USER $user" \
        'EXPOSE 6379' \
        'CMD ["redis-server"]'
}

# The Python that selects from the lock and runs pip download: NETSYNC_PIP_PYTHON, else the
# project's .venv (./run creates it), else python3.
host_python() {
    local python="${NETSYNC_PIP_PYTHON:-}"
    if [[ -z $python ]]; then
        python=python3
        [[ ! -x $ROOT/.venv/bin/python ]] || python="$ROOT/.venv/bin/python"
    fi
    "$python" -c 'import packaging.markers, pip' 2>/dev/null \
        || die "$python has no pip or packaging: run ./run once (it creates .venv), or set NETSYNC_PIP_PYTHON"
    echo "$python"
}

# What the Dockerfile installs (locks.py image), downloaded on the host for the Python image's
# interpreter: the environment markers are evaluated with that interpreter's own values (pip
# would judge them by the host's; locks.py says why), then pip downloads each file and checks it
# against the lock's hashes. Kept while the selection and the interpreter are unchanged.
build_wheelhouse() {
    local python arch stamp want
    python="$(host_python)"
    arch="$(uname -m)"
    "$python" "$HERE/locks.py" image "$ROOT/requirements.lock" "$ROOT/pyproject.toml" \
        > "$work/runtime.lock"
    docker run --rm -i --network none "$PYTHON_IMAGE" python3 - environment \
        < "$HERE/locks.py" > "$work/environment.json"
    "$python" "$HERE/locks.py" target "$work/environment.json" "$work/runtime.lock" \
        > "$work/download.lock"
    want="$(cat "$work/download.lock" "$work/environment.json" | sha256sum | cut -d' ' -f1)"
    stamp="$WHEELHOUSE/.download-lock.sha256"
    if [[ -f $stamp && "$(cat "$stamp")" == "$want" ]]; then
        log "wheelhouse: up to date ($(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels)"
        return
    fi
    # Every manylinux tag a glibc-2.36 system runs, one by one: pip widens only the legacy
    # manylinux2014/2010 names to older ones.
    local platforms=() minor
    for ((minor = GLIBC_MINOR; minor >= 5; minor--)); do
        platforms+=(--platform "manylinux_2_${minor}_${arch}")
    done
    platforms+=(--platform "manylinux2014_$arch" --platform "manylinux2010_$arch" --platform "manylinux1_$arch")
    log "wheelhouse: pip download ($arch, glibc 2.$GLIBC_MINOR, CPython 3.11)"
    run pip-download.log "$python" -m pip download --disable-pip-version-check \
        --require-hashes --no-deps --only-binary=:all: \
        --implementation cp --python-version 3.11 "${platforms[@]}" \
        --dest "$work/wheels" -r "$work/download.lock"
    find "$WHEELHOUSE" -mindepth 1 -maxdepth 1 ! -name .gitignore -exec rm -rf {} +
    mv "$work/wheels"/* "$WHEELHOUSE/"
    echo "$want" > "$stamp"
    log "wheelhouse: $(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels"
}

# What netsync:local is built from: the files of the build context (.dockerignore's `!` lines),
# the Dockerfile and the Python images' ids.
source_digest() {
    local paths=()
    mapfile -t paths < <(sed -n 's/^!//p' "$ROOT/.dockerignore" | sed 's:/*$::')
    (
        cd "$ROOT"
        for path in "${paths[@]}"; do
            [[ ! -e $path ]] || find "$path" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' \
                ! -path 'deploy/images/wheelhouse/*'
        done | LC_ALL=C sort | xargs -d '\n' sha256sum
        sha256sum Dockerfile
        docker image inspect --format '{{.Id}}' "$PYTHON_IMAGE" "$PYTHON_BUILD_IMAGE"
    ) | sha256sum | cut -d' ' -f1
}

build_app() {
    local digest="$1" cache=()
    [[ $rebuild -eq 0 ]] || cache=(--no-cache)
    build_wheelhouse
    log "$APP_IMAGE: docker build (classic builder, offline from the wheelhouse)"
    run docker-build.log env DOCKER_BUILDKIT=0 docker build "${cache[@]}" \
        --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" \
        --build-arg "PYTHON_BUILD_IMAGE=$PYTHON_BUILD_IMAGE" \
        --build-arg PIP_NO_INDEX=1 \
        --label "$SOURCE_LABEL=$digest" \
        --tag "$APP_IMAGE" "$ROOT"
}

for spec in "python:$PYTHON_IMAGE" "python_build:$PYTHON_BUILD_IMAGE" \
    "postgres:$POSTGRES_IMAGE" "redis:$REDIS_IMAGE"; do
    name="${spec%%:*}"
    tag="${spec#*:}"
    if [[ $name == python_build && $tag == "$PYTHON_IMAGE" ]]; then
        continue  # the build stage runs on the Python image itself
    elif [[ $rebuild -eq 0 ]] && image_exists "$tag"; then
        log "$tag: exists (--rebuild builds it again)"
    else
        started=$SECONDS
        "build_$name"
        log "$tag: built in $((SECONDS - started)) s"
    fi
done

digest="$(source_digest)"
label="$(docker image inspect --format "{{index .Config.Labels \"$SOURCE_LABEL\"}}" "$APP_IMAGE" \
    2>/dev/null || true)"
if [[ $rebuild -eq 0 && $label == "$digest" ]]; then
    log "$APP_IMAGE: up to date with its sources"
else
    started=$SECONDS
    build_app "$digest"
    log "$APP_IMAGE: built in $((SECONDS - started)) s"
fi

for tag in $(printf '%s\n' "$PYTHON_IMAGE" "$PYTHON_BUILD_IMAGE" "$POSTGRES_IMAGE" "$REDIS_IMAGE" \
    "$APP_IMAGE" | awk '!seen[$0]++'); do
    printf '%-45s %4d MB\n' "$tag" $(($(docker image inspect --format '{{.Size}}' "$tag") / 1000000))
done
cat <<EOF
# compose.yaml runs them with (in .env, or exported):
NETSYNC_PYTHON_IMAGE=$PYTHON_IMAGE
NETSYNC_POSTGRES_IMAGE=$POSTGRES_IMAGE
NETSYNC_REDIS_IMAGE=$REDIS_IMAGE
NETSYNC_IMAGE=$APP_IMAGE
EOF

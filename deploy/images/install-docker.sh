#!/usr/bin/env bash
# Install what the container images and the compose test need, where it is missing, on a Debian
# bookworm host (CI, a developer machine), then make sure a Docker daemon answers:
#
#   docker.io     Debian's Docker engine and CLI (any docker CLI already on the PATH is kept)
#   mmdebstrap    builds the base images' root file systems from Debian packages
#   docker compose v2, as a CLI plugin: bookworm only packages compose v1, so trixie's signed
#                 docker-compose package is downloaded through apt, with a private sources list
#                 (trixie is never added to the system's sources), and installed with dpkg. It
#                 depends only on libc6 >= 2.34 (bookworm has 2.36).
#
#   deploy/images/install-docker.sh          install what is missing, start dockerd if needed
#
# Needs root, or sudo. Environment: NETSYNC_DEBIAN_MIRROR (http://deb.debian.org/debian), the
# mirror trixie's docker-compose is fetched from; NETSYNC_DOCKERD_LOG (/var/log/dockerd.log).
set -euo pipefail

MIRROR="${NETSYNC_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
DOCKERD_LOG="${NETSYNC_DOCKERD_LOG:-/var/log/dockerd.log}"

log() { printf 'install-docker: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

if [[ $(id -u) -eq 0 ]]; then
    as_root() { "$@"; }
elif command -v sudo >/dev/null; then
    as_root() { sudo "$@"; }
else
    as_root() { die "needs root or sudo to run: $*"; }
fi

apt_updated=0
apt_install() {
    if [[ $apt_updated -eq 0 ]]; then
        as_root apt-get update
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}

missing=()
command -v docker >/dev/null || missing+=(docker.io)
command -v dockerd >/dev/null || missing+=(docker.io)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
[[ -r $KEYRING ]] || missing+=(debian-archive-keyring)
if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing ${missing[*]}"
    # shellcheck disable=SC2046  # the de-duplicated list, one word per package
    apt_install $(printf '%s\n' "${missing[@]}" | sort -u)
fi

install_compose() {
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
    printf 'deb [signed-by=%s] %s trixie main\n' "$KEYRING" "$MIRROR" > "$work/sources.list"
    # apt verifies trixie's InRelease against the Debian archive keyring, then the package's
    # SHA256 against the signed index: the download is as trusted as any apt-get install.
    local opts=(
        -o "Dir::Etc::SourceList=$work/sources.list"
        -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$work/lists"
        -o "Dir::Cache=$work/cache"
        -o APT::Sandbox::User=root
    )
    log "fetching docker-compose from trixie ($MIRROR)"
    as_root apt-get "${opts[@]}" update
    (cd "$work" && as_root apt-get "${opts[@]}" download docker-compose)
    local debs=("$work"/docker-compose_*.deb)
    [[ -f ${debs[0]} ]] || die "apt downloaded no docker-compose package"
    as_root dpkg -i "${debs[0]}"
}

# The plugin goes to /usr/libexec/docker/cli-plugins, one of the directories every docker CLI
# searches. A CLI that looks elsewhere (an older or vendored build) gets a link in
# /usr/local/lib/docker/cli-plugins, the directory for locally installed plugins.
if ! docker compose version >/dev/null 2>&1; then
    [[ -x /usr/libexec/docker/cli-plugins/docker-compose ]] || install_compose
    if ! docker compose version >/dev/null 2>&1; then
        as_root install -d /usr/local/lib/docker/cli-plugins
        as_root ln -sf /usr/libexec/docker/cli-plugins/docker-compose \
            /usr/local/lib/docker/cli-plugins/docker-compose
    fi
    docker compose version >/dev/null 2>&1 || die "docker compose still does not run"
fi
log "$(docker compose version)"

# A daemon: systemd's unit where there is one, otherwise dockerd in the background.
if ! docker info >/dev/null 2>&1; then
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
        log "starting docker.service"
        as_root systemctl start docker
    else
        log "starting dockerd (log: $DOCKERD_LOG)"
        # shellcheck disable=SC2016  # $1 is the inner shell's
        as_root sh -c 'nohup dockerd >>"$1" 2>&1 </dev/null &' sh "$DOCKERD_LOG"
    fi
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || die "dockerd did not answer within 60 s (see $DOCKERD_LOG)"
fi
log "docker $(docker version --format '{{.Server.Version}}') answers"

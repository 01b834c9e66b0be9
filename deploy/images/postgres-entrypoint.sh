#!/bin/bash
# Entry point of the PostgreSQL image that deploy/images/build.sh builds from Debian's
# postgresql-15. It reads the variables compose.yaml passes (those of the public postgres image):
#
#   POSTGRES_PASSWORD  required on the first start: the superuser's password (scram-sha-256)
#   POSTGRES_USER      the superuser's name (postgres)
#   POSTGRES_DB        a database created on the first start (POSTGRES_USER)
#   PGDATA             the cluster directory (/var/lib/postgresql/data, the volume)
#
# On the first start (no PG_VERSION in PGDATA) it runs initdb there and creates POSTGRES_DB with
# a server listening on a private socket only, so no client reaches the cluster before it is
# ready. Then it runs the server as the postgres user, listening on every interface, every
# connection authenticated by password (scram-sha-256; the socket too). Started as root (a bind
# mount owned by someone else), it first hands PGDATA to postgres, then drops to it. Any other
# command (psql, bash) runs as is.
set -euo pipefail

PGDATA="${PGDATA:-/var/lib/postgresql/data}"
export PGDATA

if [[ $# -eq 0 || ${1:0:1} == - ]]; then
    set -- postgres "$@"
fi
if [[ $1 != postgres ]]; then
    exec "$@"
fi

if [[ $(id -u) -eq 0 ]]; then
    install -d -o postgres -g postgres -m 0700 "$PGDATA"
    install -d -o postgres -g postgres -m 2775 /run/postgresql
    find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
    exec setpriv --reuid=postgres --regid=postgres --init-groups -- "${BASH_SOURCE[0]}" "$@"
fi

if [[ ! -s $PGDATA/PG_VERSION ]]; then
    : "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD: the superuser password of the new cluster}"
    user="${POSTGRES_USER:-postgres}"
    database="${POSTGRES_DB:-$user}"
    # An empty, existing PGDATA (a fresh named volume) is what initdb expects; one holding
    # anything else is refused by initdb itself.
    pwfile="$(umask 077 && mktemp)"
    trap 'rm -f "$pwfile"' EXIT
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    initdb --username="$user" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=scram-sha-256 --auth-host=scram-sha-256
    rm -f "$pwfile"
    trap - EXIT
    {
        echo
        echo "# deploy/images/postgres-entrypoint.sh: reachable from the container network,"
        echo "# every client authenticated by password"
        echo "listen_addresses = '*'"
        echo "password_encryption = scram-sha-256"
        echo "jit = off  # the image leaves out LLVM"
    } >> "$PGDATA/postgresql.conf"
    printf '%s\n' "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    if [[ $database != postgres ]]; then
        socket_dir="$(mktemp -d)"
        pg_ctl --pgdata="$PGDATA" --wait --silent \
            -o "-c listen_addresses='' -c unix_socket_directories=$socket_dir" start
        PGPASSWORD="$POSTGRES_PASSWORD" psql --no-psqlrc --quiet -v ON_ERROR_STOP=1 \
            --host="$socket_dir" --username="$user" --dbname=postgres -v name="$database" \
            <<<'CREATE DATABASE :"name";'
        pg_ctl --pgdata="$PGDATA" --wait --silent --mode=fast stop
        rmdir "$socket_dir"
    fi
    echo "postgres-entrypoint: initialised $PGDATA (superuser $user, database $database)"
fi

exec "$@"

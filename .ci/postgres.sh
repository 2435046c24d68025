#!/usr/bin/env bash
# A throwaway PostgreSQL server for the study tests (tests/studies/), bound to 127.0.0.1.
#
#   eval "$(.ci/postgres.sh start)"   # installs the Debian package if initdb is missing, starts a
#                                     # server on a free port in a temp dir and prints
#                                     # `export BITALLOC_TEST_POSTGRES_URL=postgresql://...` and
#                                     # `export BITALLOC_TEST_POSTGRES_DIR=...`
#   .ci/postgres.sh stop [DIR]        # stops that server and deletes its directory
#
# PostgreSQL refuses to run as root: as root the server runs as the `postgres` user.
# Authentication is `trust` on 127.0.0.1 and a unix socket inside the temp dir: test use only.
set -euo pipefail

find_bin() {
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v initdb)")"
        return 0
    fi
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
    return 1
}

as_owner() {  # run a PostgreSQL binary as the server's owner
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
    local bin dir port
    if ! bin=$(find_bin); then
        if [ "$(id -u)" != 0 ]; then
            echo "postgres.sh: initdb not found and not root: install postgresql" >&2
            exit 1
        fi
        echo "postgres.sh: installing postgresql (apt-get)" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
        bin=$(find_bin)
    fi
    if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
        useradd --system --no-create-home --shell /usr/sbin/nologin postgres
    fi
    dir=$(mktemp -d "${TMPDIR:-/tmp}/bitalloc-pg.XXXXXX")
    chmod 755 "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    as_owner "$bin/initdb" -D "$dir/data" -A trust -U bitalloc -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; exit 1; }
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" \
        start >&2 || { cat "$dir/server.log" >&2; exit 1; }
    as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U bitalloc bitalloc_test >&2
    echo "export BITALLOC_TEST_POSTGRES_URL=postgresql://bitalloc@127.0.0.1:$port/bitalloc_test"
    echo "export BITALLOC_TEST_POSTGRES_DIR=$dir"
}

stop() {
    local dir=${1:-${BITALLOC_TEST_POSTGRES_DIR:-}} bin
    if [ -z "$dir" ] || [ ! -d "$dir/data" ]; then return 0; fi
    bin=$(find_bin)
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >&2 || true
    rm -rf "$dir"
}

case "${1:-}" in
    start) start ;;
    stop) stop "${2:-}" ;;
    *) echo "usage: $0 start|stop [DIR]" >&2; exit 2 ;;
esac

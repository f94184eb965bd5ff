#!/usr/bin/env bash
# api-env.sh: a private PostgreSQL + Redis for trying the API by hand or from
# a test. Usage:
#   eval "$(tests/integration/api-env.sh start DIR)"   # exports DELTATUNE_*
#   tests/integration/api-env.sh stop DIR
# PostgreSQL runs as the postgres user (initdb refuses root) with its socket
# in DIR/pg; both servers listen on free loopback ports.
set -euo pipefail
cmd=${1:?start|stop}; dir=${2:?DIR}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
case $cmd in
start)
  mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
  mkdir -p "$dir/pg" "$dir/artifacts"
  [ "$(id -u)" = 0 ] && chown postgres "$dir/pg" && chmod 700 "$dir/pg"
  pgport=$(free_port); rport=$(free_port)
  as_pg "$PGBIN/initdb" -D "$dir/pg/data" -U postgres -A trust >"$dir/initdb.log" 2>&1
  as_pg "$PGBIN/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/log" -w \
      -o "-p $pgport -k $dir/pg -c listen_addresses=127.0.0.1" start >/dev/null
  as_pg "$PGBIN/createdb" -h "$dir/pg" -p "$pgport" -U postgres deltatune
  redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no \
      --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
  echo "$pgport" >"$dir/pgport"
  cat <<ENV
export DELTATUNE_DATABASE_URL="postgresql://postgres@127.0.0.1:$pgport/deltatune"
export DELTATUNE_REDIS_URL="redis://127.0.0.1:$rport"
export DELTATUNE_ARTIFACT_ROOT="$dir/artifacts"
ENV
  ;;
stop)
  dir=$(cd "$dir" && pwd)
  [ -f "$dir/redis.pid" ] && kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
  [ -d "$dir/pg/data" ] && as_pg "$PGBIN/pg_ctl" -D "$dir/pg/data" -m fast stop >/dev/null || true
  ;;
esac

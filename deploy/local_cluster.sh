#!/usr/bin/env bash
# A two-node Ray cluster on ONE machine, for trying `ray job submit` / Ray Train / Ray Tune
# the way a real cluster runs them (a head plus a worker node joined over GCS), without one.
#
#   deploy/local_cluster.sh start     # head + worker node; prints RAY_ADDRESS for `ray job submit`
#   deploy/local_cluster.sh status    # `ray status` + the node list of this cluster
#   deploy/local_cluster.sh address   # its job-submission address (http://127.0.0.1:8266 unless that was taken)
#   deploy/local_cluster.sh stop      # stops THIS cluster (the processes it started, by pid)
#   deploy/local_cluster.sh stop --all  # `ray stop --force`: every Ray process of this user
#
# Environment (all optional):
#   RAY_PORT=6390                 head GCS port (taken or 0: a free one)
#   RAY_DASHBOARD_PORT=8266       dashboard / job-submission HTTP port (taken or 0: a free one)
#   RAY_HEAD_CPUS=1 RAY_WORKER_CPUS=1          --num-cpus of each node (this box has 2 cores)
#   RAY_OBJECT_STORE_MB=200       --object-store-memory of EACH node, in MiB (Ray's minimum is ~75)
#   RAY_AUTH_MODE=disabled        exported to every `ray` command (and so to the daemons)
#   AUXRAY_CLUSTER_DIR=/tmp/auxray-cluster-$UID   state: pids, logs, cluster.env, Ray's --temp-dir
#   RAY_START_TIMEOUT=120         seconds to wait for the nodes to come up
#   RAY=ray                       the ray CLI (falls back to <repo>/.venv/bin/ray)
#   RAY_NODE_IP=127.0.0.2         --node-ip-address of both nodes (see below why not 127.0.0.1)
#
# Addresses (checked with `ss -ltnp` on Ray 2.60):
# * The dashboard and its job-submission API listen on 127.0.0.1 only (--dashboard-host).
# * `ray start --node-ip-address=127.0.0.1` does NOT give a loopback node on Linux: Ray rewrites
#   "127.0.0.1"/"localhost"/"::1" to the host's routable IP (services.resolve_ip_for_localhost), so
#   the node IP, GCS address and the Python agents (dashboard agent HTTP, runtime-env agent) end
#   up on e.g. 192.0.2.2. Ray's escape hatch, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, also forbids
#   worker nodes from joining. Any other 127.x.y.z address is left alone and is loopback on Linux,
#   so the default node IP is 127.0.0.2: Ray's own addresses and Python agents stay on loopback.
# * Still on all interfaces in Ray 2.60 whatever the flags: the C++ gRPC servers (gcs_server,
#   raylet node/object manager, core workers), the metrics agent gRPC port and the Prometheus
#   exporters. On a machine reachable by others, firewall it or run this inside a container/netns.
#
# What was checked on Ray 2.60 (2 cores, 24 GB, one machine):
# * Two nodes on one machine share ONE --temp-dir and ONE session dir (the worker finds the head's
#   session through GCS; that is also what ray.cluster_utils.Cluster does in Ray's own tests).
#   Since Ray PR #57735 --temp-dir may be given per node; we pass the same one to both, a private
#   directory, so this cluster's ray_current_cluster file never redirects someone else's
#   `ray.init(address="auto")` that uses the default /tmp/ray.
# * Ports that would collide between two nodes on one host and must differ:
#   --dashboard-agent-listen-port (default 52365 on EVERY node), and --node-manager-port /
#   --object-manager-port / --metrics-export-port / --runtime-env-agent-port /
#   --dashboard-agent-grpc-port (random by default; pinned to free ports here so the two nodes can
#   never pick the same one). The head's --ray-client-server-port (default 10001) is pinned too.
# * The second node runs --include-log-monitor=false: one log monitor per physical host (the
#   session's log dir is shared), as Ray's help text says.
# * The worker node is labelled with --resources='{"auxray_worker_node": 1}' so a job can target it.
# * Each node is a `ray start --block` process put in its own session (setsid); SIGTERM to it makes
#   Ray drain and kill that node's daemons (Node's SIGTERM handler + kernel fate-sharing), so
#   `stop` ends exactly this cluster by pid. Plain `ray stop --force` would also kill any other Ray
#   instance this user runs on the machine (other test sessions), hence `stop --all` is opt-in.
#
# Verified end to end here (and by tests/test_cluster.py, with free ports):
#   uv run deploy/local_cluster.sh start     # ~60 s on 2 cores; `ray status`: 2 active nodes,
#                                            # 2 CPU, 400 MiB object store, 1 auxray_worker_node
#   RAY_AUTH_MODE=disabled uv run ray job submit --address http://127.0.0.1:8266 \
#       --working-dir /tmp/hello_job -- python hello.py        # -> Job '...' succeeded
#   uv run deploy/local_cluster.sh stop      # ~7 s; no raylet/gcs_server of this cluster left
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"

export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
export RAY_USAGE_STATS_ENABLED="${RAY_USAGE_STATS_ENABLED:-0}"

STATE="${AUXRAY_CLUSTER_DIR:-/tmp/auxray-cluster-$(id -u)}"
RAY_BIN="${RAY:-ray}"
if ! command -v "$RAY_BIN" >/dev/null 2>&1; then
  RAY_BIN="$REPO/.venv/bin/ray"
fi
PY="$(dirname "$(command -v "$RAY_BIN")")/python"
[ -x "$PY" ] || PY="$(command -v python3)"

NODE_IP="${RAY_NODE_IP:-127.0.0.2}"
HEAD_CPUS="${RAY_HEAD_CPUS:-1}"
WORKER_CPUS="${RAY_WORKER_CPUS:-1}"
OBJ_BYTES=$(( ${RAY_OBJECT_STORE_MB:-200} * 1024 * 1024 ))
TIMEOUT="${RAY_START_TIMEOUT:-120}"

log() { echo "[local_cluster] $*" >&2; }

# A free TCP port on every interface (Ray C++ servers bind all of them; bind to 0 and read it back; tiny race, fine for a dev box).
free_port() {
  "$PY" -c 'import socket; s=socket.socket(); s.bind(("", 0)); print(s.getsockname()[1]); s.close()'
}

# $1 port if nothing listens on it, else (or for 0) a free one: a busy default never stops the cluster.
pick_port() {
  if [ "${1:-0}" != 0 ] && "$PY" -c 'import socket,sys; s=socket.socket(); s.bind(("", int(sys.argv[1]))); s.close()' "$1" 2>/dev/null; then
    echo "$1"
  else
    [ "${1:-0}" = 0 ] || log "port $1 is taken; using a free one (see: $0 address)"
    free_port
  fi
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

read_pid() { [ -f "$STATE/$1.pid" ] && cat "$STATE/$1.pid" || true; }

# Number of ALIVE nodes seen through the dashboard's state API ("" when it cannot be reached).
alive_nodes() {
  "$RAY_BIN" list nodes --address "$DASHBOARD_URL" --filter "state=ALIVE" --format json 2>/dev/null \
    | "$PY" -c 'import json,sys; print(len(json.load(sys.stdin)))' 2>/dev/null || true
}

stop_node() {  # $1 = head|worker
  local pid
  pid="$(read_pid "$1")"
  if alive "$pid"; then
    log "stopping $1 node (ray start --block, pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do alive "$pid" || break; sleep 0.5; done
  fi
  if [ -n "$pid" ]; then
    # Stragglers of that node's process group (setsid made the group id = pid).
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$STATE/$1.pid"
}

cmd_stop() {
  if [ "${1:-}" = "--all" ]; then
    log "ray stop --force (every Ray process of user $(id -un) on this machine)"
    "$RAY_BIN" stop --force || true
  fi
  stop_node worker
  stop_node head
  rm -f "$STATE/cluster.env"
  log "stopped"
}

fail_start() {
  log "ERROR: $*"
  for n in head worker; do
    if [ -f "$STATE/$n.log" ]; then log "--- tail of $STATE/$n.log"; tail -n 30 "$STATE/$n.log" >&2; fi
  done
  cmd_stop
  exit 1
}

cmd_start() {
  mkdir -p "$STATE"
  if alive "$(read_pid head)" || alive "$(read_pid worker)"; then
    log "a cluster from $STATE is already running; run '$0 stop' first"
    [ -f "$STATE/cluster.env" ] && cat "$STATE/cluster.env"
    exit 1
  fi
  local port dport tmp
  port="$(pick_port "${RAY_PORT:-6390}")"
  dport="$(pick_port "${RAY_DASHBOARD_PORT:-8266}")"
  tmp="$STATE/ray"   # short: Unix socket paths under it must stay < 108 bytes
  mkdir -p "$tmp"
  GCS="$NODE_IP:$port"
  DASHBOARD_URL="http://127.0.0.1:$dport"

  # --- head node --------------------------------------------------------------------------
  setsid "$RAY_BIN" start --head --block \
    --node-ip-address="$NODE_IP" \
    --port="$port" \
    --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$dport" \
    --dashboard-agent-listen-port="$(free_port)" --dashboard-agent-grpc-port="$(free_port)" \
    --runtime-env-agent-port="$(free_port)" --metrics-export-port="$(free_port)" \
    --node-manager-port="$(free_port)" --object-manager-port="$(free_port)" \
    --ray-client-server-port="$(free_port)" \
    --num-cpus="$HEAD_CPUS" --num-gpus=0 \
    --object-store-memory="$OBJ_BYTES" \
    --temp-dir="$tmp" \
    --disable-usage-stats \
    >"$STATE/head.log" 2>&1 </dev/null &
  echo $! >"$STATE/head.pid"
  log "head node starting (pid $!, GCS $GCS, dashboard $DASHBOARD_URL), log $STATE/head.log"

  local deadline=$(( $(date +%s) + TIMEOUT ))
  until "$RAY_BIN" status --address "$GCS" >/dev/null 2>&1 && [ -n "$(alive_nodes)" ]; do
    alive "$(read_pid head)" || fail_start "head node exited"
    [ "$(date +%s)" -lt "$deadline" ] || fail_start "head node not up after ${TIMEOUT}s"
    sleep 1
  done

  # --- worker node (joins the head's GCS; same machine, same temp dir / session) ----------
  setsid "$RAY_BIN" start --block \
    --address="$GCS" \
    --node-ip-address="$NODE_IP" \
    --dashboard-agent-listen-port="$(free_port)" --dashboard-agent-grpc-port="$(free_port)" \
    --runtime-env-agent-port="$(free_port)" --metrics-export-port="$(free_port)" \
    --node-manager-port="$(free_port)" --object-manager-port="$(free_port)" \
    --num-cpus="$WORKER_CPUS" --num-gpus=0 \
    --object-store-memory="$OBJ_BYTES" \
    --resources='{"auxray_worker_node": 1}' \
    --include-log-monitor=false \
    --temp-dir="$tmp" \
    --disable-usage-stats \
    >"$STATE/worker.log" 2>&1 </dev/null &
  echo $! >"$STATE/worker.pid"
  log "worker node starting (pid $!), log $STATE/worker.log"

  until [ "$(alive_nodes)" = 2 ]; do
    alive "$(read_pid worker)" || fail_start "worker node exited"
    [ "$(date +%s)" -lt "$deadline" ] || fail_start "2 nodes not alive after ${TIMEOUT}s"
    sleep 1
  done

  cat >"$STATE/cluster.env" <<EOF
RAY_ADDRESS=$DASHBOARD_URL
RAY_GCS_ADDRESS=$GCS
RAY_AUTH_MODE=$RAY_AUTH_MODE
RAY_TEMP_DIR=$tmp
EOF
  log "2 nodes alive. Submit jobs with:"
  log "  RAY_AUTH_MODE=$RAY_AUTH_MODE ray job submit --address $DASHBOARD_URL --working-dir . -- python jobs/train.py CONFIG"
  log "  (drivers that call ray.init() directly: address=$GCS)"
  echo "RAY_ADDRESS=$DASHBOARD_URL"
}

cmd_address() {  # the running cluster's dashboard / job-submission URL, for `ray job submit --address`
  [ -f "$STATE/cluster.env" ] || { log "no cluster running from $STATE"; exit 1; }
  sed -n 's/^RAY_ADDRESS=//p' "$STATE/cluster.env"
}

cmd_status() {
  if [ ! -f "$STATE/cluster.env" ]; then
    log "no cluster running from $STATE"
    exit 1
  fi
  cat "$STATE/cluster.env"
  # shellcheck disable=SC1091
  . "$STATE/cluster.env"
  DASHBOARD_URL="$RAY_ADDRESS"
  "$RAY_BIN" status --address "$RAY_GCS_ADDRESS"
  "$RAY_BIN" list nodes --address "$DASHBOARD_URL"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) shift; cmd_stop "${1:-}" ;;
  status) cmd_status ;;
  address) cmd_address ;;
  *) echo "usage: $0 start|stop [--all]|status|address" >&2; exit 2 ;;
esac

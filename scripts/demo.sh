#!/usr/bin/env bash
# The README's demo: `kuryr up` (server + agent) and two "containers" on one
# network; ping works, then a security group without ICMP blocks it.
#
# `kuryr up` programs the host it runs on. So that this demo leaves your machine
# alone, the "host" is a network namespace (kuryr-demo-host) and the containers are
# namespaces too; everything is removed at the end, even on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

KURYR=${KURYR_BIN:-$PWD/target/release/kuryr}
OPENSTACK=${OPENSTACK_BIN:-$PWD/.venv/bin/openstack}
[ -x "$KURYR" ] || cargo build --release --bin kuryr
[ -x "$OPENSTACK" ] || scripts/test-deps.sh

HOST=kuryr-demo-host
WORK=$(mktemp -d /tmp/kuryr-demo.XXXXXX)
stop_up() {
  # SIGTERM, as a user's Ctrl-C; SIGKILL only if it does not stop in 10 s.
  [ -n "${UP_PID:-}" ] || return 0
  kill "$UP_PID" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$UP_PID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$UP_PID" 2>/dev/null; then
    echo "kuryr up did not stop on SIGTERM; killing it" >&2
    kill -9 "$UP_PID" 2>/dev/null || true
    UP_STUCK=1
  fi
  wait "$UP_PID" 2>/dev/null || true
  UP_PID=
}
cleanup() {
  stop_up
  for ns in kuryr-demo-c1 kuryr-demo-c2 "$HOST"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

in_host() { ip netns exec "$HOST" "$@"; }
os() { in_host "$OPENSTACK" "$@"; }

ip netns add "$HOST"
ip -n "$HOST" link set lo up
ip netns add kuryr-demo-c1
ip netns add kuryr-demo-c2

echo "== kuryr up (server + agent) inside $HOST"
ip netns exec "$HOST" "$KURYR" up --data-dir "$WORK/data" --agent-socket "$WORK/agent.sock" \
  --docker-socket "$WORK/plugins/kuryr.sock" \
  --host demo-host >"$WORK/up.log" 2>&1 &
UP_PID=$!
for _ in $(seq 100); do [ -S "$WORK/agent.sock" ] && break; sleep 0.1; done
[ -S "$WORK/agent.sock" ] || { cat "$WORK/up.log"; exit 1; }
set -a; source "$WORK/data/admin-openrc.sh"; set +a

echo "== a network, a subnet and two ports (the openstack CLI)"
os network create demo -f value -c id >/dev/null
os subnet create demo-v4 --network demo --subnet-range 10.10.0.0/24 -f value -c id >/dev/null
P1=$(os port create c1 --network demo -f value -c id)
P2=$(os port create c2 --network demo -f value -c id)

echo "== kuryr port bind: each port into its container namespace"
"$KURYR" port bind "$P1" --netns /run/netns/kuryr-demo-c1 --socket "$WORK/agent.sock"
"$KURYR" port bind "$P2" --netns /run/netns/kuryr-demo-c2 --socket "$WORK/agent.sock"
IP2=$(os port show "$P2" -f json -c fixed_ips | python3 -c 'import json,sys; print(json.load(sys.stdin)["fixed_ips"][0]["ip_address"])')
os port list --network demo -c Name -c "Fixed IP Addresses" -c Status

echo "== ping c1 -> c2 ($IP2): both ports are in the project's default group"
ip netns exec kuryr-demo-c1 ping -c 2 -W 1 "$IP2"

echo "== c2 moves to a group that admits only TCP 80: ping is blocked"
os security group create web -f value -c id >/dev/null
os security group rule create web --ingress --protocol tcp --dst-port 80 -f value -c id >/dev/null
os port set "$P2" --no-security-group --security-group web
if ip netns exec kuryr-demo-c1 ping -c 2 -W 1 "$IP2"; then
  echo "unexpected: ping went through"; exit 1
fi
echo "blocked, as the security group says."

echo "== unbind and clean up"
"$KURYR" port unbind "$P1" --socket "$WORK/agent.sock"
"$KURYR" port unbind "$P2" --socket "$WORK/agent.sock"
echo "== stop kuryr up"
stop_up
[ -z "${UP_STUCK:-}" ] || exit 1
echo "demo done"

#!/usr/bin/env bash
# Throughput of a relay pair: the campus chain (whose rate-limit module counts three times
# a message) through
#   1. one node, counters in memory;
#   2. one node, counters in Redis;
#   3. two nodes behind HAProxy (dist/haproxy/haproxy.cfg, PROXY v2), counters in Redis;
# each measured with Postfix's smtp-source into Postfix's smtp-sink, as bench/throughput.sh.
#
#   bash bench/pair.sh [MESSAGES] [SESSIONS] [SIZE_BYTES]
#   SLUICE_BIN=path/to/sluice bash bench/pair.sh ...      # use that binary, no build
#
# Prints accepted/s (messages answered 250, per second of sending) and end-to-end/s
# (messages at the sink, per second from the first send) for each, and what one Redis
# round trip costs per count (from 1 and 2). On one small machine the two nodes of 3
# share its cores with HAProxy, Redis and the load: it shows what the balancer and the
# shared counters cost, not what a second machine would add.
# Needs: apt-get install postfix redis-server haproxy.
set -euo pipefail
sluice=${SLUICE_BIN:+$(realpath "$SLUICE_BIN")}
cd "$(dirname "$0")/.."
MESSAGES=${1:-10000}
SESSIONS=${2:-20}
SIZE=${3:-1024}
PATH="$PATH:/usr/sbin"
for tool in smtp-source smtp-sink redis-server haproxy; do
  command -v "$tool" >/dev/null || { echo "needs $tool: apt-get install postfix redis-server haproxy" >&2; exit 1; }
done
# shellcheck source=bench/common.sh
. bench/common.sh
sluice=$(sluice_binary "$sluice")

work=$(mktemp -d)
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
base=$((20000 + RANDOM % 10000))
sink_port=$base redis_port=$((base + 1)) front_port=$((base + 2))

# Starts a node named $1 listening on $2 (plain) and $3 (PROXY v2 from loopback), with
# $4 more TOML; its log is $work/$1.log.
start_node() {
  local name=$1 port=$2 proxied=$3 more=$4
  mkdir -p "$work/$name"
  campus_chain "$work/$name/policies.d"
  SLUICE_BENCH_CONFIG="[[listener]]
addr = \"127.0.0.1:$proxied\"
proxy_protocol = true
proxy_from = [\"127.0.0.1/32\"]
$more" relay_config "$work/$name/sluice.toml" "$port" "$sink_port" "$work/$name" 'retry_intervals = ["1s"]'
  SLUICE_LOG=warn "$sluice" serve --config "$work/$name/sluice.toml" 2> "$work/$name.log" &
  node_pid=$!
  wait_port "$port"
}

# Sends the load to 127.0.0.1:$1; prints accepted/s and end-to-end/s once the sink has
# received $2 messages in all.
measure() {
  local port=$1 expect=$2 start sent done deadline
  start=$(date +%s.%N)
  smtp-source -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -f app@bench.test -t user@example.org \
    "127.0.0.1:$port"
  sent=$(date +%s.%N)
  deadline=$((SECONDS + 120 + MESSAGES / 20))
  until [ "$(sink_count "$work/sink.out")" -ge "$expect" ]; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "only $(sink_count "$work/sink.out") of $expect reached the sink" >&2; exit 1; }
    sleep 0.1
  done
  done=$(date +%s.%N)
  awk -v n="$MESSAGES" -v a="$start" -v s="$sent" -v d="$done" \
    'BEGIN { printf "accepted/s: %.0f\nend-to-end/s: %.0f\n", n / (s - a), n / (d - a) }'
}

smtp-sink -c -u root "127.0.0.1:$sink_port" 1000 > "$work/sink.out" 2>&1 &
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >/dev/null &
wait_port "$redis_port"
redis="[counters]
url = \"redis://127.0.0.1:$redis_port\""

echo "messages: $MESSAGES, sessions: $SESSIONS, size: $SIZE, chain: campus"
echo "--- one node, counters in memory"
start_node memory $((base + 10)) $((base + 11)) ""
memory=$(measure $((base + 10)) "$MESSAGES"); echo "$memory"
kill "$node_pid"; wait "$node_pid" 2>/dev/null || true

echo "--- one node, counters in Redis"
start_node alone $((base + 20)) $((base + 21)) "$redis"
alone=$(measure $((base + 20)) $((2 * MESSAGES))); echo "$alone"
kill "$node_pid"; wait "$node_pid" 2>/dev/null || true

echo "--- two nodes behind HAProxy, counters in Redis"
start_node node-a $((base + 30)) $((base + 31)) "$redis"
start_node node-b $((base + 40)) $((base + 41)) "$redis"
sed -e "s/10.0.0.10:25/127.0.0.1:$front_port/" -e "s/10.0.0.11:25/127.0.0.1:$((base + 31))/" \
    -e "s/10.0.0.12:25/127.0.0.1:$((base + 41))/" \
    dist/haproxy/haproxy.cfg > "$work/haproxy.cfg"
haproxy -db -f "$work/haproxy.cfg" >/dev/null 2>&1 &
wait_port "$front_port"
measure "$front_port" $((3 * MESSAGES))

# Three counts a message (a peek at MAIL, a count at RCPT and at DATA): the difference
# between 1 and 2, per count.
awk -v m="$(echo "$memory" | sed -n 's/^accepted\/s: //p')" -v r="$(echo "$alone" | sed -n 's/^accepted\/s: //p')" \
  'BEGIN { printf "one Redis round trip, per count: %.0f µs of the relay'"'"'s time\n", (1 / r - 1 / m) * 1e6 / 3 }'

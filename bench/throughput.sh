#!/usr/bin/env bash
# Throughput of the relay with its default chain, measured with Postfix's smtp-source.
#
#   bash bench/throughput.sh [MESSAGES] [SESSIONS] [SIZE_BYTES]
#
# Builds release, starts a sink (Postfix's smtp-sink) and the relay on loopback, sends
# MESSAGES messages of SIZE_BYTES over SESSIONS parallel sessions, and prints:
#   accepted/s   messages the relay answered 250 to, per second of sending
#   end-to-end/s messages that reached the sink, per second from the first send
# Needs: apt-get install postfix (for smtp-source and smtp-sink).
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${1:-20000}
SESSIONS=${2:-20}
SIZE=${3:-1024}
for tool in smtp-source smtp-sink; do
  command -v "$tool" >/dev/null || PATH="$PATH:/usr/sbin"
  command -v "$tool" >/dev/null || { echo "needs $tool: apt-get install postfix" >&2; exit 1; }
done

cargo build --release -q
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
relay_port=$((20000 + RANDOM % 10000)); sink_port=$((relay_port + 1))
cat > "$work/sluice.toml" <<TOML
hostname = "relay.bench"
[[listener]]
addr = "127.0.0.1:$relay_port"
[limits]
max_connections_per_ip = 1000
[spool]
dir = "$work/spool"
[delivery]
smarthost = "127.0.0.1:$sink_port"
retry_intervals = ["1s"]
[policies]
dir = "$work/policies.d"
TOML

# smtp-sink -c counts messages; its count is read from its output at the end.
smtp-sink -c -u root 127.0.0.1:$sink_port 1000 > "$work/sink.out" 2>&1 &
SLUICE_LOG=warn ./target/release/sluice serve --config "$work/sluice.toml" 2> "$work/relay.log" &
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$relay_port) 2>/dev/null && break; sleep 0.1; done

start=$(date +%s.%N)
smtp-source -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -f app@bench.test -t user@example.org 127.0.0.1:$relay_port
sent=$(date +%s.%N)
# Wait until the queue is empty (every message delivered to the sink).
for _ in $(seq 600); do
  [ -z "$(ls -A "$work/spool/queue" 2>/dev/null)" ] && break
  sleep 0.1
done
done_at=$(date +%s.%N)
python3 - "$MESSAGES" "$start" "$sent" "$done_at" <<'PY'
import sys
n, start, sent, done = int(sys.argv[1]), *map(float, sys.argv[2:])
print(f"messages: {n}")
print(f"accepted/s: {n / (sent - start):.0f}")
print(f"end-to-end/s: {n / (done - start):.0f}")
PY

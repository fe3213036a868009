#!/usr/bin/env bash
# Throughput of the relay, measured with Postfix's smtp-source, beside the ceiling (the
# same load sent straight to a sink, nothing durable between) and, where Postfix is
# installed, Postfix set up as the same kind of relay.
#
#   bash bench/throughput.sh [MESSAGES] [SESSIONS] [SIZE_BYTES] [CHAIN]
#   SLUICE_BIN=path/to/sluice bash bench/throughput.sh ...   # use that binary, no build
#
# CHAIN is `default` (the relay's embedded chain, one module) or `campus` (the seven
# modules of examples/campus/policies.toml, with the sender and internal domains set to
# the benchmark's and the rate limits above the load).
#
# Builds release (unless SLUICE_BIN is set), starts a sink (Postfix's smtp-sink) and the
# relay on loopback, sends MESSAGES messages of SIZE_BYTES over SESSIONS parallel
# sessions, and prints:
#   accepted/s   messages the relay answered 250 to, per second of sending
#   end-to-end/s messages that reached the sink, per second from the first send
# Then does the same against a private Postfix instance (its own config, queue and sink,
# all under a temp dir; the system's Postfix is neither used nor changed) and prints the
# same two figures for it and the ratios Sluice/Postfix. Postfix is skipped, with a note,
# if it is not installed or the script is not run as root (its master must start as root).
# Needs: apt-get install postfix (for smtp-source and smtp-sink, and the comparison).
set -euo pipefail
# Resolve before the cd below, so a path relative to the caller's directory works.
sluice=${SLUICE_BIN:+$(realpath "$SLUICE_BIN")}
cd "$(dirname "$0")/.."
MESSAGES=${1:-20000}
SESSIONS=${2:-20}
SIZE=${3:-1024}
CHAIN=${4:-default}
case $CHAIN in default|campus) ;; *) echo "CHAIN is default or campus, not $CHAIN" >&2; exit 2 ;; esac
# Debian puts the Postfix tools in /usr/sbin, which a non-login root shell may lack.
PATH="$PATH:/usr/sbin"
for tool in smtp-source smtp-sink; do
  command -v "$tool" >/dev/null || { echo "needs $tool: apt-get install postfix" >&2; exit 1; }
done
with_postfix=yes
if ! command -v postfix >/dev/null || ! command -v postconf >/dev/null; then
  with_postfix="skipped (postfix is not installed)"
elif [ "$(id -u)" != 0 ]; then
  with_postfix="skipped (a private Postfix instance needs root)"
fi

# shellcheck source=bench/common.sh
. bench/common.sh
sluice=$(sluice_binary "$sluice")

work=$(mktemp -d)
pf=$work/postfix
cleanup() {
  # Postfix's master daemonizes, so it is not one of our jobs: stop it by its config.
  # `postfix stop` waits (up to 5 s) for the master to exit, so nothing still writes
  # under $work when it is removed.
  if [ -f "$pf/etc/main.cf" ]; then postfix -c "$pf/etc" stop >/dev/null 2>&1 || true; fi
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
relay_port=$((20000 + RANDOM % 10000))
sink_port=$((relay_port + 1)) pf_port=$((relay_port + 2)) pf_sink_port=$((relay_port + 3))

# Sends the load to 127.0.0.1:$1 and waits until the sink whose output is $2 has all of
# it; sets t_start, t_sent, t_done. $3 is the relay's log, shown if mail goes missing.
# End-to-end is judged by the sink's count for both relays, not by their queues being
# empty: it is the same test for both, it does not depend on either relay's spool
# layout (Postfix moves a message between incoming/, active/ and deferred/), and
# reading the last bytes of a file costs nothing, where listing a queue of 20,000 files
# ten times a second would take CPU from the relay under test on a small machine.
run_load() {
  local port=$1 sink_out=$2 log=$3 deadline
  wait_port "$port"
  t_start=$(date +%s.%N)
  smtp-source -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -f app@bench.test -t user@example.org \
    "127.0.0.1:$port"
  t_sent=$(date +%s.%N)
  # Generous, but a relay that loses or defers mail must fail the run, not report a
  # figure from a partial delivery.
  deadline=$((SECONDS + 120 + MESSAGES / 20))
  until [ "$(sink_count "$sink_out")" -ge "$MESSAGES" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "127.0.0.1:$port: only $(sink_count "$sink_out") of $MESSAGES messages reached the sink" >&2
      tail -n 20 "$log" >&2 2>/dev/null || true
      return 1
    fi
    sleep 0.1
  done
  t_done=$(date +%s.%N)
}

# --- The ceiling: the same load straight into a sink ---------------------------------
ceiling_port=$((relay_port + 4))
smtp-sink -c -u root "127.0.0.1:$ceiling_port" 1000 > "$work/ceiling.out" 2>&1 &
ceiling_pid=$!
run_load "$ceiling_port" "$work/ceiling.out" /dev/null
ceiling_times="$t_start $t_sent $t_done"
kill "$ceiling_pid"
wait "$ceiling_pid" 2>/dev/null || true

# --- Sluice -------------------------------------------------------------------------
relay_config "$work/sluice.toml" "$relay_port" "$sink_port" "$work" 'retry_intervals = ["1s"]'
if [ "$CHAIN" = campus ]; then campus_chain "$work/policies.d"; fi

smtp-sink -c -u root "127.0.0.1:$sink_port" 1000 > "$work/sink.out" 2>&1 &
sink_pid=$!
SLUICE_LOG=warn "$sluice" serve --config "$work/sluice.toml" 2> "$work/relay.log" &
relay_pid=$!
run_load "$relay_port" "$work/sink.out" "$work/relay.log"
sluice_times="$t_start $t_sent $t_done"
# Stopped before Postfix starts, so the two runs do not share the CPU.
kill "$relay_pid" "$sink_pid"
wait "$relay_pid" "$sink_pid" 2>/dev/null || true

# --- Postfix ------------------------------------------------------------------------
postfix_times=
if [ "$with_postfix" = yes ]; then
  mkdir -p "$pf/etc" "$pf/queue"
  # The daemons drop to mail_owner and must reach their queue and config under $work,
  # which mktemp makes private to root.
  chmod 755 "$work"
  cp /etc/postfix/master.cf "$pf/etc/"
  # Postfix 3.6 introduced "major.minor" compatibility levels; before it, 2 is the
  # newest. The level picks the modern defaults (e.g. smtputf8_enable = yes, which the
  # test mail does not need and so does not change the work done).
  case $(postconf -d -h mail_version) in
    [0-2].*|3.[0-5]|3.[0-5].*) compat=2 ;;
    *) compat=3.6 ;;
  esac
  # A table lookup at HELO and at MAIL FROM, as a relay's policy would do; no entry
  # matches the test traffic. texthash: is read into memory like hash:, without
  # postmap or a .db file.
  printf 'spammer.example REJECT\nbad-helo.example REJECT\n' > "$pf/etc/helo_access"
  printf 'spam.example REJECT\nbad-sender@example.com REJECT\n' > "$pf/etc/sender_access"
  cat > "$pf/etc/main.cf" <<CF
compatibility_level = $compat
queue_directory = $pf/queue
data_directory = $pf/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench
inet_interfaces = loopback-only
inet_protocols = ipv4
# Relay for loopback clients only, everything to the sink, nothing delivered here.
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_helo_restrictions = check_helo_access texthash:$pf/etc/helo_access
smtpd_sender_restrictions = check_sender_access texthash:$pf/etc/sender_access
relayhost = [127.0.0.1]:$pf_sink_port
mydestination =
local_recipient_maps =
local_transport = error:5.1.1 local delivery is disabled
# No aliases: nothing is delivered locally, and hash:/etc/aliases would have to exist.
alias_maps =
alias_database =
# Postfix logs to syslog, which a container or CI machine may not run; a file works
# everywhere. It logs each message, as a production Postfix does.
maillog_file = $pf/maillog
maillog_file_prefixes = $pf
CF
  # The system master.cf runs most services chrooted to the queue directory, which would
  # need copies of /etc files there; the smtpd entry listens on the private port.
  postconf -c "$pf/etc" -F '*/*/chroot = n' "smtp/inet/service = 127.0.0.1:$pf_port"
  # Everything else is Postfix's defaults: fsync per message, destination concurrency
  # 20 (the same as Sluice's delivery concurrency), connection caching to the relayhost.
  smtp-sink -c -u root "127.0.0.1:$pf_sink_port" 1000 > "$work/pf-sink.out" 2>&1 &
  # `check` creates the queue directories with the right owners and modes.
  if ! postfix -c "$pf/etc" check || ! postfix -c "$pf/etc" start >/dev/null; then
    # Postfix reports to syslog (absent here), or to a terminal: replay the start on a
    # pseudo-terminal to show why (should it succeed this time, the trap stops it).
    echo "postfix did not start:" >&2
    script -qec "postfix -c '$pf/etc' start" /dev/null 2>&1 | tr -d '\r' >&2 || true
    exit 1
  fi
  run_load "$pf_port" "$work/pf-sink.out" "$pf/maillog"
  postfix_times="$t_start $t_sent $t_done"
fi

python3 - "$MESSAGES" "$sluice_times" "$postfix_times" "$with_postfix" "$ceiling_times" "$CHAIN" <<'PY'
import sys
n, sluice, postfix, status, ceiling, chain = int(sys.argv[1]), *sys.argv[2:]

def rates(times):
    start, sent, done = map(float, times.split())
    return n / (sent - start), n / (done - start)

s_acc, s_e2e = rates(sluice)
c_acc, _ = rates(ceiling)
print(f"messages: {n}, chain: {chain}")
print(f"ceiling (smtp-source straight to smtp-sink)/s: {c_acc:.0f}")
print(f"accepted/s: {s_acc:.0f}")
print(f"end-to-end/s: {s_e2e:.0f}")
print(f"share of the ceiling accepted: {s_acc / c_acc:.2f}")
print(f"share of the ceiling end-to-end: {s_e2e / c_acc:.2f}")
if postfix:
    p_acc, p_e2e = rates(postfix)
    print(f"postfix accepted/s: {p_acc:.0f}")
    print(f"postfix end-to-end/s: {p_e2e:.0f}")
    print(f"ratio accepted: {s_acc / p_acc:.2f}")
    print(f"ratio end-to-end: {s_e2e / p_e2e:.2f}")
else:
    print(f"postfix: {status}")
PY

#!/usr/bin/env bash
# The relay's memory under two loads a hostile (or merely busy) campus can put on it, with
# the example campus chain (examples/campus/policies.toml, seven modules):
#   1. IDLE idle sessions: connected and greeted with EHLO, as a client that holds its
#      connection open does. Prints the relay's resident memory per idle session.
#   2. DATA_SESSIONS sessions at once in DATA, each sending MESSAGE_MB of message text
#      before any of them ends its message. Prints the relay's peak resident memory.
#
#   bash bench/memory.sh [IDLE] [DATA_SESSIONS] [MESSAGE_MB]
#   SLUICE_BIN=path/to/sluice bash bench/memory.sh ...   # use that binary, no build
#
# Needs python3 (the clients) and Linux's /proc (the relay's VmRSS and VmHWM).
set -euo pipefail
sluice=${SLUICE_BIN:+$(realpath "$SLUICE_BIN")}
cd "$(dirname "$0")/.."
IDLE=${1:-1000}
DATA_SESSIONS=${2:-50}
MESSAGE_MB=${3:-10}

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
relay_port=$((20000 + RANDOM % 10000))
sink_port=$((relay_port + 1))
mkdir -p "$work/policies.d"
cp examples/campus/policies.toml "$work/policies.d/"
relay_config "$work/sluice.toml" "$relay_port" "$sink_port" "$work"
# Room for every session of the run, from one client address.
sed -i "s/^max_connections_per_ip = .*/max_connections_per_ip = $((IDLE + 10))\nmax_connections = $((IDLE + 10))\nmax_message_size = $(((MESSAGE_MB + 1) * 1048576))/" "$work/sluice.toml"
ulimit -n $((IDLE * 2 + 256)) 2>/dev/null || true
SLUICE_LOG=warn "$sluice" serve --config "$work/sluice.toml" 2>"$work/relay.log" &
relay_pid=$!
wait_port "$relay_port"

python3 - "$relay_port" "$relay_pid" "$IDLE" "$DATA_SESSIONS" "$MESSAGE_MB" <<'PY'
import socket, sys, threading, time

port, pid, idle, data_sessions, mb = (int(a) for a in sys.argv[1:])

def status(field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])  # kB

def reply(sock):
    data = b""
    while True:
        data += sock.recv(65536)
        lines = data.split(b"\r\n")
        if len(lines) > 1 and len(lines[-2]) >= 4 and lines[-2][3:4] == b" ":
            return data

def session():
    s = socket.create_connection(("127.0.0.1", port))
    reply(s)
    s.sendall(b"EHLO printer.lab.example.edu\r\n")
    reply(s)
    return s

# Warm up: the first sessions fault in code and shared structures every session uses.
for s in [session() for _ in range(20)]:
    s.close()
def pss():
    # Proportional set size: a page shared by several mappings (a module's memory image,
    # mapped copy-on-write into each of its instances) counted once, not once per mapping
    # as VmRSS counts it.
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])

def measures():
    return {"VmRSS": status("VmRSS"), "RssAnon": status("RssAnon"), "Pss": pss()}

base = measures()
sessions = [session() for _ in range(idle)]
held = measures()
print(f"idle sessions: {idle}, relay RSS {base['VmRSS']} kB before, {held['VmRSS']} kB "
      f"with them: {(held['VmRSS'] - base['VmRSS']) / idle:.1f} kB per idle session; "
      f"counting shared pages once (PSS) {(held['Pss'] - base['Pss']) / idle:.1f} kB, "
      f"of which anonymous {(held['RssAnon'] - base['RssAnon']) / idle:.1f} kB")
for s in sessions:
    s.close()

# The heap's share of the peak: VmHWM also counts the pages of spool files the relay
# maps (the page cache's, given back under pressure), so RssAnon is sampled as well.
peak_anon = [0]
sampling = [True]
def sample_anon():
    while sampling[0]:
        peak_anon[0] = max(peak_anon[0], status("RssAnon"))
        time.sleep(0.005)
sampler = threading.Thread(target=sample_anon)
sampler.start()

chunk = (b"x" * 998 + b"\r\n") * 1024  # 1 MB of text lines
senders = []
for _ in range(data_sessions):
    s = session()
    s.sendall(b"MAIL FROM:<printer@lab.example.edu>\r\n")
    reply(s)
    s.sendall(b"RCPT TO:<dean@example.edu>\r\n")
    reply(s)
    s.sendall(b"DATA\r\n")
    reply(s)
    s.sendall(b"From: printer@lab.example.edu\r\nSubject: memory\r\n\r\n")
    senders.append(s)
for _ in range(mb):
    for s in senders:
        s.sendall(chunk)
before_end = status("VmRSS")
for s in senders:
    s.sendall(b".\r\n")
codes = [reply(s)[:3].decode() for s in senders]
sampling[0] = False
sampler.join()
print(f"{data_sessions} sessions in DATA with {mb} MB each: relay RSS {before_end} kB "
      f"before their ends, peak {status('VmHWM')} kB (anonymous memory at most "
      f"{peak_anon[0]} kB); replies {sorted(set(codes))}")
PY

#!/usr/bin/env bash
# Hot reload, measured: how soon after a module file is replaced the first session is
# served by the new chain, and what swapping modules does to throughput.
#
#   bash bench/reload.sh [SWAPS]
#
# The chain has five modules: builtin:networks four times and dept.wasm, which is swapped
# between examples/phi-guard (refuses a [PHI] message to an outside address: 550) and the
# tests' probe module (lets it through: 250). After each swap a client sends that message
# in a loop until the answer changes; the time from the end of the write (the rename) to
# that answer is the reload latency. The first two swaps compile; later ones find the
# modules compiled in the cache. Then smtp-source (Debian's postfix package) sends
# MESSAGES messages twice, once quietly and once while dept.wasm is swapped every 200 ms.
# Set SLUICE_BIN to use a built binary (else cargo build --release).
set -euo pipefail
# Resolve before the cd below, so a path relative to the caller's directory works.
sluice=${SLUICE_BIN:+$(realpath "$SLUICE_BIN")}
cd "$(dirname "$0")/.."
SWAPS=${1:-10}
MESSAGES=${MESSAGES:-10000}
PATH="$PATH:/usr/sbin"

# shellcheck source=bench/common.sh
. bench/common.sh
bin=$(sluice_binary "$sluice")
cargo build -q --profile wasm --target wasm32-wasip2 --target-dir target/wasm -p phi-guard -p sluice-test-probe
wasm=target/wasm/wasm32-wasip2/wasm
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
port=$((20000 + RANDOM % 10000)); sink_port=$((port + 1))
mkdir -p "$work/policies.d"
cp "$wasm/phi_guard.wasm" "$work/policies.d/dept.wasm"
{
  for i in 1 2 3 4; do printf '[[policy]]\nname = "networks-%s"\nmodule = "builtin:networks"\n' "$i"; done
  printf '[[policy]]\nname = "dept"\nmodule = "dept.wasm"\n[policy.config]\ninternal_domains = ["example.edu"]\n'
} > "$work/policies.d/policies.toml"
relay_config "$work/sluice.toml" "$port" "$sink_port" "$work"
smtp-sink -u root 127.0.0.1:$sink_port 1000 > /dev/null 2>&1 &
SLUICE_LOG=warn "$bin" serve --config "$work/sluice.toml" 2> "$work/relay.log" &
wait_port "$port"

python3 - "$port" "$work/policies.d" "$wasm" "$SWAPS" <<'PY'
import os, shutil, smtplib, statistics, sys, time
port, dir, wasm, swaps = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
files = {550: f"{wasm}/sluice_test_probe.wasm", 250: f"{wasm}/phi_guard.wasm"}

def answer():
    s = smtplib.SMTP("127.0.0.1", port)
    try:
        s.ehlo("ehr.example.edu"); s.mail("ehr@example.edu"); s.rcpt("doctor@clinic.example.org")
        code, _ = s.data(b"Subject: [PHI] results\r\n\r\nPatient 123\r\n")
        return code
    except smtplib.SMTPDataError as e:
        return e.smtp_code
    finally:
        s.close()

latencies = []
for i in range(swaps):
    now = answer()
    shutil.copy(files[now], f"{dir}/.dept.tmp")
    os.rename(f"{dir}/.dept.tmp", f"{dir}/dept.wasm")
    written = time.monotonic()
    while answer() == now:
        if time.monotonic() - written > 10:
            sys.exit("the new module was not served within 10 s")
    latencies.append((time.monotonic() - written) * 1000)
print("reload latency, file replaced -> first session on the new chain (ms):")
print("  first two (compiling): " + ", ".join(f"{l:.0f}" for l in latencies[:2]))
if len(latencies) > 2:
    rest = latencies[2:]
    print(f"  cached: median {statistics.median(rest):.0f}, max {max(rest):.0f} (n={len(rest)})")
PY

rate() {
  local start end
  start=$(date +%s.%N)
  smtp-source -s 20 -m "$MESSAGES" -l 1024 -f app@example.edu -t user@example.org 127.0.0.1:$port
  end=$(date +%s.%N)
  python3 -c "print(f'{$MESSAGES / ($end - $start):.0f}')"
}
reloads() { "$bin" status --config "$work/sluice.toml" | sed -n 's/.*(reloads since start: \([0-9]*\)).*/\1/p'; }
echo "accepted/s, no reloads:            $(rate)"
before=$(reloads)
( while :; do
    for f in sluice_test_probe.wasm phi_guard.wasm; do
      cp "$wasm/$f" "$work/policies.d/.dept.tmp" && mv "$work/policies.d/.dept.tmp" "$work/policies.d/dept.wasm"
      sleep 0.2
    done
  done ) &
swapper=$!
echo "accepted/s, a swap every 200 ms:   $(rate)"
kill $swapper
echo "reloads during that run: $(( $(reloads) - before ))"

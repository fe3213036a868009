# Shared by the bench scripts: sourced after they cd to the repository.

# The relay to measure: $SLUICE_BIN (resolved against the caller's directory by the
# script before its cd, and passed here), else a fresh release build.
sluice_binary() {
  if [ -n "${1:-}" ]; then echo "$1"; return; fi
  cargo build --release -q
  echo ./target/release/sluice
}

# Writes a relay configuration to $1: listening on 127.0.0.1:$2, relaying to the sink on
# 127.0.0.1:$3, its spool and policies under $4; $5 holds more [delivery] lines.
# SLUICE_BENCH_CONFIG: more TOML at the end ("[metrics]\naddr = ..." to measure with metrics on).
relay_config() {
  cat > "$1" <<TOML
hostname = "relay.bench"
[[listener]]
addr = "127.0.0.1:$2"
[limits]
max_connections_per_ip = 1000
[spool]
dir = "$4/spool"
[delivery]
smarthost = "127.0.0.1:$3"
${5:-}
[policies]
dir = "$4/policies.d"
${SLUICE_BENCH_CONFIG:-}
TOML
}

# Waits until something listens on 127.0.0.1:$1.
wait_port() {
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.1; done
  echo "nothing listens on 127.0.0.1:$1" >&2; return 1
}

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
# SLUICE_BENCH_CONFIG: more TOML at the end, in [policies] ("cache_dir = ...", or
# "[metrics]\naddr = ..." to measure with metrics on).
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

# How many messages the sink behind $1 (its output file) has received. `smtp-sink -c`
# rewrites a "sess=N quit=N mesg=N" counter line ending in \r after every message.
sink_count() {
  local n
  n=$(tail -c 200 "$1" | tr '\r' '\n' | grep -o 'mesg=[0-9]*' | tail -n 1 | cut -d= -f2) || true
  echo "${n:-0}"
}

# Writes the campus chain (examples/campus/policies.toml) into the policies directory $1,
# with the sender and internal domains set to the benchmark's and the rate limits above
# the load.
campus_chain() {
  mkdir -p "$1"
  sed -e 's/^domains = \["example.edu"\]/domains = ["bench.test"]/' \
      -e 's/^internal_domains = \["example.edu"\]/internal_domains = ["example.org"]/' \
      -e 's/^max_messages = .*/max_messages = 100000000/' \
      -e 's/^max_recipients = .*/max_recipients = 100000000/' \
      examples/campus/policies.toml > "$1/policies.toml"
  # SLUICE_BENCH_EXTRA_MODULE=FILE.wasm: one more module first in the chain (bench/languages.sh),
  # asked at the hooks of SLUICE_BENCH_EXTRA_HOOKS ('["rcpt"]'), else at every hook it exports.
  if [ -n "${SLUICE_BENCH_EXTRA_MODULE:-}" ]; then
    cp "$SLUICE_BENCH_EXTRA_MODULE" "$1/extra.wasm"
    { printf '[[policy]]\nname = "extra"\nmodule = "extra.wasm"\n%b[policy.config]\n' "${SLUICE_BENCH_EXTRA_HOOKS:+hooks = $SLUICE_BENCH_EXTRA_HOOKS\n}"
      printf 'domains = ["old-campus.example"]\n\n'
      cat "$1/policies.toml"; } > "$1/policies.toml.new"
    mv "$1/policies.toml.new" "$1/policies.toml"
  fi
  grep -q 'domains = \["bench.test"\]' "$1/policies.toml" &&
    grep -q 'internal_domains = \["example.org"\]' "$1/policies.toml" || {
    echo "examples/campus/policies.toml changed: adapt the campus chain's sed lines" >&2; exit 1; }
}

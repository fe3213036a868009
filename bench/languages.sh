#!/usr/bin/env bash
# What a policy written in Rust, Python or JavaScript costs: the same rule (the module
# `sluice policy new NAME --lang L` makes: refuse recipients in listed domains) built in
# each language, then for each:
#   size          of the component
#   compile       time to compile it to machine code (`sluice policy check`, empty cache)
#   setup         per-session setup, new and reused instance, and one hook call
#                 (cargo bench --bench policy with SLUICE_BENCH_MODULE)
#   throughput    messages/s accepted with it first in the campus chain (bench/throughput.sh)
#
#   bash bench/languages.sh [MESSAGES] [SESSIONS]
#
# Needs: cargo with wasm32-wasip2, componentize-py, componentize-js, postfix (smtp-source).
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${1:-10000}
SESSIONS=${2:-20}
# shellcheck source=bench/common.sh
. bench/common.sh
sluice=$(realpath "$(sluice_binary "${SLUICE_BIN:-}")")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for lang in rust python js; do
  (cd "$work" && "$sluice" policy new "rule-$lang" --lang "$lang" >/dev/null)
  "$sluice" policy build "$work/rule-$lang" >/dev/null
done
# The relays the throughput runs start take compiled modules from one cache, filled just
# before each run, as a postmaster fills the relay's before a deploy (a Python module takes
# seconds to compile, longer than the run waits for the relay to listen; and a relay keeps
# in its cache only what its chain runs).
printf '[policies]\ncache_dir = "%s"\n' "$work/cache" > "$work/compile.toml"
export SLUICE_BENCH_CONFIG="cache_dir = \"$work/cache\""

echo "campus chain alone:"
SLUICE_BIN=$sluice bash bench/throughput.sh "$MESSAGES" "$SESSIONS" 1024 campus 2>/dev/null | grep '^accepted/s'
for lang in rust python js; do
  wasm=$work/rule-$lang/rule_$lang.wasm
  echo "$lang:"
  echo "  size: $(stat -c %s "$wasm") bytes"
  XDG_CACHE_HOME=$work/cache-$lang "$sluice" policy check "$wasm" | grep 'compiled in' | sed 's/ (kept.*//'
  SLUICE_BENCH_MODULE=$wasm cargo bench -q --bench policy 2>/dev/null |
    sed -n '/^module /,/rcpt hook call/p' | tail -n 3
  "$sluice" policy compile "$wasm" --config "$work/compile.toml" >/dev/null
  SLUICE_BENCH_EXTRA_MODULE=$wasm SLUICE_BIN=$sluice \
    bash bench/throughput.sh "$MESSAGES" "$SESSIONS" 1024 campus | grep '^accepted/s' | sed 's/^/  campus chain + it, /'
done

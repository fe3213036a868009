#!/usr/bin/env bash
# What a policy written in Rust, Python or JavaScript costs: the same rule (the module
# `sluice policy new NAME --lang L` makes: refuse recipients in listed domains) built in
# each language, then for each:
#   size          of the component
#   compile       time to compile it to machine code (`sluice policy check`, empty cache)
#   setup         per-session setup, new and reused instance, and one hook call
#                 (cargo bench --bench policy with SLUICE_BENCH_MODULE)
#   throughput    messages/s accepted with it first in the campus chain (bench/throughput.sh),
#                 and with the campus chain alone: RUNS rounds, and the medians
#
#   bash bench/languages.sh [MESSAGES] [SESSIONS] [RUNS]
#
# Needs: cargo with wasm32-wasip2, componentize-py, componentize-js, postfix (smtp-source).
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${1:-10000}
SESSIONS=${2:-20}
RUNS=${3:-5}
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

for lang in rust python js; do
  wasm=$work/rule-$lang/rule_$lang.wasm
  echo "$lang:"
  echo "  size: $(stat -c %s "$wasm") bytes"
  XDG_CACHE_HOME=$work/cache-$lang "$sluice" policy check "$wasm" | grep 'compiled in' | sed 's/ (kept.*//'
  SLUICE_BENCH_MODULE=$wasm cargo bench -q --bench policy 2>/dev/null |
    sed -n '/^module /,/rcpt hook call/p' | tail -n 3
done
# Throughput varies by 10% or more from run to run on a shared machine: the languages take
# turns, RUNS rounds of them, and each one's median is what to compare.
echo "messages accepted/s, campus chain + the module ($RUNS rounds):"
for round in $(seq "$RUNS"); do
  for lang in campus rust python js; do
    if [ "$lang" = campus ]; then
      unset SLUICE_BENCH_EXTRA_MODULE
    else
      export SLUICE_BENCH_EXTRA_MODULE=$work/rule-$lang/rule_$lang.wasm
      # Into the cache just before the run (each relay keeps only its own chain's modules).
      "$sluice" policy compile "$SLUICE_BENCH_EXTRA_MODULE" --config "$work/compile.toml" >/dev/null
    fi
    rate=$(SLUICE_BIN=$sluice bash bench/throughput.sh "$MESSAGES" "$SESSIONS" 1024 campus 2>/dev/null |
      sed -n 's/^accepted\/s: //p')
    echo "$lang $rate" >> "$work/rates"
    echo "  round $round: $lang $rate"
  done
done
for lang in campus rust python js; do
  median=$(awk -v l="$lang" '$1 == l { print $2 }' "$work/rates" | sort -n |
    awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : int((v[NR / 2] + v[NR / 2 + 1]) / 2) }')
  echo "median $lang: $median"
done

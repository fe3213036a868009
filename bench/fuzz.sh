#!/usr/bin/env bash
# A short fuzz run of every parser a client's bytes reach: the fuzz targets in fuzz/
# (command lines, DATA/BDAT text, the PROXY header, SASL PLAIN/LOGIN, envelope addresses),
# each run by AFL++ for a set time, one after another, then each one's executions,
# crashes and hangs from afl-fuzz's fuzzer_stats.
#
#   bash bench/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]      (default: 60, all five)
#   bash bench/fuzz.sh 0 [TARGET...]        no run: the figures (and MINIMISE) of the last
#
# Works on the pinned stable toolchain: the afl crate's coverage comes from LLVM's
# SanitizerCoverage, which stable rustc has (cargo fuzz would need nightly). cargo-afl is
# installed when missing (`cargo install cargo-afl`, which also builds AFL++ itself with
# the machine's C compiler). The targets are built into fuzz/target, instrumented, apart
# from the normal build; the first build compiles every dependency, wasmtime included
# (about half an hour on two shared cores).
#
# Seeds: fuzz/corpus/TARGET/. Output: fuzz/out/TARGET/default/ (crashes/, hangs/, queue/),
# afl-fuzz's log in fuzz/out/TARGET.log. A crash or a hang is a bug: replay one with
#   fuzz/target/release/TARGET < fuzz/out/TARGET/default/crashes/id:...
# MINIMISE=1 adds to the corpus the few inputs of the run that reach the most code the
# corpus does not (at most MINIMISE_MAX, default 30, per target), to be committed when they
# are worth keeping.
#
# Exits 1 if any target crashed or hung. One afl-fuzz at a time, bound to no core: the
# machines have two, shared.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-60}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(command data proxy sasl address)
# The afl crate in fuzz/Cargo.toml must be of the same version.
CARGO_AFL_VERSION=0.18.2

if ! cargo afl --version >/dev/null 2>&1; then
  echo "installing cargo-afl $CARGO_AFL_VERSION (it builds AFL++)..."
  cargo install cargo-afl --locked --version "$CARGO_AFL_VERSION"
fi
# Builds AFL++ if the install did not (it refuses, harmlessly, when it is already built).
cargo afl config --build >/dev/null 2>&1 || true
# AFL++'s own tools (afl-showmap), where cargo-afl built them.
afl_fuzz=$(find "${XDG_DATA_HOME:-$HOME/.local/share}/afl.rs" -path "*/afl.rs-$CARGO_AFL_VERSION/afl/bin/afl-fuzz" 2>/dev/null | head -n 1 || true)
afl_bin=$(dirname "${afl_fuzz:-/nonexistent/afl-fuzz}")

# Its own target directory whatever the caller's CARGO_TARGET_DIR: instrumented artifacts
# must not mix with the normal build's.
export CARGO_TARGET_DIR="$PWD/fuzz/target"
if [ "$SECONDS_PER_TARGET" != 0 ]; then
  echo "building the fuzz targets (instrumented)..."
  (cd fuzz && cargo afl build --release --locked -q)
fi

# No curses screen; no CPU binding or frequency check (shared machine); a core_pattern
# that pipes core dumps elsewhere only delays crash detection here, so it is allowed.
export AFL_NO_UI=1 AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1

stat() { sed -n "s/^$1 *: *//p" "$2"; }

# Adds to fuzz/corpus/$1 the inputs of the run in $2 that reach the most edges the corpus
# does not, greedily (a set cover over afl-showmap's edge maps), at most MINIMISE_MAX.
# Not afl-cmin: it keeps the smallest input for every edge, which for the command target
# after four minutes is some 500 files; here thirty reach two thirds of the new edges.
# New inputs are named by their content, so a later run adds no twin.
minimise() {
  local target=$1 out=$2 maps
  maps=$(mktemp -d)
  for dir in corpus queue; do
    local from=fuzz/corpus/$target
    [ "$dir" = queue ] && from=$out/default/queue
    "$afl_bin/afl-showmap" -q -e -i "$from" -o "$maps/$dir" -- "fuzz/target/release/$target" \
      > /dev/null 2>&1 || true
  done
  python3 - "$maps" "$out/default/queue" "fuzz/corpus/$target" "${MINIMISE_MAX:-30}" <<'PY'
import hashlib, os, shutil, sys
maps, queue, corpus, most = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def edges(d):
    d = os.path.join(maps, d)
    return {f: {line.split(":")[0] for line in open(os.path.join(d, f))} for f in os.listdir(d)}
covered = set().union(set(), *edges("corpus").values())
found = {f: e for f, e in edges("queue").items() if "orig:" not in f}
added = []
while len(added) < most:
    best = max(found, key=lambda f: len(found[f] - covered), default=None)
    if best is None or not found[best] - covered:
        break
    added.append((best, len(found[best] - covered)))
    covered |= found.pop(best)
for name, _ in added:
    data = open(os.path.join(queue, name), "rb").read()
    shutil.copyfile(os.path.join(queue, name),
                    os.path.join(corpus, "found-" + hashlib.sha1(data).hexdigest()[:12]))
left = len(set().union(set(), *found.values()) - covered)
print(f"{os.path.basename(corpus)}: added {len(added)} inputs reaching "
      f"{sum(n for _, n in added)} new edges ({left} more edges left to smaller finds)")
PY
  rm -rf "$maps"
}
mkdir -p fuzz/out
failed=0
summary=()
for target in "${TARGETS[@]}"; do
  out=fuzz/out/$target
  if [ "$SECONDS_PER_TARGET" != 0 ]; then
    rm -rf "$out"
    dict=()
    [ -f "fuzz/dict/$target.dict" ] && dict=(-x "fuzz/dict/$target.dict")
    echo "fuzzing $target for ${SECONDS_PER_TARGET}s..."
    if ! cargo afl fuzz -V "$SECONDS_PER_TARGET" "${dict[@]}" -i "fuzz/corpus/$target" -o "$out" \
        "fuzz/target/release/$target" > "$out.log" 2>&1; then
      echo "afl-fuzz failed for $target (see $out.log):" >&2
      tail -n 20 "$out.log" >&2
      exit 2
    fi
  fi
  stats=$out/default/fuzzer_stats
  crashes=$(stat saved_crashes "$stats")
  hangs=$(stat saved_hangs "$stats")
  summary+=("$(printf '%-8s %12s %9s %7s %7s %7s %9s %9s' "$target" \
    "$(stat execs_done "$stats")" "$(stat execs_per_sec "$stats")" \
    "$(stat corpus_count "$stats")" "$crashes" "$hangs" \
    "$(stat bitmap_cvg "$stats")" "$(stat stability "$stats")")")
  if [ "$crashes" != 0 ] || [ "$hangs" != 0 ]; then
    failed=1
    ls "$out/default/crashes" "$out/default/hangs" | grep -v README || true
  fi
  if [ "${MINIMISE:-0}" = 1 ]; then
    minimise "$target" "$out"
  fi
done

echo
echo "$(stat run_time "fuzz/out/${TARGETS[0]}/default/fuzzer_stats")s per target ($(cargo afl --version 2>/dev/null | head -n 1))"
printf '%-8s %12s %9s %7s %7s %7s %9s %9s\n' target executions execs/s corpus crashes hangs coverage stability
printf '%s\n' "${summary[@]}"
exit $failed

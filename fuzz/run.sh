#!/usr/bin/env bash
# Runs every cargo-fuzz target for FUZZ_SECONDS (default 30) each, one
# after the other, starting from the committed seeds in corpus/<target>/.
# Exits non-zero, naming the targets, if any of them finds a crash; the
# crashing inputs are left in fuzz/artifacts/<target>/.
#
# Works on stable Rust: RUSTC_BOOTSTRAP=1 lets cargo-fuzz use the
# sanitizer flags it needs.
#
#   bash fuzz/run.sh                      # all targets, 30 s each
#   FUZZ_SECONDS=300 bash fuzz/run.sh dns # one target, longer
set -uo pipefail
cd "$(dirname "$0")"
FUZZ_SECONDS="${FUZZ_SECONDS:-30}"
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked || { echo "fuzz: cannot install cargo-fuzz" >&2; exit 1; }
fi

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi
if [ "${#targets[@]}" -eq 0 ]; then
  echo "fuzz: no targets found" >&2
  exit 1
fi

start=$(date +%s)
echo "fuzz: building ${#targets[@]} targets"
if ! cargo fuzz build; then
  echo "fuzz: build failed" >&2
  exit 1
fi
echo "fuzz: built in $(( $(date +%s) - start ))s"

failed=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  # libFuzzer grows the first corpus directory; keep the seeds apart by
  # working on a copy, so a run leaves the committed files as they are.
  work="target/corpus/$t"
  mkdir -p "$work"
  cp -n corpus/"$t"/seed-* "$work"/ 2>/dev/null || true
  dict=()
  [ -f "dicts/$t.dict" ] && dict=("-dict=dicts/$t.dict")
  log="target/fuzz-$t.log"
  echo "fuzz: $t for ${FUZZ_SECONDS}s"
  # -rss_limit_mb: inputs are small, so a blow-up is a bug too.
  if cargo fuzz run "$t" "$work" -- -max_total_time="$FUZZ_SECONDS" \
      -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 "${dict[@]}" >"$log" 2>&1; then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
    echo "fuzz: $t ok, ${runs:-?} executions"
  else
    echo "fuzz: $t FAILED; last lines of $log:" >&2
    tail -n 40 "$log" >&2
    ls "artifacts/$t" >&2 || true
    failed+=("$t")
  fi
done

echo "fuzz: $(( $(date +%s) - start ))s in all"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]}" >&2
  exit 1
fi

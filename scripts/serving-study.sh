#!/usr/bin/env bash
# The serving table: serve-min (one backbone + skillpacks) against the separate-models
# baseline (each skill its own merged full model, within the same memory budget, evicted and
# reloaded on demand), at several request rates, on loopback.
#
#   scripts/serving-study.sh BUNDLE OUT [PROMPT GEN "RATES"]
#
# BUNDLE: a bundle from `skillzip weave`/`compress` on the embedded SmolLM2 base. Writes
# OUT/{shared,separate}-p<PROMPT>-g<GEN>-r<RATE>.json (every request) and prints one markdown
# row per run. Each run sends REQUESTS (default 40) requests with Gamma arrivals (cv 1) and
# an even mix of the bundle's skills; MODES (default "shared separate") picks the servers.
# The baseline's merged models go to OUT/store (about 0.5 GiB per skill).
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=${1:?usage: serving-study.sh BUNDLE OUT [PROMPT GEN RATES]}
out=${2:?usage: serving-study.sh BUNDLE OUT [PROMPT GEN RATES]}
prompt=${3:-64}
gen=${4:-32}
rates=${5:-"0.25 0.5 1 1.5"}
requests=${REQUESTS:-40}
port=${PORT:-8097}
base=$(scripts/fetch-smollm2.sh)
source scripts/serve-lib.sh
mkdir -p "$out"
skills=$(bundle_skills)

echo "| server | prompt | gen | rate (req/s) | completed | req/s | tok/s | ms/token | TTFT mean / median / P99 (ms) | latency mean | median | P95 | P99 | min | max (ms) | reloads |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for mode in ${MODES:-shared separate}; do
  if [ "$mode" = separate ]; then set -- --separate-models "$out/store"; else set --; fi
  start_server "$out/server.log" --max-batch 16 --max-queue 256 "$@"
  for rate in $rates; do
    before=$(curl -s "127.0.0.1:$port/metrics" | awk '/^serve_min_model_reloads_total/ {print $2}')
    row=$("$bin" bench --server "127.0.0.1:$port" --rate "$rate" --requests "$requests" \
      --skills "$skills" --prompt-tokens "$prompt" --gen-tokens "$gen" --seed 7 \
      --json "$out/$mode-p$prompt-g$gen-r$rate.json" 2>>"$out/bench.log" | tail -1)
    after=$(curl -s "127.0.0.1:$port/metrics" | awk '/^serve_min_model_reloads_total/ {print $2}')
    echo "| $mode | $prompt | $gen | $rate ${row}$((after - before)) |"
  done
  kill "$server"; wait "$server" 2>/dev/null || true
done

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
cargo build --release -p serve-min >&2
bin=target/release/serve-min
mkdir -p "$out"
skills=$(python3 -c 'import json,sys; print(",".join(s["name"] for s in json.load(open(sys.argv[1]+"/manifest.json"))["skillpacks"]))' "$bundle")

serve() {
  "$bin" serve --base "$base" --bundle "$bundle" --listen "127.0.0.1:$port" \
    --max-batch 16 --max-queue 256 "$@" >"$out/server.log" 2>&1 &
  server=$!
  for _ in $(seq 600); do
    curl -sf "127.0.0.1:$port/health" >/dev/null 2>&1 && return 0
    kill -0 "$server" 2>/dev/null || { cat "$out/server.log" >&2; exit 1; }
    sleep 1
  done
  echo "server did not start" >&2; exit 1
}

echo "| server | prompt | gen | rate (req/s) | completed | req/s | tok/s | ms/token | TTFT mean / median / P99 (ms) | latency mean | median | P95 | P99 | min | max (ms) | reloads |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for mode in ${MODES:-shared separate}; do
  if [ "$mode" = separate ]; then serve --separate-models "$out/store"; else serve; fi
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

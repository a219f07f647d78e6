#!/usr/bin/env bash
# Soak run: serve-min under steady load for a while, with clients that cancel part-way and
# malformed requests mixed in; samples the server's resident memory every 10 s.
#
#   scripts/soak.sh BUNDLE OUT [SECONDS RATE]
#
# Passes when every request went as it must (completed, cancelled as planned, or refused
# with a 4xx), the server is still healthy at the end, and its memory did not grow: the last
# sample is within 10 % of the median of the second half of the samples (the first minutes
# include warm-up: allocator arenas and the KV cache reaching their working size). Writes
# OUT/rss.csv (seconds, KiB), OUT/bench.json and OUT/server.log.
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=${1:?usage: soak.sh BUNDLE OUT [SECONDS RATE]}
out=${2:?usage: soak.sh BUNDLE OUT [SECONDS RATE]}
seconds=${3:-600}
rate=${4:-0.8}
port=${PORT:-8098}
base=$(scripts/fetch-smollm2.sh)
source scripts/serve-lib.sh
mkdir -p "$out"
skills="base,$(bundle_skills)"
start_server "$out/server.log" --max-queue 64
trap 'kill $server 2>/dev/null || true' EXIT
echo "seconds,rss_kib" >"$out/rss.csv"
( start=$(date +%s)
  while kill -0 "$server" 2>/dev/null; do
    echo "$(( $(date +%s) - start )),$(awk '/^VmRSS/ {print $2}' /proc/$server/status)" >>"$out/rss.csv"
    sleep 10
  done ) &
sampler=$!
requests=$(python3 -c "print(int($seconds * $rate))")
status=0
"$bin" bench --server "127.0.0.1:$port" --rate "$rate" --requests "$requests" \
  --skills "$skills" --prompt-tokens 64 --gen-tokens 32 --seed 11 \
  --cancel-fraction 0.2 --malformed-fraction 0.1 --timeout-s 300 \
  --json "$out/bench.json" || status=$?
curl -sf "127.0.0.1:$port/health" >/dev/null || { echo "soak: the server is not healthy" >&2; status=1; }
curl -s "127.0.0.1:$port/metrics" | grep -v '^#' >"$out/metrics.txt"
kill $sampler 2>/dev/null || true
python3 - "$out" "$status" <<'PY'
import csv, json, statistics, sys
out, status = sys.argv[1], int(sys.argv[2])
rss = [int(r["rss_kib"]) for r in csv.DictReader(open(f"{out}/rss.csv")) if r["rss_kib"]]
report = json.load(open(f"{out}/bench.json"))
half = statistics.median(rss[len(rss) // 2:])
print(f"requests {report['requests']}: completed {report['completed']}, cancelled "
      f"{report['cancelled']}, malformed refused {report['refused']}, failed {report['failed']}")
print(f"server RSS MiB: first {rss[0] / 1024:.0f}, max {max(rss) / 1024:.0f}, median of the "
      f"second half {half / 1024:.0f}, last {rss[-1] / 1024:.0f} ({len(rss)} samples)")
flat = rss[-1] <= 1.1 * half
ok = status == 0 and report["failed"] == 0 and flat
print("soak: " + ("passed" if ok else "FAILED"))
sys.exit(0 if ok else 1)
PY

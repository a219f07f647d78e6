# Sourced by serving-study.sh and soak.sh: builds serve-min and starts servers on loopback.
# Expects `base` (the base checkpoint), `bundle` and `port` to be set.

cargo build --release -p serve-min >&2
bin=target/release/serve-min

# The bundle's skill names, comma-separated.
bundle_skills() {
  python3 -c 'import json,sys; print(",".join(s["name"] for s in json.load(open(sys.argv[1]+"/manifest.json"))["skillpacks"]))' "$bundle"
}

# start_server LOG [serve options...]: serves the base and bundle on $port, sets `server` to
# its pid, and returns once it answers /health (exits if it dies or takes over 10 minutes).
start_server() {
  local log=$1
  shift
  "$bin" serve --base "$base" --bundle "$bundle" --listen "127.0.0.1:$port" "$@" >"$log" 2>&1 &
  server=$!
  for _ in $(seq 600); do
    curl -sf "127.0.0.1:$port/health" >/dev/null 2>&1 && return 0
    kill -0 "$server" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 1
  done
  echo "the server did not start; see $log" >&2
  exit 1
}

#!/usr/bin/env bash
# One-shot GPU check of skillzip-cuda, split between this machine (Rust toolchain, no GPU)
# and a GPU machine (CUDA driver and toolkit, no Rust), e.g. the `run` device tool.
#
#   scripts/gpu-run.sh build
#       Here: builds the benchmark and the crate's test executables in release mode and
#       copies them to target/gpu-carry/ with stable names:
#         skillzip-gpu-bench      the kernel-table benchmark
#         test-unit               the library's unit tests (baseline, graph, ...)
#         test-<name>             each integration test (tests/<name>.rs)
#       Then prints what to pass to the device tool: carry ["target/gpu-carry"] and the
#       command `scripts/gpu-run.sh device`.
#
#   scripts/gpu-run.sh device [STEP ...]
#       On the GPU machine, from the repository root; writes every log to $OUT (default
#       target/gpu-out) and a step summary to $OUT/summary.txt. Steps, in this order
#       (default: all of them; the scarce results first, since a call cut off at its limit
#       still returns what $OUT holds):
#         smi        nvidia-smi, driver/toolkit versions, the libraries cudarc will load
#         ptxas      .ci/ptxas-check with the device toolkit's ptxas (sm_90 and the GPU's)
#         test       every test executable, --nocapture --test-threads=1
#         bench      skillzip-gpu-bench --out $OUT/bench
#         memcheck   the GPU test executables under compute-sanitizer --tool memcheck
#                    (with SKILLZIP_GPU_QUICK=1: tests shrink their cases)
#         racecheck  the same under --tool racecheck (shared-memory hazards; quick)
#         synccheck  the same under --tool synccheck (barriers; quick)
#       Tests and the bench run with SKILLZIP_REQUIRE_GPU=1, and any "skipped: " line in a
#       log counts as a failure here (the GPU or cuBLAS was not found).
#       Each run has a time limit (seconds; override with GPU_RUN_LIMIT_<NAME>, NAME as in
#       summary.txt upper-cased with '-' as '_', e.g. GPU_RUN_LIMIT_BENCH=200,
#       GPU_RUN_LIMIT_MEMCHECK_TEST_GPU=200) chosen so that all fit one 10-minute call; a failing
#       step does not stop the others; the exit status is non-zero if any step failed.
#       Executables named in GPU_RUN_SANITIZE_SKIP (default "pack": host-only tests) are
#       not run under the sanitizers.
set -uo pipefail
cd "$(dirname "$0")/.."
CARRY=target/gpu-carry

build() {
    set -e
    cargo build --release -p skillzip-cuda --bin skillzip-gpu-bench
    local json=target/gpu-carry.build.json
    mkdir -p target
    cargo test --release -p skillzip-cuda --no-run --message-format=json >"$json"
    rm -rf "$CARRY"
    mkdir -p "$CARRY"
    cp target/release/skillzip-gpu-bench "$CARRY/skillzip-gpu-bench"
    # Test executables from cargo's JSON messages: the library's unit tests become
    # test-unit, tests/<name>.rs becomes test-<name>.
    python3 - "$json" "$CARRY" <<'EOF'
import json, shutil, sys
src, carry = sys.argv[1], sys.argv[2]
for line in open(src):
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
        continue
    if not msg.get("profile", {}).get("test"):
        continue
    target = msg["target"]
    if "lib" in target["kind"]:
        name = "unit"
    elif "test" in target["kind"]:
        name = target["name"]
    else:  # the benchmark binary's (empty) test harness
        continue
    dest = f"{carry}/test-{name}"
    shutil.copy2(msg["executable"], dest)
    print(f"  {dest}  <-  {msg['executable']}")
EOF
    # Tests that locate files through CARGO_MANIFEST_DIR see this path at run time.
    pwd >"$CARRY/build-root"
    git rev-parse HEAD >"$CARRY/build-commit" 2>/dev/null || true
    git status --short >"$CARRY/build-status" 2>/dev/null || true
    ls -la "$CARRY"
    du -sh "$CARRY"
    echo
    echo "device tool: carry [\"$CARRY\"], command: scripts/gpu-run.sh device"
}

# --- device mode ---------------------------------------------------------------------------

OUT=${OUT:-target/gpu-out}
SUMMARY=""
FAILED=0

# run_step NAME LIMIT LOG COMMAND... : runs COMMAND with a time limit, output to LOG (and the
# tail to the console), and records the outcome.
run_step() {
    local name=$1 limit=$2 log=$3
    shift 3
    local var="GPU_RUN_LIMIT_${name^^}"
    var=${var//[^A-Z0-9_]/_}
    limit=${!var:-$limit}
    echo "== $name (limit ${limit}s): $*" | tee -a "$OUT/console.log"
    local start rc
    start=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
    rc=$?
    local took=$(($(date +%s) - start))
    tail -n 40 "$log" | tee -a "$OUT/console.log"
    local verdict=ok
    if [[ $rc -eq 0 ]] && grep -q 'skipped: ' "$log"; then
        # On the GPU machine a skip means the GPU (or cuBLAS) was not found: a failure.
        verdict="SKIPPED (no GPU?)"
        FAILED=1
    elif [[ $rc -eq 124 || $rc -eq 137 ]]; then
        verdict="TIMEOUT"
        FAILED=1
    elif [[ $rc -ne 0 ]]; then
        verdict="FAILED (exit $rc)"
        FAILED=1
    fi
    SUMMARY+=$(printf '%-28s %-18s %5ss  %s' "$name" "$verdict" "$took" "$log")$'\n'
    echo "== $name: $verdict in ${took}s" | tee -a "$OUT/console.log"
}

test_bins() {
    local f
    for f in "$CARRY"/test-*; do
        [[ -x "$f" ]] && printf '%s\n' "$f"
    done
}

sanitized_bins() {
    local skip=" ${GPU_RUN_SANITIZE_SKIP:-pack} " f name
    while IFS= read -r f; do
        name=${f##*/test-}
        [[ "$skip" == *" $name "* ]] || printf '%s\n' "$f"
    done < <(test_bins)
}

find_device_ptxas() {
    local p
    for p in "${PTXAS:-}" "$(command -v ptxas 2>/dev/null)" /usr/local/cuda/bin/ptxas \
        /usr/local/cuda-*/bin/ptxas; do
        [[ -n "$p" && -x "$p" ]] && {
            printf '%s\n' "$p"
            return
        }
    done
}

step_smi() {
    {
        nvidia-smi
        nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
        echo
        command -v nvcc && nvcc --version
        command -v compute-sanitizer && compute-sanitizer --version
        echo
        echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
        ldconfig -p 2>/dev/null | grep -E 'libcuda\.so|libcublas\.so|libcublasLt\.so' || true
        echo
        echo "built from: $(cat "$CARRY/build-root" 2>/dev/null) at $(cat "$CARRY/build-commit" 2>/dev/null)"
        cat "$CARRY/build-status" 2>/dev/null
    } >"$OUT/smi.txt" 2>&1
    cat "$OUT/smi.txt" | head -n 40 | tee -a "$OUT/console.log"
    SUMMARY+=$(printf '%-28s %-18s %5ss  %s' smi ok 0 "$OUT/smi.txt")$'\n'
}

device() {
    mkdir -p "$OUT"
    : >"$OUT/console.log"
    if [[ ! -d "$CARRY" ]]; then
        echo "no $CARRY: run 'scripts/gpu-run.sh build' here first and carry it" | tee -a "$OUT/console.log"
        exit 1
    fi
    # cudarc loads libcuda/libcublas at run time: put the toolkit's libraries first; the
    # toolkit's tools (compute-sanitizer, ptxas) may not be on PATH.
    local d
    for d in /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/lib64; do
        [[ -d "$d" ]] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    done
    [[ -d /usr/local/cuda/bin ]] && export PATH="/usr/local/cuda/bin:$PATH"
    # Tests may use it to fail instead of skipping when no GPU is found.
    export SKILLZIP_REQUIRE_GPU=1
    # Tests that read files through the build machine's CARGO_MANIFEST_DIR find them here.
    local root
    root=$(cat "$CARRY/build-root" 2>/dev/null || true)
    if [[ -n "$root" && ! -e "$root" ]]; then
        mkdir -p "$(dirname "$root")" && ln -s "$PWD" "$root" &&
            echo "linked $root -> $PWD" | tee -a "$OUT/console.log"
    fi

    local steps=("$@")
    [[ ${#steps[@]} -eq 0 ]] && steps=(smi ptxas test bench memcheck racecheck synccheck)
    local step bin name
    for step in "${steps[@]}"; do
        case $step in
        smi) step_smi ;;
        test)
            while IFS= read -r bin; do
                name=${bin##*/}
                # Like `cargo test`: the working directory is the package root.
                run_step "$name" 120 "$OUT/$name.log" env -C skillzip-cuda \
                    "$(realpath "$bin")" --nocapture --test-threads=1
            done < <(test_bins)
            ;;
        memcheck | racecheck | synccheck)
            if ! command -v compute-sanitizer >/dev/null; then
                SUMMARY+="$step: compute-sanitizer not found"$'\n'
                FAILED=1
                continue
            fi
            local limit=120
            [[ $step == synccheck ]] && limit=60
            while IFS= read -r bin; do
                name=${bin##*/}
                run_step "$step-$name" "$limit" "$OUT/$step-$name.log" \
                    env -C skillzip-cuda SKILLZIP_GPU_QUICK=1 \
                    compute-sanitizer --tool "$step" --error-exitcode 99 --print-limit 50 \
                    --target-processes all "$(realpath "$bin")" --nocapture --test-threads=1
            done < <(sanitized_bins)
            ;;
        ptxas)
            local ptxas arch
            ptxas=$(find_device_ptxas)
            if [[ -z "$ptxas" ]]; then
                SUMMARY+="ptxas: no ptxas in the device toolkit"$'\n'
                FAILED=1
                continue
            fi
            arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' .')
            local archs="sm_90"
            [[ -n "$arch" && "sm_$arch" != sm_90 ]] && archs="sm_90 sm_$arch"
            run_step ptxas 30 "$OUT/ptxas.log" env PTXAS="$ptxas" PTXAS_ARCHS="$archs" .ci/ptxas-check
            ;;
        bench)
            run_step bench 180 "$OUT/bench.log" "$CARRY/skillzip-gpu-bench" --out "$OUT/bench"
            ;;
        *)
            echo "unknown step '$step'" | tee -a "$OUT/console.log"
            FAILED=1
            ;;
        esac
    done
    printf '%s' "$SUMMARY" >"$OUT/summary.txt"
    echo
    echo "== summary ($OUT/summary.txt)"
    cat "$OUT/summary.txt"
    exit "$FAILED"
}

case "${1:-}" in
build) build ;;
device)
    shift
    device "$@"
    ;;
*)
    sed -n '2,/^set -uo/p' "$0" | sed '$d'
    echo "usage: scripts/gpu-run.sh build | device [STEP ...]"
    exit 2
    ;;
esac

#!/usr/bin/env bash
# The main job: SkillZip end to end on the real SmolLM2-135M-Instruct (DESIGN.md §6).
#
#   1. fetch the model (scripts/fetch-smollm2.sh; cached after the first run);
#   2. make two REAL skill deltas with a short supervised fine-tune of the linear layers on
#      built-in seeded tasks (`arith`: "What is 123 + 45?" → "The answer is 168.";
#      `caps`: repeat a sentence in capital letters). These stand in for the training
#      harness's LN-DPO deltas until it exists; they are genuine fine-tunes, just short;
#   3. calibrate the base model on each skill's prompts (block by block);
#   4. compress both deltas into one bundle: shared component by TIES merge, SkillZip X8A8B8,
#      with a per-layer held-out fidelity report;
#   5. inspect the bundle, measure KL(fine-tuned ‖ backbone + skillpack) on held-out prompts,
#      and export one skill as a PEFT LoRA adapter + merged backbone.
#
# usage: scripts/smollm2-demo.sh [OUT_DIR]    (default target/smollm2-demo; ~10 min on 2 cores)
# Environment: STEPS (fine-tune steps, default 10), RANK (default 16), METHOD (default X8A8B8).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-target/smollm2-demo}"
STEPS="${STEPS:-10}"
RANK="${RANK:-16}"
METHOD="${METHOD:-X8A8B8}"
mkdir -p "$OUT"

GGUF="$(scripts/fetch-smollm2.sh)"
echo "== model: $GGUF" >&2
cargo build --release -p skillzip-cli >&2
SZ=target/release/skillzip
TIME=()
if [ -x /usr/bin/time ]; then TIME=(/usr/bin/time -f "   [%e s, peak RSS %M KiB]"); fi

for task in arith caps; do
    echo "== fine-tune $task ($STEPS steps)" >&2
    "${TIME[@]}" "$SZ" --quiet finetune --base "$GGUF" --task "$task" --steps "$STEPS" --out "$OUT/$task"
    echo "== calibrate $task" >&2
    "${TIME[@]}" "$SZ" --quiet calibrate --base "$GGUF" --skill "$task" --task "$task" \
        --count 60 --prompt-seed 7 --out "$OUT/$task.calib.safetensors"
done

echo "== compress (TIES shared component, $METHOD, rank $RANK)" >&2
"${TIME[@]}" "$SZ" --quiet compress --base "$GGUF" \
    --tuned arith="$OUT/arith" --tuned caps="$OUT/caps" \
    --calibration arith="$OUT/arith.calib.safetensors" --calibration caps="$OUT/caps.calib.safetensors" \
    --merge ties --density 0.5 --method "$METHOD" --rank "$RANK" \
    --out "$OUT/bundle" --report "$OUT/layers.md" | tee "$OUT/compress.md"

echo "== inspect" >&2
"$SZ" inspect "$OUT/bundle" | tee "$OUT/inspect.txt"

echo "== held-out next-token agreement (prompts from another seed than calibration and training)" >&2
for task in arith caps; do
    "${TIME[@]}" "$SZ" --quiet eval --base "$GGUF" --bundle "$OUT/bundle" --tuned "$task=$OUT/$task" \
        --task "$task" --count 20 --prompt-seed 999 | tee "$OUT/eval-$task.md"
done

echo "== PEFT export of arith" >&2
"$SZ" export --peft --bundle "$OUT/bundle" --skill arith --base "$GGUF" --out "$OUT/peft-arith"
echo "done: everything is in $OUT" >&2

#!/usr/bin/env bash
# The main job: SkillWeave end to end on the real SmolLM2-135M-Instruct, `skillzip weave --quick`.
#
#   1. fetch the model (scripts/fetch-smollm2.sh; cached after the first run);
#   2. per skill (multiple choice and one-step math by default): the base model's
#      held-out accuracy; self-generation of several answers per training prompt, judged by
#      the rule-based verifiers; LN-DPO on the resulting preference pairs; the fine-tune's
#      held-out accuracy;
#   3. calibrate, train the learned router on the backbone's hidden states, compress both
#      skill deltas into one bundle (TIES shared component + X8A8B8 skillpacks), and evaluate
#      backbone + skillpack with oracle and with learned routing;
#   4. print the table (also in OUT/results.md; every artifact is under OUT).
#
# usage: scripts/weave-quick.sh [OUT_DIR] [extra `skillzip weave` flags]
#        (OUT_DIR is the first argument unless it starts with '-')
#        (default target/weave-quick; about 11 min on 2 cores once built; a killed run
#        continues where it stopped when started again with the same settings)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target/weave-quick
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    OUT="$1"
    shift
fi

GGUF="$(scripts/fetch-smollm2.sh)"
echo "== model: $GGUF" >&2
cargo build --release -p skillzip-cli >&2
TIME=()
if [ -x /usr/bin/time ]; then TIME=(/usr/bin/time -f "== wall %e s, peak RSS %M KiB"); fi
# `${TIME[@]+...}`: an empty array is an unbound variable under `set -u` in bash < 4.4.
${TIME[@]+"${TIME[@]}"} target/release/skillzip weave --quick --base "$GGUF" --out "$OUT" "$@"

#!/usr/bin/env bash
# The whole CPU recipe in one command: stage 1 -> mine -> stage 2 -> merge -> eval, then the results table.
#   bash scripts/recipe_cpu.sh [SEED]          # env: OUT (default runs/recipe-SEED), SHARED (default ../shared),
#                                               #      MERGE_WEIGHT (default 0.8), SKIP_EVAL=1, EVAL_STAGE2=1,
#                                               #      OVERWRITE=1 (replace the models of an earlier run in OUT)
# Each stage-1/2 run trims the vocabulary to its own training texts (model.trim_vocab) and saves the base's whole
# vocabulary back. Wall and CPU time of every step go to $OUT/times.tsv; docs/results.md explains the choices.
set -euo pipefail
cd "$(dirname "$0")/.."

SEED="${1:-42}"
OUT="${OUT:-runs/recipe-$SEED}"
SHARED="${SHARED:-../shared}"
MERGE_WEIGHT="${MERGE_WEIGHT:-0.8}"
TRAIN="$SHARED/data/train"
REPLACE=()
[ "${OVERWRITE:-0}" = 1 ] && REPLACE=(--overwrite)  # train refuses to replace a finished model otherwise
mkdir -p "$OUT/mined"
[ -d "$TRAIN" ] || { echo "training data not found at $TRAIN (set SHARED)" >&2; exit 2; }

step() {  # step NAME COMMAND...: run it and append "NAME wall user sys" (seconds) to times.tsv
  local name="$1"; shift
  echo "== $name: $*"
  /usr/bin/time -f "$name	%e	%U	%S" -a -o "$OUT/times.tsv" "$@"
}

step stage1 piccolo-embed train "${REPLACE[@]}" --config configs/recipe_cpu/stage1.yaml \
  --set training.seed="$SEED" --set training.output_dir="$OUT/stage1"

# Hard negatives from the stage-1 model: ranks 10-100 of each query's search over the set's own passages,
# 7 per query; a triplet file's own negatives are kept next to them. MINE_LIMIT caps the records mined per set
# (encoding every passage costs minutes per thousand on 2 cores; stage 2 sees only some of them anyway).
MINE_LIMIT="${MINE_LIMIT:-1500}"
mine() {  # mine NAME INPUT KIND EXISTING
  head -n "$MINE_LIMIT" "$2" > "$OUT/mined/$1.input.jsonl"
  step "mine-$1" piccolo-embed mine --model "$OUT/stage1" --input "$OUT/mined/$1.input.jsonl" --kind "$3" \
    --existing-neg "$4" --k 7 --range 10-100 --seed "$SEED" --output "$OUT/mined/$1.jsonl" \
    --stats "$OUT/mined/$1.stats.json"
}
mine medqa "$TRAIN/stage1/medqa.jsonl" s2p replace
mine lcsts "$TRAIN/stage1/lcsts.jsonl" s2p replace
mine csl_cs "$TRAIN/stage1/csl_cs.jsonl" s2p replace
mine simclue_rank "$TRAIN/stage2/simclue_rank.jsonl" s2s append

step stage2 piccolo-embed train "${REPLACE[@]}" --config configs/recipe_cpu/stage2.yaml \
  --set model.name="$OUT/stage1" --set training.seed="$SEED" --set training.output_dir="$OUT/stage2" \
  --set data.datasets.0.file="$OUT/mined/medqa.jsonl" --set data.datasets.1.file="$OUT/mined/lcsts.jsonl" \
  --set data.datasets.2.file="$OUT/mined/csl_cs.jsonl" --set data.datasets.3.file="$OUT/mined/simclue_rank.jsonl"

# LM-Cocktail: average the fine-tuned model with its base to win back what fine-tuning forgot. The base comes
# first, so the merged model takes its files: the whole tokenizer and the starter's 512-token e5 roles.
BASE_WEIGHT="$(python -c "print(round(1 - $MERGE_WEIGHT, 6))")"
step merge piccolo-embed merge --models starter "$OUT/stage2" --weights "$BASE_WEIGHT" "$MERGE_WEIGHT" \
  --output "$OUT/final" --overwrite

if [ "${SKIP_EVAL:-0}" != 1 ]; then
  step eval-final piccolo-embed eval --model "$OUT/final" --tasks "$SHARED/eval/cmteb-mini" --output "$OUT/eval-final.json"
  if [ "${EVAL_STAGE2:-0}" = 1 ]; then
    step eval-stage2 piccolo-embed eval --model "$OUT/stage2" --roles e5 --tasks "$SHARED/eval/cmteb-mini" \
      --output "$OUT/eval-stage2.json"
  fi
  python scripts/results_table.py "$OUT"/eval-*.json > "$OUT/results.md"
  cat "$OUT/results.md"
fi
column -t -s "	" "$OUT/times.tsv"

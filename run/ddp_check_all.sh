#!/usr/bin/env bash
# One process against two (run/ddp_check.py) for the tiny config of every method, on a small spoken demo
# corpus: prints a markdown table of the first update's loss difference (relative) and the largest final
# parameter difference (EMA teachers included), with the updates at which the ranks' teachers were compared.
# ARMHuBERT distils a fairseq HuBERT trained here for 3 updates; CTC fine-tunes an EH-MAM checkpoint of 3.
#   bash run/ddp_check_all.sh [--force]     (UPDATES=5; everything under outputs/ddp_check_all/, OUT to change)
# Running it again skips finished checks; --force deletes OUT and starts over.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/ddp_check_all}
STAGES_NAME="ddp check"
source run/stages.sh "$@"
UPDATES=${UPDATES:-5}

stage "set-up"
bash run/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONUNBUFFERED=1
PY=.venv/bin/python
DATA=$PWD/$OUT/demo/manifests
PLUGIN=common.user_dir=maskssl_fairseq
SHORT=(dataset.max_tokens=96000 task.max_sample_size=24000)  # the tests' short EH-MAM crops

stage "demo corpus (the test suite's size) -> $OUT/demo"
demo_corpus "$OUT/demo" --seed 7 --pretrain-minutes 2 --train-10m-minutes 1 --train-1h-minutes 1.5 \
    --dev-minutes 0.5 --test-minutes 0.5

stage "a HuBERT teacher and an EH-MAM checkpoint, 3 updates each"
[ -f "$OUT/labels/pretrain.km" ] || $PY examples/armhubert/mfcc_labels.py --data "$DATA" --splits pretrain \
    --out "$OUT/labels" --clusters 16 --force
train_stage "$OUT/hubert" --config-dir examples/armhubert --config-name tiny_teacher "$PLUGIN" \
    task.data="$DATA" task.label_dir="$PWD/$OUT/labels" optimization.max_update=3
train_stage "$OUT/eh_mam" --config-dir examples/eh_mam --config-name tiny "$PLUGIN" task.data="$DATA" \
    "${SHORT[@]}" optimization.max_update=3 lr_scheduler.warmup_updates=1

# check NAME CONFIG_DIR CONFIG OVERRIDES...: ddp_check's JSON summary in OUT/NAME.json
check() {
    local name=$1 dir=$2 config=$3
    shift 3
    stage "$name: 1 process vs 2, $UPDATES updates"
    [ -f "$OUT/$name.json" ] && { echo "already checked"; return; }
    rm -rf "${OUT:?}/$name"
    $PY run/ddp_check.py --config-dir "$dir" --config-name "$config" --updates "$UPDATES" --out "$OUT/$name" \
        "$PLUGIN" task.data="$DATA" "$@" | tee "$OUT/$name.log" | tail -1 > "$OUT/$name.json.part"
    mv "$OUT/$name.json.part" "$OUT/$name.json"
}
check "EH-MAM" examples/eh_mam tiny "${SHORT[@]}"
check "data2vec 2.0" examples/eh_mam tiny "${SHORT[@]}" model.ranking_loss_weight=0 model.hard_fraction_end=0
check "M2D, random" examples/m2d tiny_random
check "M2D, IBM" examples/m2d tiny_ibm
check "M2D, DWM" examples/m2d tiny_dwm
check "MSM-MAE" examples/m2d tiny_msm_mae
check "EAT" examples/eat tiny task.norm_sample_size=40
check "ARMHuBERT" examples/armhubert tiny model.teacher_path="$PWD/$OUT/hubert/checkpoints/checkpoint_last.pt"
check "CTC fine-tuning" examples/finetune tiny model.w2v_path="$PWD/$OUT/eh_mam/checkpoints/checkpoint_last.pt" \
    task.normalize=true model.freeze_finetune_updates=1 dataset.max_tokens=96000

stage "done"
$PY - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path

print("| method (tiny config) | first loss, 1 vs 2 processes | relative difference | largest parameter difference | teachers compared across ranks at |")
print("|---|---|---|---|---|")
for path in sorted(Path(sys.argv[1]).glob("*.json"), key=lambda p: p.stat().st_mtime):
    r = json.loads(path.read_text())
    teachers = ", ".join(map(str, r["teacher_identical_on_every_rank_at"])) or "(no EMA teacher)"
    print(f"| {path.stem} | {r['first_loss'][0]:.6g} vs {r['first_loss'][1]:.6g} | {r['first_loss_rdiff']:.3g} | "
          f"{r['param_max_abs_diff']:.3g} ({r['worst_param']}) | {teachers} |")
PYEOF

#!/usr/bin/env bash
# One process against two (run/ddp_check.py) for the tiny config of every method, on a small spoken demo
# corpus: prints a markdown table of the first update's loss difference (relative) and the largest final
# parameter difference (EMA teachers included), with the updates at which the ranks' teachers were compared.
# ARMHuBERT distils a fairseq HuBERT trained here for 3 updates; CTC fine-tunes an EH-MAM checkpoint and a
# fairseq wav2vec 2.0 checkpoint of 3 updates each.
#   bash run/ddp_check_all.sh [--force]     (UPDATES=5; everything under outputs/ddp_check_all/, OUT to change)
# Running it again skips finished checks; --force deletes OUT and starts over.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/ddp_check_all}
STAGES_NAME="ddp check"
source run/stages.sh "$@"
UPDATES=${UPDATES:-5}

set_up 1
SHORT=(dataset.max_tokens=96000 task.max_sample_size=24000)  # the tests' short EH-MAM crops

stage "demo corpus (the test suite's size) -> $OUT/demo"
demo_corpus "$OUT/demo" --seed 7 --pretrain-minutes 2 --train-10m-minutes 1 --train-1h-minutes 1.5 \
    --dev-minutes 0.5 --test-minutes 0.5

stage "a HuBERT teacher, an EH-MAM and a wav2vec 2.0 checkpoint, 3 updates each"
[ -f "$OUT/labels/pretrain.km" ] || $PY examples/armhubert/mfcc_labels.py --data "$DATA" --splits pretrain \
    --out "$OUT/labels" --clusters 16 --force
train_stage "$OUT/hubert" --config-dir examples/armhubert --config-name tiny_teacher common.user_dir="$PLUGIN" \
    task.data="$DATA" task.label_dir="$PWD/$OUT/labels" optimization.max_update=3
train_stage "$OUT/pretrained_eh_mam" --config-dir examples/eh_mam --config-name tiny common.user_dir="$PLUGIN" task.data="$DATA" \
    "${SHORT[@]}" optimization.max_update=3 lr_scheduler.warmup_updates=1
train_stage "$OUT/pretrained_wav2vec2" --config-dir examples/wav2vec2 --config-name tiny common.user_dir="$PLUGIN" task.data="$DATA" \
    dataset.max_tokens=120000 optimization.max_update=3

# check ID NAME CONFIG_DIR CONFIG OVERRIDES...: ddp_check's JSON summary in OUT/ID.json, its log in OUT/ID.log
check() {
    local id=$1 name=$2 dir=$3 config=$4
    shift 4
    stage "$name: 1 process vs 2, $UPDATES updates"
    [ -f "$OUT/$id.json" ] && { echo "already checked"; return; }
    rm -rf "${OUT:?}/$id"
    $PY run/ddp_check.py --config-dir "$dir" --config-name "$config" --updates "$UPDATES" --out "$OUT/$id" \
        common.user_dir="$PLUGIN" task.data="$DATA" "$@" | tee "$OUT/$id.log" | tail -1 > "$OUT/$id.part" || true  # a failed check is a row
    $PY -c 'import json, sys; print(json.dumps({"method": sys.argv[1], **json.load(open(sys.argv[2]))}))' \
        "$name" "$OUT/$id.part" > "$OUT/$id.json"
    rm "$OUT/$id.part"
}
check eh_mam "EH-MAM" examples/eh_mam tiny "${SHORT[@]}"
check data2vec2 "data2vec 2.0" examples/eh_mam tiny "${SHORT[@]}" model.ranking_loss_weight=0 model.hard_fraction_end=0
check m2d_random "M2D, random" examples/m2d tiny_random
check m2d_ibm "M2D, IBM" examples/m2d tiny_ibm
check m2d_dwm "M2D, DWM" examples/m2d tiny_dwm
check msm_mae "MSM-MAE" examples/m2d tiny_msm_mae
check eat "EAT" examples/eat tiny task.norm_sample_size=40
check armhubert "ARMHuBERT" examples/armhubert tiny model.teacher_path="$PWD/$OUT/hubert/checkpoints/checkpoint_last.pt"
check ctc_eh_mam "CTC fine-tuning of EH-MAM" examples/finetune tiny task.normalize=true \
    model.w2v_path="$PWD/$OUT/pretrained_eh_mam/checkpoints/checkpoint_last.pt" dataset.max_tokens=96000
check ctc_wav2vec2 "CTC fine-tuning of fairseq wav2vec 2.0" examples/finetune tiny \
    model.w2v_path="$PWD/$OUT/pretrained_wav2vec2/checkpoints/checkpoint_last.pt" dataset.max_tokens=96000
# expected to differ: fairseq's legacy_ddp gives the frozen encoder zero gradients on several processes, where one
# process leaves them None, so Adam counts steps for it only there (README, "Several processes")
check ctc_frozen "CTC fine-tuning of EH-MAM, encoder frozen for update 1" examples/finetune tiny task.normalize=true \
    model.freeze_finetune_updates=1 model.w2v_path="$PWD/$OUT/pretrained_eh_mam/checkpoints/checkpoint_last.pt" \
    dataset.max_tokens=96000

stage "done"
$PY - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path

print("| method (tiny config) | first loss, 1 vs 2 processes | relative difference | largest parameter difference | teachers compared across ranks at | within tolerance |")
print("|---|---|---|---|---|---|")
for path in sorted(Path(sys.argv[1]).glob("*.json"), key=lambda p: p.stat().st_mtime):
    r = json.loads(path.read_text())
    teachers = ", ".join(map(str, r["teacher_identical_on_every_rank_at"])) or "(no EMA teacher)"
    print(f"| {r['method']} | {r['first_loss'][0]:.6g} vs {r['first_loss'][1]:.6g} | {r['first_loss_rdiff']:.3g} | "
          f"{r['param_max_abs_diff']:.3g} ({r['worst_param']}) | {teachers} | {'yes' if r['passed'] else 'NO'} |")
PYEOF

#!/usr/bin/env bash
# Does speech pretraining help with 10 minutes of labels? The papers' regime at CPU scale, on CPU:
#   set-up -> demo corpus: 3.3 h unlabeled, 10 min labeled, dev and test with unseen sentences and 4 unseen
#   speakers -> pretraining (examples/eh_mam/demo.yaml, same updates and backbone) of data2vec 2.0, EH-MAM with
#   hard windows and EH-MAM with the official hard span starts -> identical CTC fine-tuning on train_10m
#   (finetune_demo.yaml) of those three and of the same backbone without pretraining, per seed -> test WER / CER,
#   greedy and with a lexicon + 4-gram LM (manifests/demo_lm.py: LM text without dev/test sentences; LM weight
#   and word score tuned on dev) -> Figure 5 on the fine-tuned EH-MAM model -> ranking accuracy over
#   pretraining -> $OUT/low_resource.md and low_resource.png.
# Every arm is fine-tuned at each learning rate of FINETUNE_LRS and reported at the one of lowest dev CER (no
# arm is held to a rate that suits another: 2e-3 is the best rate of one arm and diverges for two others).
# Sizes (environment): PRETRAIN_UPDATES (default 1000), FINETUNE_UPDATES (600), FINETUNE_LRS ("0.0005 0.001 0.002"),
# SEEDS ("1"), PRETRAIN_MINUTES (200); PARALLEL=1 trains the arms of a stage at once, one thread each (their
# logs: <stage dir>.out).
# Everything goes to outputs/low_resource/. Running it again skips finished stages and resumes an interrupted one
# from its last checkpoint; pass --force to delete outputs/low_resource and start over.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=outputs/low_resource
STAGES_NAME="low resource"
source run/stages.sh "$@"
PRETRAIN_UPDATES=${PRETRAIN_UPDATES:-1000}
FINETUNE_UPDATES=${FINETUNE_UPDATES:-600}
FINETUNE_LRS=${FINETUNE_LRS:-0.0005 0.001 0.002}
SEEDS=${SEEDS:-1}
PARALLEL=${PARALLEL:-0}

# arm DIR ARGS...: train_stage now, or with PARALLEL=1 in the background (one thread, output in DIR.out);
# arms_done waits for the background ones and fails if any failed
ARM_PIDS=()
arm() {
    if [ "$PARALLEL" = 1 ] && [ ! -f "$1/finished" ]; then  # a finished one keeps its log
        mkdir -p "$(dirname "$1")"
        (OMP_NUM_THREADS=1 train_stage "$@" > "$1.out" 2>&1) &
        ARM_PIDS+=($!)
        echo "started in the background, log $1.out"
    else
        train_stage "$@"
    fi
}
arms_done() {
    local pid
    for pid in "${ARM_PIDS[@]}"; do
        wait "$pid" || { echo "an arm failed: see the .out logs in $OUT" >&2; exit 1; }
    done
    ARM_PIDS=()
}

set_up

stage "demo corpus: ${PRETRAIN_MINUTES:-200} min unlabeled, 10 min labeled, unseen speakers in dev/test -> $OUT/demo"
demo_corpus "$OUT/demo" --pretrain-minutes "${PRETRAIN_MINUTES:-200}" --train-10m-minutes 10 \
    --train-1h-minutes 1 --dev-minutes 5 --test-minutes 5 --heldout-speakers 4

stage "language model: LM text without dev/test sentences, lexicon, 4-gram -> $OUT/demo/lm"
LM=$PWD/$OUT/demo/lm
[ -f "$LM/4-gram.arpa" ] && echo "already there" || $PY manifests/demo_lm.py --corpus "$OUT/demo" --force

declare -A PRETRAINING=(
    [data2vec2]="model.ranking_loss_weight=0 model.hard_fraction_end=0"
    [eh_mam_window]="model.hard_selection=window"
    [eh_mam_start]="model.hard_selection=start"
)
for arm in data2vec2 eh_mam_window eh_mam_start; do
    stage "pretraining $arm, $PRETRAIN_UPDATES updates -> $OUT/pretrain_$arm"
    # shellcheck disable=SC2086
    arm "$OUT/pretrain_$arm" --config-dir examples/eh_mam --config-name demo \
        common.user_dir="$PLUGIN" task.data="$DATA" optimization.max_update="$PRETRAIN_UPDATES" \
        lr_scheduler.warmup_updates=$((PRETRAIN_UPDATES / 10)) model.ema_anneal_end_step="$PRETRAIN_UPDATES" \
        ${PRETRAINING[$arm]}
done
arms_done

for seed in $SEEDS; do
  for lr in $FINETUNE_LRS; do
    for arm in none data2vec2 eh_mam_window eh_mam_start; do
        dir=$OUT/finetune_${arm}_lr${lr}_seed$seed
        stage "CTC fine-tuning on train_10m: $arm, lr $lr, seed $seed -> $dir"
        # no pretraining: the same backbone, built from the data2vec 2.0 checkpoint's config, randomly initialised
        init=(model.w2v_path="$PWD/$OUT/pretrain_$arm/checkpoints/checkpoint_last.pt")
        [ $arm = none ] && init=(model.w2v_path="$PWD/$OUT/pretrain_data2vec2/checkpoints/checkpoint_last.pt"
                                 ++model.no_pretrained_weights=true)
        arm "$dir" --config-dir examples/eh_mam --config-name finetune_demo \
            common.user_dir="$PLUGIN" task.data="$DATA" dataset.train_subset=train_10m common.seed="$seed" \
            optimization.max_update="$FINETUNE_UPDATES" optimization.lr="[$lr]" "${init[@]}"
    done
  done
done
arms_done
for dir in "$OUT"/finetune_*_seed*/; do
    for split in dev test; do
        [ -f "$dir/decode_$split/wer.json" ] || $PY run/decode.py --checkpoint "$dir/checkpoints/checkpoint_best.pt" \
            --manifest "$DATA/$split.tsv" --out "$dir/decode_$split" --force
    done
    [ -f "$dir/decode_test_lm/wer.json" ] || $PY run/decode.py --checkpoint "$dir/checkpoints/checkpoint_best.pt" \
        --manifest "$DATA/test.tsv" --out "$dir/decode_test_lm" --force --lexicon "$LM/lexicon.txt" \
        --lm "$LM/4-gram.arpa" --lm-weight 0.25 0.5 1 --word-score 0 1 2 --tune-manifest "$DATA/dev.tsv"
done

stage "Figure 5: masking the frames the loss predictor picks, against as many random frames"
first_seed=${SEEDS%% *}
# the EH-MAM (window) fine-tuning at the learning rate of lowest dev CER
best=$($PY examples/eh_mam/low_resource_report.py "$OUT" --best-run eh_mam_window "$first_seed")
[ -f "$OUT/figure5/figure5.json" ] || $PY run/eh_mam_analysis.py masking \
    --finetuned "$best/checkpoints/checkpoint_best.pt" \
    --pretrained "$OUT/pretrain_eh_mam_window/checkpoints/checkpoint_last.pt" \
    --manifest "$DATA/test.tsv" --fractions 0.1 0.2 0.3 0.4 --out "$OUT/figure5" --force

stage "done"
$PY examples/eh_mam/low_resource_report.py "$OUT"

#!/usr/bin/env bash
# The DWM paper's Table I at CPU scale: does the mask change what the features know? MSM-MAE and M2D pretrained
# with random, inverse-block (IBM) and dispersion-weighted (DWM) masks on the same general-audio mix, the same
# updates and seeds otherwise, each evaluated with run/linear_eval.py (3 runs) on speech and music tasks:
#   set-up (run/setup.sh installs fluidsynth and the GM soundfont) -> demo corpus (150 min unlabeled speech) -> tasks: keywords (the 35
#   Speech Commands words, unseen speakers; the paper's SPCV2), speaker (30 speakers; VC1), instrument family
#   (11 NSynth families, unseen program-note pairs; NSynth) and pitch (36 MIDI notes, unseen programs; Surge)
#   -> music for pretraining (phrases of the GM programs that no task uses) mixed with the speech ->
#   pretraining: FRAMEWORKS x MASKS x SEEDS (demo_msm_mae.yaml / demo_m2d.yaml: ratios 0.75 / 0.7 as in the
#   paper, DWM hint gamma 2, IBM 5x5 blocks) -> linear evaluation -> the table (mean ± std and "vs. random" in
#   points) and a plot in $OUT/table.md and $OUT/table.png (examples/m2d/masking_table_report.py).
# No environmental-sound task: no package of real sound events with consistent labels installs here.
# ABLATION=1 adds the paper's hint-ratio ablation (Table III) for MSM-MAE's DWM: hint constant 0 and 0.5, gamma 1 and 4.
# PARALLEL=1 runs two pretrainings (and their evaluations) at a time, one thread each. Sizes can be shrunk for a
# smoke run: TASKS, PRETRAIN_MINUTES, LABELED_MINUTES ("60 15 15": train_1h, dev, test), MUSIC_MINUTES, UPDATES, SEEDS, FRAMEWORKS, MASKS, INSTRUMENT_CLIPS, PITCH_CLIPS,
# CLIPS_PER_WORD.
# Everything goes to outputs/masking_table/ (OUT, relative to the repository, to change); running it again skips
# what is finished and resumes an interrupted pretraining from its last checkpoint; --force deletes OUT and starts
# over. The time each run of the script took is appended to $OUT/elapsed.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-outputs/masking_table}
STAGES_NAME="masking table"
source run/stages.sh "$@"
PRETRAIN_MINUTES=${PRETRAIN_MINUTES:-150}
LABELED_MINUTES=${LABELED_MINUTES:-60 15 15}
MUSIC_MINUTES=${MUSIC_MINUTES:-50}
UPDATES=${UPDATES:-6000}  # demo_m2d.yaml's own length; sized by the step times in examples/m2d/README.md
SEEDS=${SEEDS:-1 2}
FRAMEWORKS=${FRAMEWORKS:-msm_mae m2d}
MASKS=${MASKS:-random ibm dwm}
TASKS=${TASKS:-keywords speakers instrument pitch}
INSTRUMENT_CLIPS=${INSTRUMENT_CLIPS:-80 20 30}
PITCH_CLIPS=${PITCH_CLIPS:-24 6 8}
CLIPS_PER_WORD=${CLIPS_PER_WORD:-24 9 12}
PARALLEL=${PARALLEL:-0}
ABLATION=${ABLATION:-0}
mkdir -p "$OUT/linear"
trap 'echo "$(date -u +%FT%TZ) $(( $(date +%s) - STAGES_START )) s" >> "$OUT/elapsed"' EXIT

set_up

read -r TRAIN_MINUTES DEV_MINUTES TEST_MINUTES <<< "$LABELED_MINUTES"
stage "demo corpus: $PRETRAIN_MINUTES min unlabeled, $TRAIN_MINUTES / $DEV_MINUTES / $TEST_MINUTES min labeled -> $OUT/demo"
demo_corpus "$OUT/demo" --pretrain-minutes "$PRETRAIN_MINUTES" --train-1h-minutes "$TRAIN_MINUTES" \
    --dev-minutes "$DEV_MINUTES" --test-minutes "$TEST_MINUTES"

stage "tasks -> $OUT/{keywords,speakers,instrument,pitch}"
[ -f "$OUT/keywords/test.label" ] || $PY examples/m2d/demo_tasks.py keywords --out "$OUT/keywords" \
    --clips-per-word $CLIPS_PER_WORD --force
[ -f "$OUT/speakers/test.label" ] || $PY examples/m2d/demo_tasks.py speaker --manifests "$DATA" \
    --out "$OUT/speakers" --force
[ -f "$OUT/instrument/test.label" ] || $PY examples/m2d/demo_music.py instrument --out "$OUT/instrument" \
    --clips $INSTRUMENT_CLIPS --force
[ -f "$OUT/pitch/test.label" ] || $PY examples/m2d/demo_music.py pitch --out "$OUT/pitch" --clips $PITCH_CLIPS --force

stage "general-audio pretraining data: speech + $MUSIC_MINUTES min of music -> $OUT/mix/pretrain.tsv"
[ -f "$OUT/music/pretrain.tsv" ] || $PY examples/m2d/demo_music.py pretrain --out "$OUT/music" \
    --minutes "$MUSIC_MINUTES" --force
[ -f "$OUT/mix/pretrain.tsv" ] || $PY manifests/combine.py "$DATA/pretrain.tsv" "$OUT/music/pretrain.tsv" \
    --out "$OUT/mix/pretrain.tsv"

# cell FRAMEWORK MASK SEED [MODEL OVERRIDES...]: one pretraining and its linear evaluations (each skipped when done)
cell() {
    local framework=$1 mask=$2 seed=$3 run="$OUT/pretrain/${1}_${2}_$3"
    shift 3
    train_stage "$run" --config-dir "$(dirname "${CONFIGS[$framework]}")" --config-name "$(basename "${CONFIGS[$framework]}")" \
        common.user_dir="$PLUGIN" task.data="$PWD/$OUT/mix" common.seed="$seed" \
        ++model.masking="${mask%%-*}" optimization.max_update="$UPDATES" "$@"
    for task in $TASKS; do
        local result="$OUT/linear/${framework}_${mask}_$seed.$task.json"
        if [ ! -f "$result" ]; then
            $PY run/linear_eval.py --checkpoint "$run/checkpoints/checkpoint_last.pt" --train "$OUT/$task/train.tsv" \
                --valid "$OUT/$task/valid.tsv" --test "$OUT/$task/test.tsv" --lr 1e-3 > "$result.part"
            mv "$result.part" "$result"
        fi
    done
}

# the CPU-scale config of each framework (FRAMEWORKS="msm_mae m2d eat" adds EAT, whose own mask is IBM)
declare -A CONFIGS=([msm_mae]=examples/m2d/demo_msm_mae [m2d]=examples/m2d/demo_m2d [eat]=examples/eat/demo)
# the masks' own settings, as in the paper-scale yamls (m2d_ibm.yaml, m2d_dwm.yaml)
declare -A MASK_SETTINGS=(
    [random]=""
    [ibm]="++model.ibm_block=5 ++model.ibm_adjust=0.07"
    [dwm]="++model.hint_gamma=2.0"
    [dwm-hint0]="++model.hint_constant=0.0"
    [dwm-hint0.5]="++model.hint_constant=0.5"
    [dwm-gamma1]="++model.hint_gamma=1.0"
    [dwm-gamma4]="++model.hint_gamma=4.0"
)
cells=()
for framework in $FRAMEWORKS; do
    for mask in $MASKS; do
        for seed in $SEEDS; do cells+=("$framework $mask $seed"); done
    done
done
if [ "$ABLATION" = 1 ]; then
    for mask in dwm-hint0 dwm-hint0.5 dwm-gamma1 dwm-gamma4; do
        for seed in $SEEDS; do cells+=("msm_mae $mask $seed"); done
    done
fi

stage "pretraining and linear evaluation: ${#cells[@]} cells ($UPDATES updates each) -> $OUT/pretrain, $OUT/linear"
pids=()
for spec in "${cells[@]}"; do
    read -r framework mask seed <<< "$spec"
    # shellcheck disable=SC2086  # the settings are separate hydra overrides
    if [ "$PARALLEL" = 1 ]; then  # two at a time, one thread each; a log gains a section per attempt
        while [ "$(jobs -rp | wc -l)" -ge 2 ]; do wait -n || true; done
        echo "$framework $mask seed $seed: $OUT/${framework}_${mask}_$seed.log"
        OMP_NUM_THREADS=1 cell "$framework" "$mask" "$seed" ${MASK_SETTINGS[$mask]} \
            >> "$OUT/${framework}_${mask}_$seed.log" 2>&1 &
        pids+=("$!")
    else
        cell "$framework" "$mask" "$seed" ${MASK_SETTINGS[$mask]}
    fi
done
for pid in "${pids[@]}"; do
    wait "$pid" || { echo "a cell failed: see $OUT/*.log"; exit 1; }
done

stage "done: the table"
$PY examples/m2d/masking_table_report.py "$OUT"

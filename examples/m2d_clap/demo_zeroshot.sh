#!/usr/bin/env bash
# Does the CLAP term teach the audio encoder words? Zero-shot keyword classification and audio<->text retrieval
# after CPU pretraining on the spoken demo corpus, with and without the CLAP term, 3 runs each (issue 13, section 3):
#   set-up -> demo corpus (150 min unlabeled, 15 min test), the keyword task (35 Speech Commands words, 72 train
#   clips a word) and a phrase set (3 keywords a clip; 1500 train, 200 test clips, by the keyword task's train
#   and test speakers) -> captions (transcripts: 'a voice says "..."'; keyword train clips: 'someone says the
#   word <w>') and their 128-d bag-of-words embeddings, weighted by inverse document frequency over the training
#   captions (the template words every caption shares weigh almost nothing) -> pretraining on demo pretrain +
#   keyword train + phrase train (demo.yaml), seeds 1-3, with model.clap_weight in $WEIGHTS and 0 -> run/zeroshot.py:
#   keyword test accuracy ("someone says the word <w>" prompts, unseen speakers), R@1/5/10 on the demo test
#   sentences and on the test phrases (unseen speakers and word combinations) -> a table.
# The bag of words carries word identity without any download; a random BERT would need transformers. Without
# the IDF weights 4 of the 5 words of every keyword prompt are shared (cosine 0.8 between two prompts).
# WEIGHTS is "1 0.01": the demo's weight and the paper's. At 3000 updates of batch 16 the paper's weight leaves
# the encoder to M2D (Adam trains the projector at any weight).
# About 8 minutes a pretraining on one core; PARALLEL=1 runs two at a time, one thread each.
# Sizes can be shrunk for a smoke run: PRETRAIN_MINUTES, TEST_MINUTES, CLIPS_PER_WORD ("72 9 12"), PHRASES
# ("1500 200"), UPDATES, SEEDS.
# Everything goes to outputs/m2d_clap_zeroshot/ (OUT, relative to the repository, to change); running it again
# skips finished stages; --force deletes OUT and starts over.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-outputs/m2d_clap_zeroshot}
STAGES_NAME="m2d-clap zero-shot"
source run/stages.sh "$@"
PRETRAIN_MINUTES=${PRETRAIN_MINUTES:-150}
TEST_MINUTES=${TEST_MINUTES:-15}
CLIPS_PER_WORD=${CLIPS_PER_WORD:-72 9 12}
PHRASES=${PHRASES:-1500 200}
UPDATES=${UPDATES:-3000}
SEEDS=${SEEDS:-1 2 3}
WEIGHTS=${WEIGHTS:-1 0.01}
PARALLEL=${PARALLEL:-0}

set_up
CLAP=$PWD/$OUT/captioned

stage "demo corpus ($PRETRAIN_MINUTES min unlabeled, $TEST_MINUTES min test) and keyword task -> $OUT"
demo_corpus "$OUT/demo" --pretrain-minutes "$PRETRAIN_MINUTES" --train-10m-minutes 1 --train-1h-minutes 1 \
    --dev-minutes 1 --test-minutes "$TEST_MINUTES" --force
# shellcheck disable=SC2086
[ -f "$OUT/keywords/test.label" ] || $PY examples/m2d/demo_tasks.py keywords --out "$OUT/keywords" \
    --clips-per-word $CLIPS_PER_WORD --force
# shellcheck disable=SC2086
[ -f "$OUT/phrases/test.wrd" ] || $PY examples/m2d/demo_tasks.py phrases --out "$OUT/phrases" --phrases $PHRASES --force

stage "captions and bag-of-words embeddings -> $CLAP"
if [ ! -f "$CLAP/test.capemb.npy" ]; then
    $PY examples/m2d_clap/demo_captions.py --manifests "$DATA" --splits pretrain,test --force
    $PY examples/m2d_clap/demo_captions.py --manifests "$OUT/keywords" --splits train --force
    $PY examples/m2d_clap/demo_captions.py --manifests "$OUT/phrases" --splits train,test --force
    $PY examples/m2d_clap/demo_captions.py --combine "$CLAP/pretrain.tsv" "$DATA/pretrain.tsv" "$OUT/keywords/train.tsv" \
        "$OUT/phrases/train.tsv" --force
    $PY examples/m2d_clap/demo_captions.py --combine "$CLAP/test.tsv" "$DATA/test.tsv" --force
    for split in pretrain test; do
        $PY manifests/caption_embeddings.py --data "$CLAP" --split $split --encoder bow --bow-dim 128 \
            --bow-idf "$CLAP/pretrain.cap" --force
    done
fi

# arm SEED WEIGHT: one pretraining and its zero-shot scores (skipped when done)
arm() {
    local run="$OUT/pretrain_${2}_$1" scores=("--encoder" bow --bow-dim 128 --bow-idf "$CLAP/pretrain.cap")
    train_stage "$run" --config-dir examples/m2d_clap --config-name demo \
        common.user_dir="$PLUGIN" task.data="$CLAP" common.seed="$1" \
        model.clap_weight="$2" optimization.max_update="$UPDATES"
    if [ ! -f "$OUT/zeroshot_${2}_$1.json" ]; then
        $PY run/zeroshot.py --checkpoint "$run/checkpoints/checkpoint_last.pt" "${scores[@]}" \
            --classify "$OUT/keywords/test.tsv" --template "someone says the word {label}" \
            --retrieval "$CLAP/test.tsv" | tail -1 > "$OUT/zeroshot_${2}_$1.part"
        mv "$OUT/zeroshot_${2}_$1.part" "$OUT/zeroshot_${2}_$1.json"
    fi
    if [ ! -f "$OUT/phrases_${2}_$1.json" ]; then
        $PY run/zeroshot.py --checkpoint "$run/checkpoints/checkpoint_last.pt" "${scores[@]}" \
            --retrieval "$OUT/phrases/test.tsv" | tail -1 > "$OUT/phrases_${2}_$1.part"
        mv "$OUT/phrases_${2}_$1.part" "$OUT/phrases_${2}_$1.json"
    fi
}

stage "pretraining: seeds $SEEDS x clap_weight $WEIGHTS and 0 -> $OUT/pretrain_<weight>_<seed>"
arms=()
for seed in $SEEDS; do
    for weight in $WEIGHTS 0; do
        if [ "$PARALLEL" = 1 ]; then  # two at a time, one thread each; a log gains a section per attempt
            while [ "$(jobs -rp | wc -l)" -ge 2 ]; do wait -n || true; done
            echo "seed $seed, clap_weight $weight: $OUT/arm_${weight}_$seed.log"
            OMP_NUM_THREADS=1 arm "$seed" "$weight" >> "$OUT/arm_${weight}_$seed.log" 2>&1 &
            arms+=("$!")
        else
            arm "$seed" "$weight"
        fi
    done
done
for pid in "${arms[@]}"; do
    wait "$pid" || { echo "an arm failed: see $OUT/arm_*.log"; exit 1; }
done

stage "done"
$PY - "$OUT" "$SEEDS" "$WEIGHTS" <<'PYEOF'
import json, statistics, sys
from pathlib import Path

out, seeds, weights = Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3].split()
arms = weights + ["0"]
scores = {(w, s): {**json.loads((out / f"zeroshot_{w}_{s}.json").read_text()),
                   "phrases": json.loads((out / f"phrases_{w}_{s}.json").read_text())["retrieval"]}
          for w in arms for s in seeds}
first = scores[arms[0], seeds[0]]
rows = {"keyword zero-shot accuracy": (lambda r: r["classification"]["accuracy"], 1 / first["classification"]["classes"])}
for name, key in (("test sentences", "retrieval"), ("keyword phrases", "phrases")):
    clips, captions = first[key]["clips"], first[key]["captions"]
    for direction in ("audio_to_text", "text_to_audio"):
        for k in (1, 5, 10):
            # a random ranking: one of a clip's two captions among the first k captions; a caption's clip among
            # the first k clips
            chance = (1 - (captions - k) * (captions - k - 1) / (captions * (captions - 1))
                      if direction == "audio_to_text" else min(1.0, k / clips))
            rows[f"{name}: {direction.replace('_to_', ' -> ')} R@{k}"] = (
                lambda r, key=key, d=direction, k=k: r[key][d][f"R@{k}"], chance)
heads = [f"M2D-CLAP, clap_weight {w}" for w in weights] + ["M2D (clap_weight 0)"]
print(f"| metric (%, {len(seeds)} runs, mean ± std) | " + " | ".join(heads) + " | chance |")
print("|---" * (len(arms) + 2) + "|")
for name, (value, chance) in rows.items():
    cells = []
    for w in arms:
        values = [100 * value(scores[w, s]) for s in seeds]
        cells.append(f"{statistics.mean(values):.1f} ± {statistics.pstdev(values):.1f}")
    print(f"| {name} | " + " | ".join(cells) + f" | {100 * chance:.1f} |")
PYEOF

#!/usr/bin/env bash
# Does the CLAP term teach the audio encoder words? Zero-shot keyword classification and audio->text retrieval
# after CPU pretraining on the spoken demo corpus, with and without the CLAP term, 3 runs each (issue 13, section 3):
#   set-up -> demo corpus (150 min unlabeled, 15 min test) and the keyword task (35 Speech Commands words) ->
#   captions (transcripts: 'a voice says "..."'; keyword train clips: 'someone says the word <w>') and their
#   128-d bag-of-words embeddings, weighted by inverse document frequency over the training captions (the
#   template words every caption shares weigh almost nothing) -> pretraining on demo pretrain + keyword train (demo.yaml), seeds 1-3, with
#   model.clap_weight 0.01 and 0 -> run/zeroshot.py: keyword test accuracy ("someone says the word <w>"
#   prompts, unseen speakers) and demo-test R@1/5/10 -> a table.
# The bag of words carries word identity without any download; a random BERT would need transformers. Without
# the IDF weights 4 of the 5 words of every keyword prompt are shared (cosine 0.8 between two prompts).
# Estimated at 6 x 14 minutes of pretraining on 2 cores (demo_m2d.yaml's cost); not yet run at this size.
# Sizes can be shrunk for a smoke run: PRETRAIN_MINUTES, TEST_MINUTES, CLIPS_PER_WORD ("24 9 12"), UPDATES, SEEDS.
# Everything goes to outputs/m2d_clap_zeroshot/ (OUT, relative to the repository, to change); running it again skips finished stages; --force
# deletes OUT and starts over.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-outputs/m2d_clap_zeroshot}
STAGES_NAME="m2d-clap zero-shot"
source run/stages.sh "$@"
PRETRAIN_MINUTES=${PRETRAIN_MINUTES:-150}
TEST_MINUTES=${TEST_MINUTES:-15}
CLIPS_PER_WORD=${CLIPS_PER_WORD:-24 9 12}
UPDATES=${UPDATES:-6000}
SEEDS=${SEEDS:-1 2 3}

stage "set-up"
bash run/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} PYTHONUNBUFFERED=1
PY=.venv/bin/python
DEMO=$PWD/$OUT/demo/manifests
CLAP=$PWD/$OUT/captioned

stage "demo corpus ($PRETRAIN_MINUTES min unlabeled, $TEST_MINUTES min test) and keyword task -> $OUT"
demo_corpus "$OUT/demo" --pretrain-minutes "$PRETRAIN_MINUTES" --train-10m-minutes 1 --train-1h-minutes 1 \
    --dev-minutes 1 --test-minutes "$TEST_MINUTES" --force
# shellcheck disable=SC2086
[ -f "$OUT/keywords/test.label" ] || $PY examples/m2d/demo_tasks.py keywords --out "$OUT/keywords" \
    --clips-per-word $CLIPS_PER_WORD --force

stage "captions and bag-of-words embeddings -> $CLAP"
if [ ! -f "$CLAP/test.capemb.npy" ]; then
    $PY examples/m2d_clap/demo_captions.py --manifests "$DEMO" --splits pretrain,test --force
    $PY examples/m2d_clap/demo_captions.py --manifests "$OUT/keywords" --splits train --force
    $PY examples/m2d_clap/demo_captions.py --combine "$CLAP/pretrain.tsv" "$DEMO/pretrain.tsv" "$OUT/keywords/train.tsv" --force
    $PY examples/m2d_clap/demo_captions.py --combine "$CLAP/test.tsv" "$DEMO/test.tsv" --force
    for split in pretrain test; do
        $PY manifests/caption_embeddings.py --data "$CLAP" --split $split --encoder bow --bow-dim 128 \
            --bow-idf "$CLAP/pretrain.cap" --force
    done
fi

for seed in $SEEDS; do
    for weight in 0.01 0; do
        stage "pretraining, seed $seed, clap_weight $weight -> $OUT/pretrain_${weight}_$seed"
        train_stage "$OUT/pretrain_${weight}_$seed" --config-dir examples/m2d_clap --config-name demo \
            common.user_dir="$PWD/maskssl_fairseq" task.data="$CLAP" common.seed="$seed" \
            model.clap_weight="$weight" optimization.max_update="$UPDATES"
        [ -f "$OUT/zeroshot_${weight}_$seed.json" ] || $PY run/zeroshot.py \
            --checkpoint "$OUT/pretrain_${weight}_$seed/checkpoints/checkpoint_last.pt" --encoder bow --bow-dim 128 \
            --bow-idf "$CLAP/pretrain.cap" \
            --classify "$OUT/keywords/test.tsv" --template "someone says the word {label}" \
            --retrieval "$CLAP/test.tsv" | tail -1 > "$OUT/zeroshot_${weight}_$seed.json"
    done
done

stage "done"
$PY - "$OUT" "$SEEDS" <<'PYEOF'
import json, statistics, sys
from pathlib import Path

out, seeds = Path(sys.argv[1]), sys.argv[2].split()
rows = {"keyword accuracy": lambda r: r["classification"]["accuracy"]}
for direction in ("audio_to_text", "text_to_audio"):
    for k in ("R@1", "R@5", "R@10"):
        rows[f"{direction} {k}"] = lambda r, d=direction, k=k: r["retrieval"][d][k]
results = {w: [json.loads((out / f"zeroshot_{w}_{s}.json").read_text()) for s in seeds] for w in ("0.01", "0")}
first = results["0.01"][0]
chance = {"keyword accuracy": 1 / first["classification"]["classes"]}
clips, captions = first["retrieval"]["clips"], first["retrieval"]["captions"]
for k in (1, 5, 10):
    # a random ranking: one of the clip's two captions among the first k of all captions
    chance[f"audio_to_text R@{k}"] = 1 - (captions - k) * (captions - k - 1) / (captions * (captions - 1))
    chance[f"text_to_audio R@{k}"] = min(1.0, k / clips)
print(f"| metric (%, {len(seeds)} runs) | M2D-CLAP | M2D (clap_weight 0) | chance |")
print("|---|---|---|---|")
for name, value in rows.items():
    cells = []
    for w in ("0.01", "0"):
        values = [100 * value(r) for r in results[w]]
        std = statistics.pstdev(values) if len(values) > 1 else 0.0
        cells.append(f"{statistics.mean(values):.1f} ± {std:.1f}")
    print(f"| {name} | {cells[0]} | {cells[1]} | {100 * chance[name]:.1f} |")
PYEOF

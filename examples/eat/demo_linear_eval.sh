#!/usr/bin/env bash
# Does EAT pretraining help? The M2D demo's question (examples/m2d/demo_linear_eval.sh) asked of EAT, on CPU:
#   set-up -> demo corpus with 2.5 h of unlabeled speech -> keyword task (the 35 Speech Commands words, test
#   speakers unseen) and speaker task (30 speakers) -> EAT pretraining (demo.yaml, 4000 updates) -> linear
#   evaluation, 3 runs each, of the pretrained and of random encoders -> keyword fine-tuning
#   (finetune_demo.yaml) of the pretrained encoder and of the same model from scratch -> a table, also
#   written to $OUT/eat_demo.md.
# Everything goes to outputs/eat_demo/. Running it again skips finished stages and resumes an interrupted
# training from its last checkpoint; pass --force to delete outputs/eat_demo and start over.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=outputs/eat_demo
STAGES_NAME="eat demo"
source run/stages.sh "$@"

set_up

stage "demo corpus: 150 min unlabeled (pretrain), 60 / 15 / 15 min labeled -> $OUT/demo"
demo_corpus "$OUT/demo" --pretrain-minutes 150 --train-1h-minutes 60 --dev-minutes 15 --test-minutes 15

stage "classification tasks -> $OUT/keywords, $OUT/speakers"
demo_tasks "$OUT" "$DATA"

stage "EAT pretraining on the unlabeled split -> $OUT/pretrain"
train_stage "$OUT/pretrain" --config-dir examples/eat --config-name demo common.user_dir="$PLUGIN" task.data="$DATA"
CHECKPOINT=$PWD/$OUT/pretrain/checkpoints/checkpoint_last.pt

stage "linear evaluation: frozen clip embeddings, one linear layer, 3 runs"
for task in keywords speakers; do
    for init in pretrained random; do
        [ -s "$OUT/$task.$init.txt" ] || $PY run/linear_eval.py --checkpoint "$CHECKPOINT" \
            --train "$OUT/$task/train.tsv" --valid "$OUT/$task/valid.tsv" --test "$OUT/$task/test.tsv" \
            --lr 1e-3 $([ $init = random ] && echo --random-init) > "$OUT/$task.$init.txt"
    done
done

for init in pretrained scratch; do
    stage "keyword fine-tuning, $init -> $OUT/finetune_$init"
    train_stage "$OUT/finetune_$init" --config-dir examples/eat --config-name finetune_demo \
        common.user_dir="$PLUGIN" task.data="$PWD/$OUT/keywords" model.pretrained_path="$CHECKPOINT" \
        ++model.random_init=$([ $init = scratch ] && echo true || echo false)
    [ -s "$OUT/finetune_$init.txt" ] || $PY run/classify.py \
        --checkpoint "$OUT/finetune_$init/checkpoints/checkpoint_best.pt" --manifest "$OUT/keywords/test.tsv" \
        | tail -1 > "$OUT/finetune_$init.txt"
done

stage "done"
$PY - "$OUT" <<'PYEOF' | tee "$OUT/eat_demo.md"
import json, re, sys
from pathlib import Path

out = Path(sys.argv[1])
print("| task (test accuracy, %) | EAT pretrained | random init / scratch |")
print("|---|---|---|")
for task in ("keywords", "speakers"):
    cells = []
    for init in ("pretrained", "random"):
        result = json.loads((out / f"{task}.{init}.txt").read_text().splitlines()[0])  # linear_eval's JSON line
        cells.append(f"{100 * result['test_accuracy']:.1f} ± {100 * result['test_accuracy_std']:.1f}")
    print(f"| {task}, linear evaluation (3 runs) | {cells[0]} | {cells[1]} |")
# run/classify.py's last line: "<manifest>: N clips, accuracy A"
scores = [float(re.search(r"accuracy ([0-9.]+)", (out / f"finetune_{init}.txt").read_text()).group(1))
          for init in ("pretrained", "scratch")]
print(f"| keywords, fine-tuned (1 run) | {100 * scores[0]:.1f} | {100 * scores[1]:.1f} |")
PYEOF

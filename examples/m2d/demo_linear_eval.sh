#!/usr/bin/env bash
# Does M2D pretraining help? Linear evaluation of a pretrained and of a randomly initialised encoder on two
# classification tasks made from the demo corpus, on CPU (19 minutes on 2 cores, measured):
#   set-up -> demo corpus with 2.5 h of unlabeled speech -> keyword task (the 35 Speech Commands words, test
#   speakers unseen) and speaker task (30 speakers) -> M2D pretraining (demo_m2d.yaml, 6000 updates) ->
#   linear evaluation, 3 runs each, of the pretrained and of random encoders -> a table.
# Everything goes to outputs/m2d_linear_eval/. Running it again skips finished stages and resumes an interrupted
# pretraining from its last checkpoint; pass --force to delete outputs/m2d_linear_eval and start over.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=outputs/m2d_linear_eval
STAGES_NAME="m2d linear eval"
source run/stages.sh "$@"

set_up

stage "demo corpus: 150 min unlabeled (pretrain), 60 / 15 / 15 min labeled -> $OUT/demo"
demo_corpus "$OUT/demo" --pretrain-minutes 150 --train-1h-minutes 60 --dev-minutes 15 --test-minutes 15

stage "classification tasks -> $OUT/keywords, $OUT/speakers"
demo_tasks "$OUT" "$DATA"

stage "M2D pretraining on the unlabeled split -> $OUT/pretrain"
train_stage "$OUT/pretrain" --config-dir examples/m2d --config-name demo_m2d \
    common.user_dir="$PLUGIN" task.data="$DATA"

stage "linear evaluation: frozen clip embeddings, one linear layer, 3 runs"
# recomputed from the checkpoint each time, so replacing earlier results loses nothing
for task in keywords speakers; do
    for init in pretrained random; do
        $PY run/linear_eval.py --checkpoint "$OUT/pretrain/checkpoints/checkpoint_last.pt" \
            --train "$OUT/$task/train.tsv" --valid "$OUT/$task/valid.tsv" --test "$OUT/$task/test.tsv" \
            --lr 1e-3 $([ $init = random ] && echo --random-init) > "$OUT/$task.$init.txt"
    done
done

stage "done"
$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
print(f"{'task':<10}{'pretrained':>18}{'random init':>18}   (test accuracy, mean +- std over 3 runs)")
for task in ("keywords", "speakers"):
    cells = []
    for init in ("pretrained", "random"):
        result = json.loads((out / f"{task}.{init}.txt").read_text().splitlines()[0])  # linear_eval's JSON line
        cells.append(f"{100 * result['test_accuracy']:.1f} +- {100 * result['test_accuracy_std']:.1f}%")
    print(f"{task:<10}{cells[0]:>18}{cells[1]:>18}")
EOF

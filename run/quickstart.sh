#!/usr/bin/env bash
# The main job, end to end on the built-in demo corpus, on CPU:
#   set-up -> spoken demo corpus (1 h unlabeled, 1 h labeled) and its LM resources (LM text without the dev and
#   test sentences, lexicon, 4-gram) -> EH-MAM pretraining (examples/eh_mam/demo.yaml, 400 updates) -> CTC
#   fine-tuning on train_1h (finetune_demo.yaml) -> decode test, greedy and with the lexicon + 4-gram LM
#   (weights tuned on dev), WER.
# (examples/wav2vec2/tiny.yaml is the fairseq wav2vec 2.0 pretraining it replaced, kept as a baseline.)
# Everything goes to outputs/quickstart/. Running it again skips finished stages and resumes an interrupted
# one from its last checkpoint; pass --force to delete outputs/quickstart and start over.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=outputs/quickstart
STAGES_NAME=quickstart
source run/stages.sh "$@"

set_up

stage "demo corpus (espeak-ng speech, LibriSpeech layout) -> $OUT/demo"
demo_corpus "$OUT/demo" --pretrain-minutes 60 --train-1h-minutes 60
LM=$PWD/$OUT/demo/lm
[ -f "$LM/4-gram.arpa" ] || $PY manifests/demo_lm.py --corpus "$OUT/demo" --force

stage "pretraining: EH-MAM (data2vec 2.0 + easy-to-hard masks), demo size, on demo pretrain -> $OUT/pretrain"
train_stage "$OUT/pretrain" --config-dir examples/eh_mam --config-name demo \
    common.user_dir="$PLUGIN" task.data="$DATA" optimization.max_update=400 lr_scheduler.warmup_updates=40 \
    model.ema_anneal_end_step=400

stage "CTC fine-tuning (fairseq wav2vec_ctc) on demo train_1h -> $OUT/finetune"
# an hour of labels needs less regularisation than finetune_demo's 10-minute setting: lighter time masks; and
# lr 2e-3 (dev UER 26% after 1000 updates, against 42% with finetune_demo's 5e-4)
train_stage "$OUT/finetune" --config-dir examples/eh_mam --config-name finetune_demo \
    common.user_dir="$PLUGIN" task.data="$DATA" model.w2v_path="$PWD/$OUT/pretrain/checkpoints/checkpoint_last.pt" \
    model.mask_prob=0.1 model.mask_length=5 optimization.lr=[0.002]

stage "decoding demo test: greedy CTC, then lexicon + 4-gram LM with its weights tuned on dev"
# decoding is recomputed from the checkpoint, so replacing its previous output loses nothing
$PY run/decode.py --checkpoint "$OUT/finetune/checkpoints/checkpoint_best.pt" --manifest "$DATA/test.tsv" \
    --out "$OUT/decode_test" --force
$PY run/decode.py --checkpoint "$OUT/finetune/checkpoints/checkpoint_best.pt" --manifest "$DATA/test.tsv" \
    --out "$OUT/decode_test_lm" --force --lexicon "$LM/lexicon.txt" --lm "$LM/4-gram.arpa" \
    --lm-weight 0.5 1 2 --word-score -1 0 1 2 --tune-manifest "$DATA/dev.tsv"

stage "done"
echo "corpus and manifests:   $OUT/demo"
echo "pretraining:            $OUT/pretrain/checkpoints, log $OUT/pretrain/hydra_train.log"
echo "fine-tuning:            $OUT/finetune/checkpoints, log $OUT/finetune/hydra_train.log"
echo "hypotheses, WER:        $OUT/decode_test/hyp.wrd, $OUT/decode_test/wer.json (greedy)"
echo "                        $OUT/decode_test_lm/hyp.wrd, $OUT/decode_test_lm/wer.json (4-gram LM)"

#!/usr/bin/env bash
# The main job, end to end on the built-in demo corpus, on CPU:
#   set-up -> spoken demo corpus -> EH-MAM pretraining -> CTC fine-tuning on train_1h -> decode test, WER.
# (examples/wav2vec2/tiny.yaml is the fairseq wav2vec 2.0 pretraining it replaced, kept as a baseline.)
# Everything goes to outputs/quickstart/. Running it again skips finished stages and resumes an interrupted
# one from its last checkpoint; pass --force to delete outputs/quickstart and start over.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=outputs/quickstart
STAGES_NAME=quickstart
source run/stages.sh "$@"

stage "set-up"
bash run/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} PYTHONUNBUFFERED=1
PY=.venv/bin/python
PLUGIN=$PWD/maskssl_fairseq
DATA=$PWD/$OUT/demo/manifests

stage "demo corpus (espeak-ng speech, LibriSpeech layout) -> $OUT/demo"
if [ -f "$DATA/test.tsv" ]; then
    echo "already there"
else
    $PY manifests/demo_corpus.py --out "$OUT/demo"
fi

stage "pretraining: EH-MAM (data2vec 2.0 + easy-to-hard masks), tiny, on demo pretrain -> $OUT/pretrain"
train_stage "$OUT/pretrain" --config-dir examples/eh_mam --config-name tiny \
    common.user_dir="$PLUGIN" task.data="$DATA"

stage "CTC fine-tuning (fairseq wav2vec_ctc) on demo train_1h -> $OUT/finetune"
train_stage "$OUT/finetune" --config-dir examples/eh_mam --config-name finetune_tiny \
    common.user_dir="$PLUGIN" task.data="$DATA" model.w2v_path="$PWD/$OUT/pretrain/checkpoints/checkpoint_last.pt"

stage "decoding demo test (greedy CTC)"
# decoding is recomputed from the checkpoint, so replacing its previous output loses nothing
$PY run/decode.py --checkpoint "$OUT/finetune/checkpoints/checkpoint_best.pt" --manifest "$DATA/test.tsv" \
    --out "$OUT/decode_test" --force

stage "done"
echo "corpus and manifests:   $OUT/demo"
echo "pretraining:            $OUT/pretrain/checkpoints, log $OUT/pretrain/hydra_train.log"
echo "fine-tuning:            $OUT/finetune/checkpoints, log $OUT/finetune/hydra_train.log"
echo "hypotheses, WER:        $OUT/decode_test/hyp.wrd, $OUT/decode_test/wer.json"

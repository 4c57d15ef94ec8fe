# Shared by the end-to-end scripts (run/quickstart.sh, examples/m2d/demo_linear_eval.sh); source it from the
# repository root after setting STAGES_NAME.
STAGES_START=$(date +%s)

stage() { echo; echo "=== [$STAGES_NAME $(( $(date +%s) - STAGES_START ))s] $*"; }

# train_stage DIR FAIRSEQ_HYDRA_TRAIN_ARGS...: trains into DIR/checkpoints, logs in DIR. An interrupted run
# resumes from its checkpoint_last.pt. A finished one leaves DIR/finished and is skipped from then on:
# fairseq checks max_update only after a step, so starting it again would add one more update each time.
train_stage() {
    local dir=$1
    shift
    if [ -f "$dir/finished" ]; then
        echo "already finished ($dir/finished)"
        return
    fi
    .venv/bin/fairseq-hydra-train "$@" checkpoint.save_dir="$PWD/$dir/checkpoints" hydra.run.dir="$PWD/$dir"
    touch "$dir/finished"
}

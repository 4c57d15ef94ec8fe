# Shared by the end-to-end scripts (run/quickstart.sh, examples/m2d/demo_linear_eval.sh). From the repository
# root, with OUT and STAGES_NAME set: source run/stages.sh "$@". The only argument a script takes is --force,
# which deletes OUT to start over.
case "${1:-}" in
    --force) rm -rf "$OUT" ;;
    "") ;;
    *) echo "usage: bash $0 [--force]" >&2; exit 2 ;;
esac
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

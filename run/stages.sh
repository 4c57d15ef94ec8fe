# Shared by the end-to-end scripts (run/quickstart.sh and the examples' demo scripts). From the repository
# root, with OUT and STAGES_NAME set: source run/stages.sh "$@". The only argument a script takes is --force,
# which deletes OUT to start over.
case "${1:-}" in
    --force) rm -rf "$OUT" ;;
    "") ;;
    *) echo "usage: bash $0 [--force]" >&2; exit 2 ;;
esac
STAGES_START=$(date +%s)

stage() { echo; echo "=== [$STAGES_NAME $(( $(date +%s) - STAGES_START ))s] $*"; }

# set_up [THREADS]: the first stage of every script (run/setup.sh, a no-op once done) and the names they share:
# PY, PLUGIN (the plugin folder, for common.user_dir) and DATA (the demo corpus's manifests in $OUT/demo). Torch
# runs THREADS threads (2, both cores) unless OMP_NUM_THREADS is set.
set_up() {
    stage "set-up"
    bash run/setup.sh
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${1:-2}} PYTHONUNBUFFERED=1
    PY=.venv/bin/python
    PLUGIN=$PWD/maskssl_fairseq
    DATA=$PWD/$OUT/demo/manifests
}

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

# demo_corpus DIR ARGS...: the spoken demo corpus (manifests/demo_corpus.py --out DIR ARGS), unless
# DIR/manifests/test.tsv is already there
demo_corpus() {
    local dir=$1
    shift
    if [ -f "$dir/manifests/test.tsv" ]; then
        echo "already there"
    else
        .venv/bin/python manifests/demo_corpus.py --out "$dir" "$@"
    fi
}

# demo_tasks DIR MANIFESTS: the keyword task in DIR/keywords and the speaker task (from the corpus MANIFESTS)
# in DIR/speakers (examples/m2d/demo_tasks.py), each unless it is already there
demo_tasks() {
    [ -f "$1/keywords/test.label" ] || .venv/bin/python examples/m2d/demo_tasks.py keywords --out "$1/keywords" --force
    [ -f "$1/speakers/test.label" ] || .venv/bin/python examples/m2d/demo_tasks.py speaker --manifests "$2" \
        --out "$1/speakers" --force
}

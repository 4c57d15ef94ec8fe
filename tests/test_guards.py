"""Guards during training: data2vec 2.0's collapse checks, and a non-finite loss that stops the run."""

import subprocess

import pytest

from helpers import PLUGIN_DIR, REPO, VENV_BIN, logged

EH_MAM = REPO / "examples" / "eh_mam"
SHORT = ["dataset.max_tokens=96000", "task.max_sample_size=24000", "common.log_interval=1"]


def failing_run(data, run_dir, *overrides) -> str:
    proc = subprocess.run(
        [str(VENV_BIN / "fairseq-hydra-train"), "--config-dir", str(EH_MAM), "--config-name", "tiny",
         f"common.user_dir={PLUGIN_DIR}", f"task.data={data}", f"hydra.run.dir={run_dir}", *SHORT, *overrides],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
    )
    assert proc.returncode != 0, proc.stdout[-3000:]
    return proc.stdout


def error_line(log: str) -> str:
    """The exception hydra printed last, right above its ``HYDRA_FULL_ERROR`` footer."""
    lines = [line for line in log.splitlines() if line.strip()]
    footer = max(i for i, line in enumerate(lines) if "HYDRA_FULL_ERROR" in line)
    return lines[footer - 1]


@pytest.mark.parametrize("field, collapsed", [("min_target_var", "EMA teacher's targets"),
                                              ("min_pred_var", "student's predictions")])
def test_collapse_stops_after_the_configured_update(demo_corpus, tmp_path, field, collapsed):
    # every real std is below 100: a collapse by this threshold, checked once 2 updates are done
    log = failing_run(demo_corpus, tmp_path, "optimization.max_update=6", "++model.collapse_check_after=2",
                      f"++model.{field}=100")
    assert [int(r["num_updates"]) for r in logged(log)] == [1, 2]
    line = error_line(log)
    assert line.startswith(f"RuntimeError: model.{field}: the {collapsed} collapsed at update 3"), line
    assert "optimization.lr" in line and "model.collapse_check_after=2" in line


def test_non_finite_loss_names_the_update_and_the_terms(demo_corpus, tmp_path):
    # NaN audio is refused where it is read (test_bad_inputs.py); a loss scale of NaN stands for a model that
    # diverged: the regression loss is NaN from the first update
    log = failing_run(demo_corpus, tmp_path / "run", "optimization.max_update=3", "++model.loss_scale=nan")
    line = error_line(log)
    assert line.startswith("FloatingPointError: update 1: the loss is not finite (loss=nan"), line
    assert "loss_regression=nan" in line and "loss_ranking=" in line
    assert not (tmp_path / "run" / "checkpoints" / "checkpoint_last.pt").exists()

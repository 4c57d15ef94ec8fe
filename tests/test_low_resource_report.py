"""The low-resource demo's report: relative WER against no pretraining, Figure 5 and ranking accuracy rows."""

import json
import sys

from helpers import REPO, run_checked


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_report_table_from_demo_outputs(tmp_path):
    # every arm at two learning rates; the report keeps, per arm, the rate of lowest mean dev CER
    for arm, seed, wer, cer in [("none", 1, 90.0, 50.0), ("none", 2, 94.0, 54.0), ("data2vec2", 1, 60.0, 20.0),
                                ("data2vec2", 2, 62.0, 22.0), ("eh_mam_window", 1, 57.0, 19.0)]:
        for lr, worse in (("0.0005", 0.0), ("0.002", 5.0)) if arm != "none" else (("0.0005", 5.0), ("0.002", 0.0)):
            run = tmp_path / f"finetune_{arm}_lr{lr}_seed{seed}"
            write(run / "decode_dev" / "wer.json", json.dumps({"wer": wer + worse, "cer": cer + worse}))
            write(run / "decode_test" / "wer.json", json.dumps({"wer": wer + worse, "cer": cer + worse}))
            if arm != "eh_mam_window":  # its LM decoding has not run yet: empty cells
                write(run / "decode_test_lm" / "wer.json", json.dumps({"wer": wer + worse - 20, "cer": cer + worse - 10}))
    record = '[2026-12-01 10:00:00,000][train_inner][INFO] - {{"num_updates": "{}", "ranking_accuracy": "{}"}}'
    write(tmp_path / "pretrain_eh_mam_window" / "hydra_train.log",
          "\n".join(record.format(u, a) for u, a in [(100, 0.55), (200, 0.70), (300, 0.81)]) + "\n")
    write(tmp_path / "figure5" / "figure5.json", json.dumps({"clean_wer": 57.0, "rows": [
        {"fraction": 0.2, "predictor_wer_rise": 0.5, "random_wer_rise": 0.2, "predictor_ctc_rise": 0.9,
         "random_ctc_rise": 0.3}]}))

    printed = run_checked([sys.executable, REPO / "examples" / "eh_mam" / "low_resource_report.py", tmp_path])
    table = (tmp_path / "low_resource.md").read_text()
    assert table.strip() == printed.strip()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert "| 0.002 | 92.0 ± 2.8 | 52.0 ± 2.8 |  | 72.0 ± 2.8 | 42.0 ± 2.8 |  | 2 |" in rows["no pretraining (same backbone, random init)"]
    assert "| 0.0005 | 61.0 ± 1.4 | 21.0 ± 1.4 | -33.7% | 41.0 ± 1.4 | 11.0 ± 1.4 | -43.1% | 2 |" in rows["data2vec 2.0"]
    assert "| 0.0005 | 57.0 | 19.0 | -38.0% | | | | 1 |" in rows["EH-MAM, hard windows (`hard_selection=window`)"]
    assert "test WER (%), 4-gram LM" in table.splitlines()[0]
    assert "| 0.2 | +50.0% | +20.0% | +90.0% | +30.0% |" in table
    assert "| 300 | 0.810 |" in table
    assert (tmp_path / "low_resource.png").stat().st_size > 1000


def test_best_run_is_the_learning_rate_of_lowest_dev_cer(tmp_path):
    for lr, dev_cer in (("0.0005", 40.0), ("0.002", 30.0), ("0.004", 35.0)):
        write(tmp_path / f"finetune_eh_mam_window_lr{lr}_seed1" / "decode_dev" / "wer.json", json.dumps({"cer": dev_cer}))
    printed = run_checked([sys.executable, REPO / "examples" / "eh_mam" / "low_resource_report.py", tmp_path,
                           "--best-run", "eh_mam_window", "1"])
    assert printed.strip() == str(tmp_path / "finetune_eh_mam_window_lr0.002_seed1")

"""The table and figure of ``examples/eh_mam/demo_low_resource.sh``: test WER / CER of every arm, Figure 5,
ranking accuracy over pretraining.

    python examples/eh_mam/low_resource_report.py outputs/low_resource

Reads ``finetune_<arm>_seed<s>/decode_test/wer.json``, ``pretrain_<arm>/hydra_train.log`` and
``figure5/figure5.json`` under the output directory; writes ``low_resource.md`` and ``low_resource.png`` there
and prints the markdown.
"""

import json
import statistics
import sys
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "run"))
from helpers import logged  # noqa: E402

ARMS = {
    "none": "no pretraining (same backbone, random init)",
    "data2vec2": "data2vec 2.0",
    "eh_mam_window": "EH-MAM, hard windows (`hard_selection=window`)",
    "eh_mam_start": "EH-MAM, official hard starts (`hard_selection=start`)",
}
SHORT = {"none": "none", "data2vec2": "data2vec 2.0", "eh_mam_window": "EH-MAM\nwindow", "eh_mam_start": "EH-MAM\nstart"}


def mean_std(values: List[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def ranking_accuracy(log: Path) -> Dict[int, float]:
    """``{update: ranking_accuracy}`` from a pretraining log (empty for data2vec 2.0)."""
    if not log.exists():
        return {}
    return {int(r["num_updates"]): float(r["ranking_accuracy"]) for r in logged(log.read_text())
            if "ranking_accuracy" in r}


def draw(path: Path, wers: Dict[str, List[float]], curves: Dict[str, Dict[int, float]]) -> None:
    """Left: test WER per arm (mean, one dot per seed); right: ranking accuracy over pretraining."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, lines) = plt.subplots(1, 2, figsize=(11, 3.8))
    names = list(wers)
    bars.bar(range(len(names)), [statistics.mean(wers[n]) for n in names], color="#9ab")
    for i, name in enumerate(names):
        bars.plot([i] * len(wers[name]), wers[name], "k.")
    bars.set_xticks(range(len(names)), [SHORT[n] for n in names])
    bars.set_ylabel("test WER (%), greedy")
    bars.set_title("CTC on 10 min of labels")
    for arm, curve in curves.items():
        lines.plot(list(curve), list(curve.values()), label=SHORT[arm].replace("\n", ", "))
    lines.axhline(0.5, color="grey", lw=0.8, ls="--")
    lines.set_xlabel("pretraining update")
    lines.set_title("ranking accuracy of the loss predictor")
    if curves:
        lines.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(out: Path) -> None:
    results = {arm: [json.loads(p.read_text()) for p in sorted(out.glob(f"finetune_{arm}_seed*/decode_test/wer.json"))]
               for arm in ARMS}
    if not results["none"]:
        sys.exit(f"{out}: no finetune_none_seed*/decode_test/wer.json; run examples/eh_mam/demo_low_resource.sh first")
    baseline = statistics.mean(r["wer"] for r in results["none"])
    lines = ["| pretraining | test WER (%) | test CER (%) | WER vs no pretraining | seeds |", "|---|---|---|---|---|"]
    for arm, label in ARMS.items():
        runs = results[arm]
        if not runs:
            continue
        wer = [r["wer"] for r in runs]
        relative = "" if arm == "none" else f"{(statistics.mean(wer) - baseline) / baseline:+.1%}"
        lines.append(f"| {label} | {mean_std(wer)} | {mean_std([r['cer'] for r in runs])} | {relative} | {len(runs)} |")

    figure5 = out / "figure5" / "figure5.json"
    if figure5.exists():
        f5 = json.loads(figure5.read_text())
        lines += ["", f"Figure 5 (fine-tuned EH-MAM, hard windows; unmasked test WER {f5['clean_wer']:.1f}%): relative WER "
                  "rise when the frames its loss predictor picks are masked, against as many random frames", "",
                  "| masked fraction | WER rise, predictor-chosen | WER rise, random | CTC loss rise, predictor | CTC loss rise, random |",
                  "|---|---|---|---|---|"]
        for r in f5["rows"]:
            lines.append(f"| {r['fraction']:g} | {r['predictor_wer_rise']:+.1%} | {r['random_wer_rise']:+.1%} "
                         f"| {r['predictor_ctc_rise']:+.1%} | {r['random_ctc_rise']:+.1%} |")

    curves = {arm: ranking_accuracy(out / f"pretrain_{arm}" / "hydra_train.log") for arm in ARMS if arm.startswith("eh_mam")}
    curves = {arm: c for arm, c in curves.items() if c}
    if curves:
        updates = sorted(next(iter(curves.values())))
        marks = updates[:: max(1, len(updates) // 5)] + ([updates[-1]] if len(updates) % 5 != 1 else [])
        lines += ["", "Ranking accuracy of the student's loss predictor over pretraining (0.5 = chance)", "",
                  "| update | " + " | ".join(ARMS[arm] for arm in curves) + " |", "|---|" + "---|" * len(curves)]
        for m in sorted(set(marks)):
            lines.append(f"| {m} | " + " | ".join(f"{c.get(m, float('nan')):.3f}" for c in curves.values()) + " |")
    draw(out / "low_resource.png", {arm: [r["wer"] for r in runs] for arm, runs in results.items() if runs}, curves)
    (out / "low_resource.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/eh_mam/low_resource_report.py <demo_low_resource output directory>")
    main(Path(sys.argv[1]))

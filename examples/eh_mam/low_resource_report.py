"""The table and figure of ``examples/eh_mam/demo_low_resource.sh``: test WER / CER of every arm, Figure 5,
ranking accuracy over pretraining.

    python examples/eh_mam/low_resource_report.py outputs/low_resource
    python examples/eh_mam/low_resource_report.py outputs/low_resource --best-run eh_mam_window 1

Reads ``finetune_<arm>_lr<lr>_seed<s>/decode_{dev,test,test_lm}/wer.json`` (greedy; lexicon + 4-gram LM with
weights tuned on dev), ``pretrain_<arm>/hydra_train.log`` and ``figure5/figure5.json`` under the output
directory. Each arm is reported at its fine-tuning learning rate of lowest mean dev CER (greedy). Writes
``low_resource.md`` and ``low_resource.png`` there and prints the markdown; ``--best-run ARM SEED`` prints the
fine-tuning directory of that arm and seed at its chosen learning rate.
"""

import json
import math
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Tuple

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
DECODERS = {"decode_test": "greedy", "decode_test_lm": "4-gram LM"}
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


def draw(path: Path, wers: Dict[str, Dict[str, List[float]]], curves: Dict[str, Dict[int, float]]) -> None:
    """Left: test WER per arm and decoder (mean, one dot per seed); right: ranking accuracy over pretraining."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, lines) = plt.subplots(1, 2, figsize=(11, 3.8))
    names = list(wers[next(iter(wers))])
    width = 0.8 / len(wers)
    for k, (decoder, per_arm) in enumerate(wers.items()):
        xs = [i + (k - (len(wers) - 1) / 2) * width for i in range(len(names))]
        bars.bar(xs, [statistics.mean(per_arm.get(n, [math.nan])) for n in names], width=width,
                 label=DECODERS[decoder], color=("#9ab", "#d97")[k % 2])
        for x, name in zip(xs, names):
            bars.plot([x] * len(per_arm.get(name, [])), per_arm.get(name, []), "k.")
    bars.set_xticks(range(len(names)), [SHORT[n] for n in names])
    bars.set_ylabel("test WER (%)")
    bars.set_title("CTC on 10 min of labels")
    bars.legend(loc="lower left")
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


def chosen_runs(out: Path, arm: str) -> Tuple[str, List[Path]]:
    """(learning rate, its fine-tuning directories, one per seed): the rate of lowest mean dev CER."""
    by_lr: Dict[str, List[Path]] = {}
    for run in sorted(out.glob(f"finetune_{arm}_lr*_seed*")):
        if (run / "decode_dev" / "wer.json").exists():
            by_lr.setdefault(run.name[len(f"finetune_{arm}_lr"):].rsplit("_seed", 1)[0], []).append(run)
    if not by_lr:
        return "", []

    def dev_cer(lr: str) -> float:
        return statistics.mean(json.loads((r / "decode_dev" / "wer.json").read_text())["cer"] for r in by_lr[lr])
    best = min(by_lr, key=dev_cer)
    return best, by_lr[best]


def main(out: Path) -> None:
    chosen = {arm: chosen_runs(out, arm) for arm in ARMS}
    results = {decoder: {arm: [json.loads((r / decoder / "wer.json").read_text()) for r in runs
                               if (r / decoder / "wer.json").exists()]
                         for arm, (_, runs) in chosen.items()} for decoder in DECODERS}
    if not results["decode_test"]["none"]:
        sys.exit(f"{out}: no finetune_none_lr*_seed*/decode_{{dev,test}}/wer.json; "
                 "run examples/eh_mam/demo_low_resource.sh first")
    decoders = [d for d in DECODERS if results[d]["none"]]
    header = "| pretraining | fine-tuning lr (dev) |"
    for decoder in decoders:
        header += f" test WER (%), {DECODERS[decoder]} | test CER (%), {DECODERS[decoder]} | WER vs no pretraining |"
    lines = [header + " seeds |", "|---|---|" + "---|---|---|" * len(decoders) + "---|"]
    for arm, label in ARMS.items():
        if not results["decode_test"][arm]:
            continue
        row = f"| {label} | {chosen[arm][0]} |"
        for decoder in decoders:
            runs = results[decoder][arm]
            if not runs:
                row += " | | |"
                continue
            wer = [r["wer"] for r in runs]
            baseline = statistics.mean(r["wer"] for r in results[decoder]["none"])
            relative = "" if arm == "none" else f"{(statistics.mean(wer) - baseline) / baseline:+.1%}"
            row += f" {mean_std(wer)} | {mean_std([r['cer'] for r in runs])} | {relative} |"
        lines.append(row + f" {len(results['decode_test'][arm])} |")

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
    wers = {d: {arm: [r["wer"] for r in runs] for arm, runs in results[d].items() if runs} for d in decoders}
    draw(out / "low_resource.png", wers, curves)
    (out / "low_resource.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[2] == "--best-run":
        _, runs = chosen_runs(Path(sys.argv[1]), sys.argv[3])
        seed_runs = [r for r in runs if r.name.endswith(f"_seed{sys.argv[4]}")]
        if not seed_runs:
            sys.exit(f"{sys.argv[1]}: no decoded fine-tuning of {sys.argv[3]} with seed {sys.argv[4]}")
        print(seed_runs[0])
    elif len(sys.argv) == 2:
        main(Path(sys.argv[1]))
    else:
        sys.exit("usage: python examples/eh_mam/low_resource_report.py <demo_low_resource output directory> "
                 "[--best-run ARM SEED]")

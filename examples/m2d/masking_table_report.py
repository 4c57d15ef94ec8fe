"""The masking table of examples/m2d/demo_masking_table.sh, in the form of the DWM paper's Table I.

    python examples/m2d/masking_table_report.py outputs/masking_table

Reads ``linear/<framework>_<masking>_<seed>.<task>.json`` (run/linear_eval.py's JSON line) for every cell that
is there, writes ``table.md`` and ``table.png`` beside them and prints the markdown. A cell is the mean ± std of
every linear-evaluation run of every pretraining of that framework and mask (2 pretrainings x 3 runs, as the
paper's 2 models x 3 runs); "vs. random" is the difference of the means in points, shown beside the paper's
(Table I) for the task each of ours stands for.
"""

import json
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Tuple

TASKS = {  # task folder -> column name (the paper's task it stands for)
    "keywords": "keywords (SPCV2)",
    "speakers": "speaker (VC1)",
    "instrument": "instrument (NSynth)",
    "pitch": "pitch (Surge)",
}
FRAMEWORKS = {"msm_mae": "MSM-MAE", "m2d": "M2D", "m2d_clap": "M2D-CLAP", "eat": "EAT"}
MASKINGS = ("random", "ibm", "dwm")  # then the hint-ratio ablations (dwm-hint0, dwm-gamma4, ...) in name order

# the DWM paper's Table I, "vs. random" in points, for the tasks ours stand for: (framework, masking) -> task -> points
PAPER = {
    ("msm_mae", "ibm"): {"keywords": -0.7, "speakers": -8.3, "instrument": -0.4, "pitch": -0.4},
    ("msm_mae", "dwm"): {"keywords": -0.2, "speakers": -0.9, "instrument": +0.9, "pitch": +0.1},
    ("m2d", "ibm"): {"keywords": -0.2, "speakers": -4.3, "instrument": -0.2, "pitch": +0.4},
    ("m2d", "dwm"): {"keywords": +0.1, "speakers": -0.6, "instrument": -0.3, "pitch": -0.1},
    ("m2d_clap", "ibm"): {"keywords": -0.4, "speakers": -2.9, "instrument": 0.0, "pitch": +0.3},
    ("m2d_clap", "dwm"): {"keywords": -0.1, "speakers": -0.7, "instrument": -1.3, "pitch": +0.8},
}

Accuracies = Dict[Tuple[str, str, str], List[float]]  # (framework, masking, task) -> test accuracies in %


def read_results(out: Path, per_pretraining: bool = False) -> Accuracies:
    """Every run's test accuracy; with ``per_pretraining`` the mean of each pretraining's runs instead, in seed
    order."""
    accuracies: Accuracies = {}
    for path in sorted((out / "linear").glob("*.json"), key=lambda path: int(path.stem.rsplit(".", 1)[0].rsplit("_", 1)[1])):
        run, task = path.stem.rsplit(".", 1)
        framework, masking, _seed = run.rsplit("_", 2)
        result = json.loads(path.read_text().splitlines()[0])
        runs = [100 * r["test_accuracy"] for r in result["runs"]]
        accuracies.setdefault((framework, masking, task), []).extend([statistics.mean(runs)] if per_pretraining else runs)
    return accuracies


def maskings(accuracies: Accuracies, framework: str) -> List[str]:
    found = {key[1] for key in accuracies if key[0] == framework}
    return [m for m in MASKINGS if m in found] + sorted(found - set(MASKINGS))


def markdown(accuracies: Accuracies) -> str:
    frameworks = [f for f in FRAMEWORKS if any(key[0] == f for key in accuracies)]
    tasks = [t for t in TASKS if any(key[2] == t for key in accuracies)]
    lines = ["| framework | masking | " + " | ".join(TASKS[t] for t in tasks) + " | avg. |",
             "|---|---|" + "---|" * (len(tasks) + 1)]
    for framework in frameworks:
        means = {}
        for masking in maskings(accuracies, framework):
            cells, means[masking] = [], {}
            for task in tasks:
                values = accuracies.get((framework, masking, task), [])
                if values:
                    means[masking][task] = statistics.mean(values)
                    cells.append(f"{means[masking][task]:.1f} ± {statistics.pstdev(values):.1f}")
                else:
                    cells.append("")
            average = statistics.mean(means[masking].values()) if len(means[masking]) == len(tasks) else None
            lines.append(f"| {FRAMEWORKS[framework]} | {masking} | " + " | ".join(cells) +
                         f" | {'' if average is None else f'{average:.1f}'} |")
            if masking != "random" and "random" in means:
                deltas = [means[masking][t] - means["random"][t] if t in means[masking] and t in means["random"]
                          else None for t in tasks]
                shown = [d for d in deltas if d is not None]
                lines.append(f"| | vs. random | " + " | ".join("" if d is None else f"{d:+.1f}" for d in deltas) +
                             f" | {f'{statistics.mean(shown):+.1f}' if len(shown) == len(tasks) else ''} |")
                paper = PAPER.get((framework, masking))
                if paper:
                    lines.append("| | paper's vs. random | " + " | ".join(f"{paper[t]:+.1f}" for t in tasks) + " | |")
    return "\n".join(lines)


def pretraining_markdown(means: Accuracies) -> str:
    """Each pretraining's mean over its runs (seed 1 / seed 2 / ...): how far apart two pretrainings of one
    setting land, against the effects of the masks."""
    tasks = [t for t in TASKS if any(key[2] == t for key in means)]
    lines = ["| framework | masking | " + " | ".join(TASKS[t] for t in tasks) + " |", "|---|---|" + "---|" * len(tasks)]
    for framework in [f for f in FRAMEWORKS if any(key[0] == f for key in means)]:
        for masking in maskings(means, framework):
            cells = [" / ".join(f"{m:.1f}" for m in means.get((framework, masking, t), [])) for t in tasks]
            lines.append(f"| {FRAMEWORKS[framework]} | {masking} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def draw(path: Path, accuracies: Accuracies) -> None:
    """One panel per framework: each task's change against random masking, in points, for IBM and DWM; the
    whiskers are the run-to-run spread (the two arms' standard deviations pooled), the size a change needs before
    it means more than another seed would."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frameworks = [f for f in FRAMEWORKS if any(key[0] == f for key in accuracies)]
    tasks = [t for t in TASKS if any(key[2] == t for key in accuracies)]
    fig, axes = plt.subplots(1, len(frameworks), figsize=(5 * len(frameworks), 3.6), squeeze=False, sharey=True)
    for ax, framework in zip(axes[0], frameworks):
        for k, (masking, colour) in enumerate((("ibm", "#d97"), ("dwm", "#59a"))):
            xs = [i + (k - 0.5) * 0.38 for i in range(len(tasks))]
            deltas, spreads = [], []
            for task in tasks:
                base, other = accuracies.get((framework, "random", task)), accuracies.get((framework, masking, task))
                deltas.append(statistics.mean(other) - statistics.mean(base) if base and other else float("nan"))
                spreads.append(((statistics.pvariance(base) + statistics.pvariance(other)) / 2) ** 0.5
                               if base and other else float("nan"))
            ax.bar(xs, deltas, width=0.38, color=colour, label=f"{masking.upper()} vs. random",
                   yerr=spreads, capsize=3, error_kw={"lw": 0.8})
            paper = PAPER.get((framework, masking))
            if paper:
                ax.scatter(xs, [paper[t] for t in tasks], marker="D", s=22, facecolor="white", edgecolor="black", zorder=3,
                           label="the paper's (Table I)" if k == 0 else None)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(tasks)), [TASKS[t].replace(" (", "\n(") for t in tasks])
        ax.set_title(FRAMEWORKS[framework])
    axes[0][0].set_ylabel("test accuracy change (points)\nwhiskers: run-to-run std")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> str:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit(f"usage: {Path(__file__).name} OUT_DIR")
    out = Path(argv[0])
    accuracies = read_results(out)
    if not accuracies:
        sys.exit(f"{out / 'linear'}: no linear-evaluation results yet")
    table = (markdown(accuracies) + "\n\nEach pretraining's mean of its runs, one value per seed in seed order:\n\n"
             + pretraining_markdown(read_results(out, per_pretraining=True)))
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    draw(out / "table.png", accuracies)
    print(table)
    print(f"\nwritten: {out / 'table.md'}, {out / 'table.png'}")
    return table


if __name__ == "__main__":
    main()

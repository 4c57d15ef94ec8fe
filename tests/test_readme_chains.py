"""Each README's CPU command chain runs as written, so that a README cannot drift from the code.

A README marks its chain with an HTML comment ``<!-- test: tiny chain ... -->`` right before a fenced ``bash``
block. The block's text is run by bash, unchanged, from a fresh folder laid out as the repository root (the
repository's folders linked in) with ``demo/manifests`` holding a copy of the test session's demo corpus
manifests. The only change is the size, made in one visible place, :data:`TINY`: bash functions named after
the commands append a few arguments (fewer updates, fewer clips, one linear-evaluation run), which the
commands' own parsers take over the README's values (hydra and argparse keep the last one).
"""

import os
import re
import resource
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import REPO, VENV_BIN

MARKER = re.compile(r"<!-- test: tiny chain[^>]*-->\s*\n```bash\n(.*?)```", re.S)
READMES = ["examples/eh_mam/README.md", "examples/m2d/README.md", "examples/m2d_clap/README.md",
           "examples/eat/README.md", "examples/armhubert/README.md"]

# what is appended to each command of a chain: the sizes of a test, not the README's
TINY = {
    "fairseq-hydra-train": ["optimization.max_update=4"],  # 4: fewer leaves tri_stage's decay phase 0 updates
    "examples/m2d/demo_tasks.py": ["--clips-per-word", "1", "1", "1"],
    "run/linear_eval.py": ["--runs", "1", "--max-epochs", "3"],
}


def prelude() -> str:
    """bash functions that run the real commands with the :data:`TINY` arguments appended."""
    python_cases = "".join(f'    {script}) command python "$@" {" ".join(extra)} ;;\n'
                           for script, extra in TINY.items() if script.endswith(".py"))
    return (f'fairseq-hydra-train() {{ command fairseq-hydra-train "$@" {" ".join(TINY["fairseq-hydra-train"])}; }}\n'
            f'python() {{\n  case "$1" in\n{python_cases}    *) command python "$@" ;;\n  esac\n}}\n')


def chain(readme: str) -> str:
    blocks = MARKER.findall((REPO / readme).read_text(encoding="utf-8"))
    assert len(blocks) == 1, f"{readme}: expected one block marked <!-- test: tiny chain -->, found {len(blocks)}"
    return blocks[0]


def test_every_readme_with_a_cpu_chain_marks_it():
    marked = sorted(str(p.relative_to(REPO)) for p in (REPO / "examples").glob("*/README.md") if MARKER.search(p.read_text()))
    assert marked == sorted(READMES)


@pytest.mark.parametrize("readme", READMES)
def test_readme_chain_runs_as_written(readme, demo_corpus, tmp_path):
    root = tmp_path / "checkout"
    root.mkdir()
    for name in ("maskssl_fairseq", "examples", "run", "manifests"):
        (root / name).symlink_to(REPO / name)
    shutil.copytree(demo_corpus, root / "demo" / "manifests")  # the chains write captions and tasks into demo/
    script = tmp_path / "chain.sh"
    script.write_text("set -euo pipefail\n" + prelude() + chain(readme))
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(["bash", str(script)], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=900)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert proc.returncode == 0, f"{readme}'s chain exited {proc.returncode}:\n{proc.stdout[-6000:]}"
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    print(f"{readme}: chain CPU time {cpu:.1f} s")  # the cost on idle cores, for the report

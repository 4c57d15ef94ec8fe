"""The package as a fairseq user dir: registrations, repeated imports, and a fairseq-free masking library."""

import sys

from helpers import REPO, run_checked

REGISTRATIONS = """
import os
from argparse import Namespace
from fairseq import utils
from fairseq.criterions import CRITERION_REGISTRY
from fairseq.models import MODEL_REGISTRY
from fairseq.tasks import TASK_REGISTRY

utils.import_user_module(Namespace(user_dir="maskssl_fairseq"))  # relative, from the repository root
utils.import_user_module(Namespace(user_dir=os.path.abspath("maskssl_fairseq")))  # and again, absolute
import maskssl_fairseq  # and once more by name
print(sorted(n for n in MODEL_REGISTRY if MODEL_REGISTRY[n].__module__.startswith("maskssl_fairseq")))
print(sorted(n for n in TASK_REGISTRY if TASK_REGISTRY[n].__module__.startswith("maskssl_fairseq")))
print(sorted(n for n in CRITERION_REGISTRY if CRITERION_REGISTRY[n].__module__.startswith("maskssl_fairseq")))
"""


def test_user_dir_registers_every_method_and_imports_twice_harmlessly():
    printed = run_checked([sys.executable, "-c", REGISTRATIONS], cwd=REPO)
    models, tasks, criterions = printed.strip().splitlines()[-3:]
    for name in ("armhubert", "m2d", "msm_mae"):
        assert f"'{name}'" in models
    assert "eh_mam" in models
    assert "'spectrogram_pretraining'" in tasks
    assert "'armhubert_distillation'" in criterions


FAIRSEQ_FREE = """
import importlib.abc, importlib.util, sys

class NoFairseq(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "fairseq" or name.startswith("fairseq."):
            raise ImportError("fairseq is blocked")

sys.meta_path.insert(0, NoFairseq())
directory = sys.argv[1]
spec = importlib.util.spec_from_file_location("masking", directory + "/__init__.py",
                                              submodule_search_locations=[directory])
masking = importlib.util.module_from_spec(spec)
sys.modules["masking"] = masking
spec.loader.exec_module(masking)
import torch
mask = masking.span_mask(3, 50, 0.5, 5, generator=torch.Generator().manual_seed(0))
print(mask.sum(dim=1).tolist())
"""


def test_masking_library_works_without_fairseq():
    printed = run_checked([sys.executable, "-c", FAIRSEQ_FREE, REPO / "maskssl_fairseq" / "masking"])
    assert printed.strip().splitlines()[-1] == "[25, 25, 25]"

"""Loads ``maskssl_fairseq/data/manifests.py`` (and other ``data`` modules) by file path, as ``manifests``.

Importing it through the package would run ``maskssl_fairseq/__init__.py``, which registers the fairseq plugin
(seconds of fairseq imports) and needs the package installed; the manifest tools need neither.
"""

import importlib.util
import sys
from pathlib import Path


def data_module(name: str):
    """``maskssl_fairseq/data/<name>.py`` (fairseq-free), loaded by its path."""
    if f"maskssl_fairseq.data.{name}" in sys.modules:
        return sys.modules[f"maskssl_fairseq.data.{name}"]
    path = Path(__file__).resolve().parents[1] / "maskssl_fairseq" / "data" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_maskssl_fairseq_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(module)
    return module


manifests = data_module("manifests")


def run_tool(main) -> None:
    """Runs a manifest-writing tool's ``main``; bad input ends it with the problems and no manifest written."""
    try:
        main()
    except manifests.ManifestError as error:
        sys.exit(f"{error}\n{Path(sys.argv[0]).name}: no manifests written")

"""Loads ``maskssl_fairseq/data/manifests.py`` by its file path, as ``manifests``.

Importing it through the package would run ``maskssl_fairseq/__init__.py``, which registers the fairseq plugin
(seconds of fairseq imports) and needs the package installed; the manifest tools need neither.
"""

import importlib.util
import sys
from pathlib import Path

_NAME = "maskssl_fairseq.data.manifests"


def _load():
    if _NAME in sys.modules:
        return sys.modules[_NAME]
    path = Path(__file__).resolve().parents[1] / "maskssl_fairseq" / "data" / "manifests.py"
    spec = importlib.util.spec_from_file_location("_maskssl_fairseq_manifests", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(module)
    return module


manifests = _load()


def run_tool(main) -> None:
    """Runs a manifest-writing tool's ``main``; bad input ends it with the problems and no manifest written."""
    try:
        main()
    except manifests.ManifestError as error:
        sys.exit(f"{error}\n{Path(sys.argv[0]).name}: no manifests written")

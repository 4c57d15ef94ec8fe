"""Loads ``maskssl_fairseq/data/manifests.py`` (and other ``data`` modules) by file path, as ``manifests``.

Importing it through the package would run ``maskssl_fairseq/__init__.py``, which registers the fairseq plugin
(seconds of fairseq imports) and needs the package installed; the manifest tools need neither.
"""

import importlib
import sys
import types
from pathlib import Path

# maskssl_fairseq/data as a package of its own, so that its modules' relative imports (captions -> manifests)
# work without the plugin's __init__
PACKAGE = "_maskssl_fairseq_data"


def data_module(name: str):
    """``maskssl_fairseq/data/<name>.py`` (fairseq-free), loaded by its path."""
    if f"maskssl_fairseq.data.{name}" in sys.modules:
        return sys.modules[f"maskssl_fairseq.data.{name}"]
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(Path(__file__).resolve().parents[1] / "maskssl_fairseq" / "data")]
        sys.modules[PACKAGE] = package
    return importlib.import_module(f"{PACKAGE}.{name}")


manifests = data_module("manifests")


def run_tool(main) -> None:
    """Runs a manifest-writing tool's ``main``; bad input ends it with the problems and no manifest written."""
    try:
        main()
    except manifests.ManifestError as error:
        sys.exit(f"{error}\n{Path(sys.argv[0]).name}: no manifests written")

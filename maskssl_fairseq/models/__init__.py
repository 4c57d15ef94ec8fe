"""Imports every module in this folder, so that its fairseq registrations run once the plugin is loaded."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

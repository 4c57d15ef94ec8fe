"""Released checkpoints in, our checkpoints out: converts between an official implementation's layout and ours.

    # a release -> a checkpoint of this plugin (every tool takes it: run/extract_features.py, model.w2v_path,
    # model.pretrained_path, model.init_from, run/linear_eval.py, run/zeroshot.py)
    python run/convert_checkpoint.py --from data2vec2 base_libri.pt data2vec2_base_libri.pt
    python run/convert_checkpoint.py --from armhubert --config armhubert-960.yaml ARMHuBERT-960h.ckpt armhubert.pt

    # a checkpoint of ours -> the official layout, for the official tools
    python run/convert_checkpoint.py --to data2vec2 checkpoint_last.pt data2vec_multi.pt

``--from NAME IN OUT`` imports, ``--to NAME IN OUT`` exports; ``--config`` passes a release's training yaml where
the architecture lives only there (ARMHuBERT), ``--arg KEY=VALUE`` (repeatable; the value read as YAML) passes
a format's own options. OUT is never overwritten without ``--force``. IN is unpickled in full (release files
pickle more than tensors, which torch's weights-only loader refuses): convert only files you trust.

The mappings live beside the models they feed (as timm keeps a ``checkpoint_filter_fn`` in each model file);
this script only dispatches. A converter is ``"module:function"`` in :data:`IMPORTERS` / :data:`EXPORTERS`, with
the contract

    convert(state: dict, *, path: Path, config: Optional[dict], **options) -> dict | (dict, {suffix: text})

``state`` is the input file as loaded (:func:`maskssl_fairseq.checkpoints.load_release`: plain containers and
tensors), ``path`` its location (for formats that keep the architecture in the file or folder name), ``config``
the parsed ``--config`` yaml or None, ``options`` the ``--arg`` pairs; a converter accepts and ignores keywords it
does not use. It returns the checkpoint dict that is saved at OUT (importers build it with
:func:`maskssl_fairseq.checkpoints.plugin_checkpoint`), optionally with extra text files written beside OUT
under the given suffixes (ARMHuBERT's training yaml). It raises ``ValueError`` naming what in the input it
cannot map.
"""

import argparse
import importlib
import sys
from pathlib import Path
from typing import Dict

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# --from NAME: a release layout -> ours
IMPORTERS: Dict[str, str] = {
    "data2vec2": "maskssl_fairseq.models.eh_mam:from_official_data2vec2",
    "eh_mam": "maskssl_fairseq.models.eh_mam:from_official_eh_mam",
    "eat": "maskssl_fairseq.models.eat:from_official",
    "eat_finetuned": "maskssl_fairseq.models.eat:from_official_finetuned",
    "m2d": "maskssl_fairseq.models.m2d:from_official",
    "m2d_clap": "maskssl_fairseq.models.m2d_clap:from_official",
    "msm_mae": "maskssl_fairseq.models.msm_mae:from_official",
    "armhubert": "maskssl_fairseq.models.armhubert:from_official",
}
# --to NAME: ours -> the release layout
EXPORTERS: Dict[str, str] = {
    "data2vec2": "maskssl_fairseq.models.eh_mam:to_official",
    "eh_mam": "maskssl_fairseq.models.eh_mam:to_official",
    "eat": "maskssl_fairseq.models.eat:to_official",
    "m2d": "maskssl_fairseq.models.m2d:to_official",
    "m2d_clap": "maskssl_fairseq.models.m2d_clap:to_official",
    "msm_mae": "maskssl_fairseq.models.msm_mae:to_official",
    "armhubert": "maskssl_fairseq.models.armhubert:to_official",
}


def resolve(target: str, name: str, direction: str):
    """The converter function behind ``"module:function"``; a clear error where it is not there (yet)."""
    module_name, function = target.split(":")
    module = importlib.import_module(module_name)
    converter = getattr(module, function, None)
    if converter is None:
        raise SystemExit(f"{direction} {name}: not available in this version ({target} is not implemented)")
    return converter


def parse_options(pairs) -> Dict[str, object]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--arg {pair!r}: expected KEY=VALUE")
        options[key] = yaml.safe_load(value)
    return options


def convert(direction: str, name: str, source: Path, config: Path = None, options: Dict = None):
    """Loads ``source``, runs the converter and returns ``(checkpoint, {suffix: text})``."""
    from maskssl_fairseq.checkpoints import load_release

    table = IMPORTERS if direction == "--from" else EXPORTERS
    converter = resolve(table[name], name, direction)
    config_dict = yaml.safe_load(config.read_text()) if config is not None else None
    try:
        state = load_release(source)
    except Exception as error:  # noqa: BLE001  (whatever torch's unpickler raises on a file that is no checkpoint)
        raise SystemExit(f"{source}: not a readable checkpoint ({type(error).__name__}: {error})") from None
    try:
        result = converter(state, path=source, config=config_dict, **(options or {}))
    except ValueError as error:
        raise SystemExit(f"{direction} {name}: {error}") from None
    return result if isinstance(result, tuple) else (result, {})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="importers: " + ", ".join(IMPORTERS) + "; exporters: " + ", ".join(EXPORTERS))
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from", dest="import_from", choices=sorted(IMPORTERS), help="IN is a release of NAME")
    direction.add_argument("--to", dest="export_to", choices=sorted(EXPORTERS), help="OUT is in NAME's release layout")
    parser.add_argument("source", type=Path, metavar="IN")
    parser.add_argument("target", type=Path, metavar="OUT")
    parser.add_argument("--config", type=Path, help="the release's training yaml (ARMHuBERT: its architecture)")
    parser.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE", help="a format's own option")
    parser.add_argument("--force", action="store_true", help="overwrite OUT")
    args = parser.parse_args(argv)

    way, name = ("--from", args.import_from) if args.import_from else ("--to", args.export_to)
    if not args.source.is_file():
        raise SystemExit(f"{args.source}: no such file")
    if args.config is not None and not args.config.is_file():
        raise SystemExit(f"--config {args.config}: no such file")
    if args.target.exists() and not args.force:
        raise SystemExit(f"{args.target} exists; pass --force to overwrite it")
    checkpoint, extra = convert(way, name, args.source, args.config, parse_options(args.arg))
    outputs = [args.target] + [args.target.with_suffix(suffix) for suffix in extra]
    for out in outputs[1:]:
        if out.exists() and not args.force:
            raise SystemExit(f"{out} exists; pass --force to overwrite it")
    args.target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, args.target)
    for suffix, text in extra.items():
        args.target.with_suffix(suffix).write_text(text)
    print(f"[convert_checkpoint] {way} {name}: wrote " + ", ".join(str(o) for o in outputs))


if __name__ == "__main__":
    main()

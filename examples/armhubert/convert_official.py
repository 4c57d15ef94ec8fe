"""Converts a released ARMHuBERT / MaskHuBERT checkpoint (PyTorch Lightning) into a fairseq checkpoint of ``armhubert``.

    python examples/armhubert/convert_official.py --checkpoint ARMHuBERT-960h.ckpt \
        --config armhubert-960.yaml --out armhubert_960h_official.pt [--force]

The same as ``python run/convert_checkpoint.py --from armhubert --config armhubert-960.yaml ARMHuBERT-960h.ckpt
armhubert_960h_official.pt``; the mapping is :func:`maskssl_fairseq.models.armhubert.from_official`.
``--config`` is the released training yaml (its ``distiller`` and ``teacher`` sections). The result has
``official_compat=true``, so the reuse layers behave as in the released code (see README.md).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "run"))
from convert_checkpoint import main as convert_main  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="released Lightning checkpoint")
    parser.add_argument("--config", type=Path, required=True, help="released training yaml of that checkpoint")
    parser.add_argument("--out", type=Path, required=True, help="fairseq checkpoint to write")
    parser.add_argument("--force", action="store_true", help="overwrite --out")
    args = parser.parse_args(argv)
    convert_main(["--from", "armhubert", "--config", str(args.config), str(args.checkpoint), str(args.out)]
                 + (["--force"] if args.force else []))


if __name__ == "__main__":
    main()

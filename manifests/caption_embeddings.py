#!/usr/bin/env python
"""Embeds the captions of a manifest once, offline, with a frozen sentence encoder, for M2D-CLAP training.

    python manifests/caption_embeddings.py --data DIR --split NAME --encoder bow
    python manifests/caption_embeddings.py --data DIR --split NAME --encoder /models/gte-base --pooling mean

Reads ``DIR/NAME.tsv`` and ``DIR/NAME.cap`` (one line per clip, captions separated by ``" ||| "``) and writes
``DIR/NAME.capemb.npy``: float16 ``[clips, captions_max, dim]``, zero rows after a clip's last caption (the
layout ``maskssl_fairseq/data/captions.py`` documents). ``--encoder bow`` is a fixed bag-of-words embedding
that needs no download; a Hugging Face model directory needs ``transformers`` (not a project dependency).
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from _shared import data_module, manifests

captions_module = data_module("captions")


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="directory of NAME.tsv and NAME.cap")
    parser.add_argument("--split", required=True, help="manifest name")
    parser.add_argument("--encoder", required=True, help="'bow' or a Hugging Face model directory")
    parser.add_argument("--pooling", choices=["mean", "cls"], default="mean",
                        help="Hugging Face encoders: masked mean of the last hidden states (GTE) or the first token (BERT)")
    parser.add_argument("--bow-dim", type=int, default=768, help="bag-of-words width (default: GTE-base's 768)")
    parser.add_argument("--bow-seed", type=int, default=0, help="seed of the bag-of-words word vectors")
    parser.add_argument("--bow-idf", type=Path, help="a .cap file: weight the bag of words by inverse document "
                        "frequency over its captions (the training split's, for every split and for zero-shot prompts)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing embedding file")
    args = parser.parse_args(argv)

    manifest = args.data / f"{args.split}.tsv"
    out = manifest.with_suffix(captions_module.EMBEDDING_SUFFIX)
    if out.exists() and not args.force:
        sys.exit(f"{out} exists (--force overwrites it)")
    _, entries = manifests.read_manifest(manifest)
    rows = captions_module.read_captions(manifest.with_suffix(captions_module.CAPTION_SUFFIX), len(entries))
    if args.bow_idf is not None and not args.bow_idf.is_file():
        sys.exit(f"--bow-idf {args.bow_idf}: no such caption file")
    encode = captions_module.sentence_encoder(args.encoder, args.pooling, args.bow_dim, args.bow_seed, args.bow_idf)
    flat = encode([caption for captions in rows for caption in captions])
    embeddings = np.zeros((len(rows), max(len(c) for c in rows), flat.shape[1]), dtype=np.float16)
    start = 0
    for clip, captions in enumerate(rows):
        embeddings[clip, :len(captions)] = flat[start:start + len(captions)]
        start += len(captions)
    np.save(out, embeddings)
    print(f"{out}: {embeddings.shape[0]} clips x {embeddings.shape[1]} captions x {embeddings.shape[2]} dims "
          f"({args.encoder})")
    return out


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, manifests.ManifestError) as error:
        sys.exit(str(error))

"""Zero-shot classification and audio<->text retrieval with an M2D-CLAP checkpoint.

    python run/zeroshot.py --checkpoint checkpoint_last.pt --encoder bow --classify keywords/test.tsv
    python run/zeroshot.py --checkpoint checkpoint_last.pt --encoder /models/gte-base --retrieval demo/test.tsv

The caption encoder must be the one the training captions were embedded with (``bow`` with the same
``--bow-dim``, ``--bow-seed`` and ``--bow-idf``, or the same Hugging Face directory and ``--pooling``). Audio embeddings are
the model's ``clap_embedding`` (the clip cut into training crops, the last zero-padded as in training, every patch
token unmasked, through the audio projector);
scores are cosines.

- ``--classify X.tsv`` needs ``X.label`` beside it (one label per line; comma-separated labels with
  ``--multi-label``). Every class gets the prompt ``--template`` (EVAR's default ``"{label} can be heard"``,
  ``_`` read as a space); a clip's class is its best-scoring prompt. Prints accuracy, or mAP with
  ``--multi-label``. The classes are ``labels.txt`` beside the manifest when it exists, else the labels seen.
- ``--retrieval X.tsv`` needs ``X.cap`` (captions separated by ``" ||| "``): every caption is a text query
  for its clip (text->audio), and an audio query is right at rank k when any of its captions is in its top k
  (audio->text). Prints R@1/5/10 both ways.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import List

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's maskssl_fairseq, not an installed one
sys.path.insert(0, str(Path(__file__).resolve().parent))
from linear_eval import load_encoder  # noqa: E402


@torch.inference_mode()
def audio_embeddings(model, paths: List[Path], device: torch.device) -> torch.Tensor:
    from maskssl_fairseq.tasks.spectrogram_pretraining import load_audio

    rows = [model.clap_embedding(load_audio(p, model.cfg.sample_rate, str(p)).to(device).unsqueeze(0))[0] for p in paths]
    return F.normalize(torch.stack(rows).float().cpu(), dim=-1)


@torch.inference_mode()
def text_embeddings(model, encode, texts: List[str], device: torch.device) -> torch.Tensor:
    captions = torch.from_numpy(encode(texts)).to(device)
    return F.normalize(model.caption_features(captions).float().cpu(), dim=-1)


def recall_at(ranks: torch.Tensor, ks=(1, 5, 10)) -> dict:
    """``ranks [N]`` (0 = first) -> ``{"R@k": share of ranks < k}``."""
    return {f"R@{k}": float((ranks < k).double().mean()) for k in ks}


def retrieval_ranks(similarity: torch.Tensor, owner: torch.Tensor):
    """``similarity [clips, captions]`` and each caption's clip ``owner [captions]`` -> (audio->text ranks
    ``[clips]``: captions scored above the clip's best own caption; text->audio ranks ``[captions]``: clips
    scored above the caption's own clip). Ties count in the query's favour."""
    own = similarity.gather(0, owner.unsqueeze(0))[0]
    text_to_audio = (similarity > own.unsqueeze(0)).sum(0)
    best_own = torch.full((similarity.shape[0],), -float("inf")).scatter_reduce(0, owner, own, reduce="amax")
    audio_to_text = (similarity > best_own.unsqueeze(1)).sum(1)
    return audio_to_text, text_to_audio


def classify(model, encode, manifest: Path, template: str, multi_label: bool, device: torch.device) -> dict:
    from maskssl_fairseq.criterions.audio_classification import mean_average_precision
    from maskssl_fairseq.data.manifests import audio_files
    from maskssl_fairseq.tasks.audio_classification import VOCABULARY, read_label_lines

    entries = audio_files(manifest)
    rows = read_label_lines(manifest.with_suffix(".label"), multi_label)
    if len(rows) != len(entries):
        raise ValueError(f"{manifest.with_suffix('.label')}:{min(len(rows), len(entries)) + 1}: {len(rows)} label "
                         f"lines for the {len(entries)} clips of {manifest}")
    vocabulary_file = manifest.parent / VOCABULARY
    classes = (vocabulary_file.read_text(encoding="utf-8").split() if vocabulary_file.is_file()
               else sorted({label for labels in rows for label in labels}))
    index = {label: i for i, label in enumerate(classes)}
    targets = torch.zeros(len(rows), len(classes))
    for number, labels in enumerate(rows, 1):
        for label in labels:
            if label not in index:
                raise ValueError(f"{manifest.with_suffix('.label')}:{number}: label {label!r} not in {vocabulary_file}")
            targets[number - 1, index[label]] = 1.0
    prompts = [template.format(label=label.replace("_", " ")) for label in classes]
    scores = audio_embeddings(model, [p for p, _ in entries], device) @ text_embeddings(model, encode, prompts, device).t()
    result = {"manifest": str(manifest), "classes": len(classes), "clips": len(rows), "template": template}
    if multi_label:
        result["mAP"] = mean_average_precision(scores, targets)
    else:
        result["accuracy"] = float((targets.argmax(1) == scores.argmax(1)).double().mean())
    return result


def retrieve(model, encode, manifest: Path, device: torch.device) -> dict:
    from maskssl_fairseq.data.captions import CAPTION_SUFFIX, read_captions
    from maskssl_fairseq.data.manifests import audio_files

    entries = audio_files(manifest)
    rows = read_captions(manifest.with_suffix(CAPTION_SUFFIX), len(entries))
    owner = torch.tensor([clip for clip, captions in enumerate(rows) for _ in captions])
    similarity = (audio_embeddings(model, [p for p, _ in entries], device)
                  @ text_embeddings(model, encode, [c for captions in rows for c in captions], device).t())
    audio_to_text, text_to_audio = retrieval_ranks(similarity, owner)
    return {"manifest": str(manifest), "clips": len(rows), "captions": len(owner),
            "audio_to_text": recall_at(audio_to_text), "text_to_audio": recall_at(text_to_audio)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="an m2d_clap training checkpoint")
    parser.add_argument("--encoder", required=True, help="'bow' or the Hugging Face directory the captions used")
    parser.add_argument("--pooling", choices=["mean", "cls"], default="mean")
    parser.add_argument("--bow-dim", type=int, help="bag-of-words width (default: the model's caption_embed_dim)")
    parser.add_argument("--bow-seed", type=int, default=0)
    parser.add_argument("--bow-idf", type=Path, help="the .cap file the training captions' IDF weights came from")
    parser.add_argument("--classify", type=Path, help="labeled manifest (X.tsv with X.label) to classify zero-shot")
    parser.add_argument("--template", default="{label} can be heard", help="class prompt, with {label}")
    parser.add_argument("--multi-label", action="store_true", help="comma-separated labels; report mAP")
    parser.add_argument("--retrieval", type=Path, help="captioned manifest (X.tsv with X.cap) for retrieval")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if not args.classify and not args.retrieval:
        parser.error("nothing to do: give --classify and/or --retrieval")
    if "{label}" not in args.template:
        parser.error(f"--template {args.template!r} has no {{label}}")

    from maskssl_fairseq.data.captions import sentence_encoder

    device = torch.device(args.device)
    model = load_encoder(args.checkpoint, random_init=False, device=device)
    if not hasattr(model, "clap_embedding"):
        raise ValueError(f"{args.checkpoint}: a {model.cfg._name} model, not m2d_clap: no audio-text embedding")
    encode = sentence_encoder(args.encoder, args.pooling, args.bow_dim or model.cfg.caption_embed_dim, args.bow_seed,
                              args.bow_idf)
    result = {}
    if args.classify:
        result["classification"] = classify(model, encode, args.classify, args.template, args.multi_label, device)
        metric = "mAP" if args.multi_label else "accuracy"
        print(f"zero-shot {metric}: {100 * result['classification'][metric]:.2f}% "
              f"({result['classification']['classes']} classes, {result['classification']['clips']} clips)")
    if args.retrieval:
        result["retrieval"] = r = retrieve(model, encode, args.retrieval, device)
        for direction in ("audio_to_text", "text_to_audio"):
            print(f"{direction}: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in r[direction].items())
                  + f" ({r['clips']} clips, {r['captions']} captions)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")

"""Captions of a manifest and their offline sentence embeddings, for M2D-CLAP.

For a split ``<name>`` beside ``<name>.tsv``:

- ``<name>.cap``: one line per clip, in manifest order (line ``k`` is the clip on line ``k + 1`` of the tsv),
  several captions of a clip separated by ``" ||| "``;
- ``<name>.capemb.npy``: float16 ``[clips, captions_max, dim]``: row ``j`` of clip ``i`` embeds the ``j``-th
  caption of ``.cap`` line ``i + 1``; a clip with fewer than ``captions_max`` captions has zero rows after
  its last one, never drawn. ``manifests/caption_embeddings.py`` writes it.

Sentence encoders: ``bow``, a fixed bag of words (a seeded Gaussian vector per word, averaged and
L2-normalised: word identity without a download; optionally weighted by each word's inverse document
frequency over the captions of a ``.cap`` file, so that the words every caption shares, "a voice says",
weigh nothing), or a Hugging Face model directory (transformers, an optional dependency imported only when
one is used) with mean or CLS pooling, not normalised (the loss normalises), as the official GTE embeddings.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from .manifests import refuse_bom

CAPTION_SEPARATOR = " ||| "
CAPTION_SUFFIX = ".cap"
EMBEDDING_SUFFIX = ".capemb.npy"
WORD = re.compile(r"[a-z0-9']+")


def read_captions(path: Path, clips: int) -> List[List[str]]:
    """The captions of every clip; a missing file, a line count other than ``clips`` or an empty caption is a
    ``ValueError`` naming ``path:line``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no caption file (one line per clip, captions separated by "
                                f"{CAPTION_SEPARATOR!r})")
    refuse_bom(path)  # else the first clip's first word would be another word
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) != clips:
        raise ValueError(f"{path}:{min(len(lines), clips) + 1}: {len(lines)} caption lines for the {clips} clips "
                         f"of the manifest")
    rows = []
    for number, line in enumerate(lines, 1):
        captions = [caption.strip() for caption in line.split(CAPTION_SEPARATOR.strip())]
        if not all(captions):
            raise ValueError(f"{path}:{number}: empty caption in {line!r}")
        rows.append(captions)
    return rows


class CaptionEmbeddings:
    """The embeddings of one split's captions (memory-mapped), checked against its ``.cap`` file."""

    def __init__(self, caption_file: Path, embedding_file: Path, clips: int):
        self.caption_file, self.embedding_file = caption_file, embedding_file
        self.counts = np.array([len(c) for c in read_captions(caption_file, clips)])
        if not embedding_file.is_file():
            raise FileNotFoundError(f"{embedding_file}: no caption embeddings (write them with "
                                    f"manifests/caption_embeddings.py)")
        try:
            self.embeddings = np.load(embedding_file, mmap_mode="r")
        except (ValueError, OSError) as error:
            raise ValueError(f"{embedding_file}: not a .npy array: {error}") from error
        shape = self.embeddings.shape
        if len(shape) != 3 or shape[0] != clips:
            raise ValueError(f"{embedding_file}: shape {shape}, expected [{clips} clips, captions_max, dim]")
        worst = int(self.counts.argmax())
        if self.counts[worst] > shape[1]:
            raise ValueError(f"{caption_file}:{worst + 1}: {self.counts[worst]} captions, {embedding_file} holds at "
                             f"most {shape[1]} per clip")

    @property
    def dim(self) -> int:
        return self.embeddings.shape[2]

    def draw(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """One of clip ``index``'s caption embeddings ``[dim]`` (float32), uniformly from ``rng``; one holding NaN
        or inf (a float16 overflow of an unnormalised encoder) is an error naming the file, the clip and the caption.
        Checked as drawn: scanning a whole AudioSet-sized file at start-up would read gigabytes."""
        caption = int(rng.integers(self.counts[index]))
        embedding = np.asarray(self.embeddings[index, caption], dtype=np.float32)
        if not np.isfinite(embedding).all():
            raise ValueError(f"{self.embedding_file}: the embedding of caption {caption + 1} of clip {index} "
                             f"({self.caption_file}:{index + 1}) holds NaN or inf; write the embeddings again "
                             "(manifests/caption_embeddings.py)")
        return embedding


def inverse_document_frequencies(caption_file: Path) -> Dict[str, float]:
    """``log((1 + N) / (1 + df))`` of every word of the ``N`` captions of a ``.cap`` file (``df``: the captions
    holding it); ``""`` maps to the weight of a word the file lacks, ``log(1 + N)``."""
    documents = [set(WORD.findall(caption.lower())) for line in caption_file.read_text(encoding="utf-8").splitlines()
                 for caption in line.split(CAPTION_SEPARATOR) if caption.strip()]
    if not documents:
        raise ValueError(f"{caption_file}: no captions to count words in")
    counts: Dict[str, int] = {}
    for words in documents:
        for word in words:
            counts[word] = counts.get(word, 0) + 1
    idf = {word: float(np.log((1 + len(documents)) / (1 + df))) for word, df in counts.items()}
    idf[""] = float(np.log(1 + len(documents)))
    return idf


def bag_of_words_embeddings(captions: List[str], dim: int, seed: int = 0,
                            idf: Optional[Dict[str, float]] = None) -> np.ndarray:
    """``[len(captions), dim]`` float32: per caption the mean of its lower-cased words' vectors, each a
    standard Gaussian seeded by ``seed`` and the word (weighted by ``idf`` when given), L2-normalised."""
    vectors = {}
    rows = np.zeros((len(captions), dim), dtype=np.float32)
    for row, caption in enumerate(captions):
        words = WORD.findall(caption.lower())
        if not words:
            raise ValueError(f"caption {caption!r} has no words")
        for word in words:
            if word not in vectors:
                key = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
                vectors[word] = np.random.default_rng((seed, key)).standard_normal(dim).astype(np.float32)
            rows[row] += vectors[word] * (1.0 if idf is None else idf.get(word, idf[""]))
        rows[row] /= np.linalg.norm(rows[row]) + 1e-12
    return rows


def hf_sentence_embeddings(model_dir: Path, pooling: str, batch_size: int = 32) -> Callable[[List[str]], np.ndarray]:
    """A frozen Hugging Face encoder (``AutoTokenizer`` + ``AutoModel`` from a local directory): captions ->
    float32 ``[n, hidden]``, the attention-masked mean of the last hidden states (GTE) or the first token's
    (BERT's CLS). Truncated at 512 tokens."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()

    @torch.inference_mode()
    def encode(captions: List[str]) -> np.ndarray:
        rows = []
        for start in range(0, len(captions), batch_size):
            batch = tokenizer(captions[start:start + batch_size], padding=True, truncation=True, max_length=512,
                              return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            if pooling == "cls":
                rows.append(hidden[:, 0])
            else:
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                rows.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1))
        return torch.cat(rows).float().numpy()

    return encode


def sentence_encoder(encoder: str, pooling: str = "mean", bow_dim: int = 768, bow_seed: int = 0,
                     bow_idf: Optional[Path] = None) -> Callable[[List[str]], np.ndarray]:
    """``bow`` (IDF-weighted over the captions of ``bow_idf`` when given) or a Hugging Face model directory ->
    a function from captions to ``[n, dim]`` float32."""
    if encoder == "bow":
        idf = inverse_document_frequencies(bow_idf) if bow_idf is not None else None
        return lambda captions: bag_of_words_embeddings(captions, bow_dim, bow_seed, idf)
    if not Path(encoder).is_dir():
        raise FileNotFoundError(f"{encoder}: not 'bow' nor a Hugging Face model directory")
    return hf_sentence_embeddings(Path(encoder), pooling)

"""M2D-CLAP: the contrastive loss and its gathering, the logit scale, caption data and embeddings,
training through the real ``fairseq-hydra-train``, zero-shot scoring."""

import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from helpers import REPO, fairseq_hydra_train, logged, series

CONFIGS = REPO / "examples" / "m2d_clap"
sys.path.insert(0, str(REPO / "manifests"))
sys.path.insert(0, str(REPO / "run"))
sys.path.insert(0, str(CONFIGS))


def direct_clip_loss(audio, text, logit_scale):
    """The symmetric InfoNCE written out term by term, in float64."""
    a = audio.double() / audio.double().norm(dim=1, keepdim=True)
    t = text.double() / text.double().norm(dim=1, keepdim=True)
    scale, n = math.exp(logit_scale), a.shape[0]
    total = 0.0
    for i in range(n):
        row = [scale * float(a[i] @ t[j]) for j in range(n)]
        column = [scale * float(a[j] @ t[i]) for j in range(n)]
        total += math.log(sum(math.exp(x) for x in row)) - row[i]
        total += math.log(sum(math.exp(x) for x in column)) - column[i]
    return total / (2 * n)


def test_clip_loss_equals_a_direct_computation():
    from maskssl_fairseq.modules.clap import LOGIT_SCALE_INIT, clip_loss, gather_with_local_grad

    generator = torch.Generator().manual_seed(0)
    audio, text = torch.randn(6, 16, generator=generator), torch.randn(6, 16, generator=generator)
    for scale in (LOGIT_SCALE_INIT, 0.0, math.log(100)):
        loss = clip_loss(audio, text, torch.tensor(scale))
        assert float(loss) == pytest.approx(direct_clip_loss(audio, text, scale), rel=1e-5)
    assert gather_with_local_grad(audio) is audio  # one process: no gathering


def tiny_model(**overrides):
    from maskssl_fairseq.models.m2d_clap import M2DClapConfig, M2DClapModel

    cfg = M2DClapConfig(sample_rate=16000, hop_length=160, input_frames=208, max_update=100, ema_anneal_end_step=100,
                        encoder_embed_dim=32, encoder_layers=1, encoder_attention_heads=2, predictor_embed_dim=32,
                        predictor_layers=1, predictor_attention_heads=2, caption_embed_dim=32)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    model = M2DClapModel.build_model(cfg)
    model.frontend.set_norm_stats(-7.1, 4.2)
    return model.train()


CLAP_WEIGHT = 0.5  # large enough for the CLAP term to weigh in the encoder's gradient
SPLITS = {"even": (slice(0, 4), slice(4, 8)), "uneven": (slice(0, 5), slice(5, 8))}  # the last batches of an epoch


def clap_batch():
    """8 tone clips and their 48-d caption vectors (48: the model projects them, so text_proj learns too)."""
    generator = torch.Generator().manual_seed(3)
    time = torch.arange(207 * 160) / 16000
    clips = torch.stack([torch.sin(2 * math.pi * f * time) for f in (200, 350, 500, 700, 900, 1500, 2500, 4000)])
    return clips + 0.01 * torch.randn(clips.shape, generator=generator), torch.randn(8, 48, generator=generator)


def official_clap_loss(audio, text, logit_scale):
    """M2D-CLAP's ClipLoss as the official code computes it (m2d-clap.md section 3): both sides L2-normalised,
    on several processes all-gathered with this rank's own rows put back, so that only they carry a gradient;
    logits exp(logit_scale) A T^T over the global batch; the mean of the two directions' cross-entropies."""
    import torch.distributed as dist

    audio, text = F.normalize(audio, dim=-1), F.normalize(text, dim=-1)
    if dist.is_initialized():
        gathered = []
        for side in (audio, text):
            rows = [torch.zeros_like(side) for _ in range(dist.get_world_size())]
            dist.all_gather(rows, side.detach())
            rows[dist.get_rank()] = side
            gathered.append(torch.cat(rows))
        audio, text = gathered
    logits = logit_scale.exp() * audio @ text.t()
    targets = torch.arange(logits.shape[0])
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))


def clap_gradients(rows: slice, official: bool, world: int = 1) -> dict:
    """The gradients of one update on the clips ``rows`` of :func:`clap_batch` on this process, reduced over the
    ``world`` processes as the trainer does: ours as fairseq (gradients and sample sizes summed over the ranks,
    then divided), the official loss as torch's DDP (the ranks' gradients averaged). Every process draws the
    masks the whole batch would give its rows in one process, so that the layouts train on the same masks."""
    import torch.distributed as dist

    torch.manual_seed(0)
    model = tiny_model(clap_weight=CLAP_WEIGHT, caption_embed_dim=48, masking="random")
    clips, captions = clap_batch()
    torch.manual_seed(1)
    torch.rand(rows.start, model.encoder.num_patches)  # the random mask draws a [B, patches] uniform matrix
    if official:
        output, encoded = model.masked_forward(clips[rows])
        clap = official_clap_loss(model.audio_proj(encoded[:, 1:]), model.caption_features(captions[rows]),
                                  model.logit_scale)
        (output["losses"]["m2d"] / output["sample_size"] + CLAP_WEIGHT * clap).backward()
    else:
        output = model(clips[rows], caption_embedding=captions[rows])
        sum(output["losses"].values()).backward()
        clap = output["losses"]["clap"].detach() / output["sample_size"] / CLAP_WEIGHT
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    divisor = torch.tensor(float(world if official else output["sample_size"]))
    if world > 1:
        for grad in grads.values():
            dist.all_reduce(grad)
        if not official:
            dist.all_reduce(divisor)
    return {"clap": float(clap.detach()), **{name: grad / divisor for name, grad in grads.items()}}


def _clap_rank(rank: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    layouts = {f"ours {split}": clap_gradients(shards[rank], official=False, world=2)
               for split, shards in SPLITS.items()}
    layouts["official"] = clap_gradients(SPLITS["even"][rank], official=True, world=2)
    torch.save(layouts, f"{out}.{rank}")
    dist.destroy_process_group()


def test_clap_update_is_the_global_batch_loss_s_on_1_and_2_processes(tmp_path):
    """Ours, on one process and on two (gloo) with an even and an uneven split: every parameter's gradient is
    the official loss's on one process, L_M2D + clap_weight x L_CLAP of the whole batch. The official code on
    two processes gives the projectors (and the encoder's CLAP part) half of it: its ranks' rows get their
    gradient from their own copy of the loss only, and DDP averages the copies."""
    one = {"ours": clap_gradients(slice(0, 8), official=False), "official": clap_gradients(slice(0, 8), official=True)}
    # spawned, not forked: a fork of this multi-threaded process can deadlock in torch's thread pools
    mp.start_processes(_clap_rank, args=(str(tmp_path / "init"), str(tmp_path / "rank")), nprocs=2,
                       start_method="spawn")
    two = [torch.load(tmp_path / f"rank.{rank}") for rank in range(2)]
    reference = one["official"]
    parameters = [name for name in reference if name != "clap"]
    assert {"audio_proj.mlp.0.weight", "text_proj.weight", "logit_scale", "encoder.blocks.0.mlp.fc1.weight"} <= set(
        parameters)

    def same(grads, name, scale=1.0):
        return float((grads[name] - scale * reference[name]).abs().max()) <= 1e-5 * float(reference[name].abs().max())

    assert all(same(one["ours"], name) for name in parameters)
    for rank in range(2):
        for layout in ("ours even", "ours uneven"):
            assert two[rank][layout]["clap"] == pytest.approx(one["ours"]["clap"], rel=1e-6)  # the 8 x 8 matrix
            assert [name for name in parameters if not same(two[rank][layout], name)] == [], (rank, layout)
    official = two[0]["official"]
    for name in ("audio_proj.mlp.0.weight", "audio_proj.mlp.2.bias", "text_proj.weight"):  # CLAP-only parameters
        assert same(official, name, scale=0.5)
    assert same(official, "logit_scale") and not same(official, "encoder.blocks.0.mlp.fc1.weight")


def test_logit_scale_is_learned_and_clamped():
    model = tiny_model()
    assert model.logit_scale.requires_grad and model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    with torch.no_grad():
        model.logit_scale.fill_(7.0)
    model.set_num_updates(1)
    assert model.logit_scale.item() == pytest.approx(math.log(100))
    with torch.no_grad():
        model.logit_scale.fill_(-0.5)
    model.set_num_updates(2)
    assert model.logit_scale.item() == 0.0


@pytest.mark.parametrize("projector", ["mlp", "semantic"])
def test_clap_term_reuses_the_m2d_pass_and_learns(projector):
    torch.manual_seed(0)
    model = tiny_model(audio_projector=projector, clap_weight=1.0)
    encoder_calls = []
    model.encoder.register_forward_hook(lambda *unused: encoder_calls.append(1))
    # tones the audio embedding can tell apart (white-noise clips all look alike), random caption vectors
    time = torch.arange(207 * 160) / 16000
    waveform = torch.stack([torch.sin(2 * math.pi * f * time) for f in (200, 500, 900, 1500, 2500, 4000)])
    waveform = waveform + 0.01 * torch.randn_like(waveform)
    captions = torch.randn(6, 32)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    clap_losses = []
    for step in range(16):
        output = model(waveform, caption_embedding=captions)
        clap_losses.append(output["losses"]["clap"].item() / output["sample_size"])
        optimizer.zero_grad()
        (sum(output["losses"].values()) / output["sample_size"]).backward()
        optimizer.step()
        model.set_num_updates(step + 1)
    assert len(encoder_calls) == 16  # one encoder pass per step: the CLAP embedding is M2D's visible tokens
    assert sum(clap_losses[-3:]) < 0.5 * sum(clap_losses[:3]), clap_losses
    assert sum(clap_losses[-3:]) / 3 < 0.5 * math.log(6), clap_losses  # well below chance: pairs are told apart
    assert output["logit_scale"] == model.logit_scale.detach()
    assert model.clap_embedding(torch.randn(2, 16000 * 3)).shape == (2, 32)  # whole clips, 2 chunks
    with pytest.raises(ValueError, match="caption embeddings are 16-d, model.caption_embed_dim is 32"):
        model(waveform, caption_embedding=torch.randn(6, 16))
    with pytest.raises(ValueError, match="set task.captions=true"):
        model(waveform)


def test_zero_shot_embedding_sees_a_clip_as_the_training_crops_it_holds():
    """A short clip is zero-padded to one crop, a long one cut into crops, the last padded: as the task pads."""
    model = tiny_model().eval()
    crop = 207 * 160  # SpectrogramPretrainingTask's crop_samples for 208 frames

    def tokens(waveform):
        return model.encoder(model.encoder.embed(model.training_spectrogram(waveform.unsqueeze(0))))[0, 1:]

    short, long = torch.randn(16000), torch.randn(2 * crop + 5000)
    padded_short = torch.nn.functional.pad(short, (0, crop - 16000))
    padded_long = torch.nn.functional.pad(long, (0, crop - 5000))
    with torch.no_grad():
        expected = [model.audio_proj(tokens(padded_short).unsqueeze(0)),
                    model.audio_proj(torch.cat([tokens(c) for c in padded_long.split(crop)]).unsqueeze(0))]
        assert torch.allclose(model.clap_embedding(short.unsqueeze(0)), expected[0], atol=1e-5)
        assert torch.allclose(model.clap_embedding(long.unsqueeze(0)), expected[1], atol=1e-5)
        assert torch.allclose(model.clap_embedding(torch.stack([padded_short, padded_short])), expected[0].expand(2, -1),
                              atol=1e-5)


def test_wider_captions_get_a_projection():
    model = tiny_model(caption_embed_dim=48)
    assert model.caption_features(torch.randn(3, 48)).shape == (3, 32)
    assert isinstance(tiny_model().text_proj, torch.nn.Identity)


@pytest.fixture(scope="module")
def captioned(demo_corpus, tmp_path_factory) -> Path:
    """The demo manifests pretrain and dev with two captions per clip and 64-d bag-of-words embeddings."""
    import caption_embeddings
    import demo_captions

    out = tmp_path_factory.mktemp("captioned")
    for split in ("pretrain", "dev"):
        for suffix in (".tsv", ".wrd"):
            shutil.copy(demo_corpus / f"{split}{suffix}", out / f"{split}{suffix}")
    demo_captions.main(["--manifests", str(out), "--splits", "pretrain,dev"])
    for split in ("pretrain", "dev"):
        caption_embeddings.main(["--data", str(out), "--split", split, "--encoder", "bow", "--bow-dim", "64"])
    return out


def test_bag_of_words_embeddings_have_the_task_layout(captioned):
    import caption_embeddings

    from maskssl_fairseq.data.captions import CaptionEmbeddings, bag_of_words_embeddings, read_captions

    clips = len((captioned / "dev.tsv").read_text().splitlines()) - 1
    embeddings = np.load(captioned / "dev.capemb.npy")
    assert embeddings.dtype == np.float16 and embeddings.shape == (clips, 2, 64)
    rows = read_captions(captioned / "dev.cap", clips)
    assert rows[0][0].startswith('a voice says "') and rows[0][1].startswith('someone says "')
    assert np.allclose(embeddings[0], bag_of_words_embeddings(rows[0], 64), atol=1e-3)
    assert np.allclose(np.linalg.norm(embeddings.astype(np.float32), axis=-1), 1.0, atol=1e-3)
    # word identity: the same words in any order and case embed alike, other words do not
    same, shuffled, other = bag_of_words_embeddings(["a dog barks", "Barks A DOG", "a cat sings"], 64)
    assert np.allclose(same, shuffled) and abs(float(same @ other)) < 0.9
    assert CaptionEmbeddings(captioned / "dev.cap", captioned / "dev.capemb.npy", clips).dim == 64
    with pytest.raises(SystemExit):  # never overwrites without --force
        caption_embeddings.main(["--data", str(captioned), "--split", "dev", "--encoder", "bow", "--bow-dim", "64"])


def test_idf_weights_silence_the_words_every_caption_shares(tmp_path):
    from maskssl_fairseq.data.captions import bag_of_words_embeddings, inverse_document_frequencies

    words = ["yes", "no", "up", "down", "left", "right", "stop", "go"]
    caption_file = tmp_path / "train.cap"
    caption_file.write_text("".join(f"someone says the word {w} ||| the word {w}\n" for w in words))
    idf = inverse_document_frequencies(caption_file)
    documents = 2 * len(words)
    assert idf["the"] == idf["word"] == 0.0  # in every caption
    assert idf["someone"] == pytest.approx(np.log((1 + documents) / (1 + len(words))))
    assert idf["yes"] == pytest.approx(np.log((1 + documents) / 3)) and idf[""] == pytest.approx(np.log(1 + documents))
    prompts = ["someone says the word yes", "someone says the word no"]
    plain, weighted = bag_of_words_embeddings(prompts, 128), bag_of_words_embeddings(prompts, 128, idf=idf)
    # unweighted, 4 of 5 words are shared; weighted, the keyword dominates ("someone" and "says" keep a little)
    assert float(plain[0] @ plain[1]) > 0.6 and abs(float(weighted[0] @ weighted[1])) < 0.35
    assert np.allclose(np.linalg.norm(weighted, axis=1), 1.0, atol=1e-5)


def test_hugging_face_encoder_writes_the_task_layout(captioned, tmp_path):
    transformers = pytest.importorskip("transformers")
    import caption_embeddings

    from maskssl_fairseq.data.captions import read_captions

    words = sorted({w for line in (captioned / "dev.cap").read_text().split() for w in [line.strip('"|').lower()] if w})
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    model_dir = tmp_path / "tiny_bert"
    model_dir.mkdir()
    (model_dir / "vocab.txt").write_text("\n".join(vocabulary) + "\n")
    transformers.BertTokenizerFast(vocab=str(model_dir / "vocab.txt")).save_pretrained(model_dir)
    config = transformers.BertConfig(vocab_size=len(vocabulary), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(model_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)  # what the tool loads: the words are known
    assert tokenizer.unk_token_id not in tokenizer("someone says")["input_ids"]
    data = tmp_path / "data"
    data.mkdir()
    for suffix in (".tsv", ".cap"):
        shutil.copy(captioned / f"dev{suffix}", data / f"dev{suffix}")
    caption_embeddings.main(["--data", str(data), "--split", "dev", "--encoder", str(model_dir), "--pooling", "cls"])
    clips = len(read_captions(data / "dev.cap", len((data / "dev.tsv").read_text().splitlines()) - 1))
    embeddings = np.load(data / "dev.capemb.npy")
    assert embeddings.dtype == np.float16 and embeddings.shape == (clips, 2, 32)
    assert not np.allclose(embeddings[:, 0], embeddings[:, 1])  # the two templates differ in their words


def captioned_dataset(data: Path, **overrides):
    from maskssl_fairseq.tasks.spectrogram_pretraining import WaveformCropDataset

    args = dict(sample_rate=16000, crop_samples=207 * 160, seed=3, random_crop=True, shuffle=True, captions=True)
    args.update(overrides)
    return WaveformCropDataset(data / "dev.tsv", **args)


def test_captions_are_drawn_per_step_from_several(captioned, tmp_path):
    data = tmp_path / "three"
    data.mkdir()
    shutil.copy(captioned / "dev.tsv", data / "dev.tsv")
    clips = len((data / "dev.tsv").read_text().splitlines()) - 1
    # three captions a clip, one word each, so that every embedding names its caption
    (data / "dev.cap").write_text("".join(f"word{3 * i} ||| word{3 * i + 1} ||| word{3 * i + 2}\n" for i in range(clips)))
    from maskssl_fairseq.data.captions import bag_of_words_embeddings

    table = bag_of_words_embeddings([f"word{k}" for k in range(3 * clips)], 8).astype(np.float16)
    np.save(data / "dev.capemb.npy", table.reshape(clips, 3, 8))
    dataset = captioned_dataset(data)

    def drawn(epoch: int, index: int) -> int:
        dataset.set_epoch(epoch)
        embedding = dataset[index]["caption_embedding"].numpy()
        return int(np.abs(table.astype(np.float32) - embedding).sum(1).argmin())

    draws = {(epoch, index): drawn(epoch, index) for epoch in range(1, 9) for index in range(3)}
    for (epoch, index), caption in draws.items():
        assert caption // 3 == index  # always one of the clip's own captions
        assert drawn(epoch, index) == caption  # reproducible from (seed, epoch, index): a resume draws the same
    assert len({draws[(epoch, 0)] for epoch in range(1, 9)}) >= 2  # a new draw every epoch
    batch = dataset.collater([dataset[0], dataset[1]])
    assert batch["net_input"]["caption_embedding"].shape == (2, 8)
    assert batch["net_input"]["caption_embedding"].dtype == torch.float32
    # captions do not change the crops
    plain = captioned_dataset(data, captions=False)
    plain.set_epoch(8)
    assert torch.equal(plain[1]["source"], dataset[1]["source"]) and "caption_embedding" not in plain[1]
    validation = captioned_dataset(data, random_crop=False)
    first = validation[0]["caption_embedding"]
    validation.set_epoch(5)
    assert torch.equal(validation[0]["caption_embedding"], first)  # validation draws the same caption every epoch


def test_bad_caption_files_are_named_with_their_line(captioned, tmp_path):
    data = tmp_path / "bad"
    data.mkdir()
    for suffix in (".tsv", ".cap", ".capemb.npy"):
        shutil.copy(captioned / f"dev{suffix}", data / f"dev{suffix}")
    lines = (data / "dev.cap").read_text().splitlines()
    clips = len(lines)

    def error(match: str, exception=ValueError):
        with pytest.raises(exception, match=match) as info:
            captioned_dataset(data)
        assert "\n" not in str(info.value)

    (data / "dev.cap").write_text("\n".join(lines[:-1]) + "\n")
    error(rf"dev.cap:{clips}: {clips - 1} caption lines for the {clips} clips")
    (data / "dev.cap").write_text("\n".join(lines[:2] + ["a dog ||| "] + lines[3:]) + "\n")
    error(r"dev.cap:3: empty caption")
    (data / "dev.cap").write_text("\n".join(lines[:4] + ["a ||| b ||| c"] + lines[5:]) + "\n")
    error(r"dev.cap:5: 3 captions, .*dev.capemb.npy holds at most 2 per clip")
    (data / "dev.cap").write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\n")
    error(r"dev.cap:1: starts with a UTF-8 byte-order mark \(BOM\).*sed -i")
    (data / "dev.cap").write_text("\n".join(lines) + "\n")
    embeddings = np.load(data / "dev.capemb.npy")
    embeddings[3, :] = np.inf  # what float16 makes of an encoder's output beyond 65504
    np.save(data / "dev.capemb.npy", embeddings)
    with pytest.raises(ValueError, match=r"dev.capemb.npy: the embedding of caption [12] of clip 3 \(.*dev.cap:4\) "
                                         r"holds NaN or inf"):
        captioned_dataset(data)[3]
    np.save(data / "dev.capemb.npy", np.zeros((clips + 1, 2, 64), dtype=np.float16))
    error(rf"dev.capemb.npy: shape \({clips + 1}, 2, 64\), expected \[{clips} clips, captions_max, dim\]")
    (data / "dev.capemb.npy").write_bytes(b"not numpy")
    error(r"dev.capemb.npy: not a .npy array")
    (data / "dev.capemb.npy").unlink()
    error(r"dev.capemb.npy: no caption embeddings", FileNotFoundError)
    (data / "dev.cap").unlink()
    error(r"dev.cap: no caption file", FileNotFoundError)


@pytest.fixture(scope="module")
def tiny_run(captioned, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("m2d_clap_tiny")
    log = fairseq_hydra_train(CONFIGS, "tiny", f"task.data={captioned}", "task.norm_sample_size=40",
                              "optimization.max_update=10", run_dir=run_dir)
    return log, run_dir / "checkpoints" / "checkpoint_last.pt"


def test_tiny_config_trains_with_both_loss_terms(tiny_run):
    log, checkpoint = tiny_run
    records = logged(log)
    assert len(records) == 10, log[-3000:]
    m2d, clap, scale = series(log, "loss_m2d"), series(log, "loss_clap"), series(log, "logit_scale")
    assert all(math.isfinite(x) for x in m2d + clap) and len(m2d) == len(clap) == 10
    # the logged total is M2D + 0.01 x CLAP; at 8 clips a batch the CLAP term starts near 0.01 x ln 8
    for record in records:
        assert float(record["loss"]) == pytest.approx(float(record["loss_m2d"]) + float(record["loss_clap"]), abs=2e-3)
    assert all(0.005 < x < 0.05 for x in clap), clap
    assert sum(m2d[-3:]) / 3 < sum(m2d[:3]) / 3, m2d
    assert scale[0] == pytest.approx(math.log(1 / 0.07), abs=1e-3) and all(0 <= s <= math.log(100) for s in scale)
    assert "dev_loss_clap" in logged(log, "dev")[0] and checkpoint.is_file()


def test_zero_shot_classification_and_retrieval_score(tiny_run, captioned, tmp_path, capsys):
    import zeroshot

    _, checkpoint = tiny_run
    words = [line.split()[0].lower() for line in (captioned / "dev.wrd").read_text().splitlines()]
    shutil.copy(captioned / "dev.tsv", tmp_path / "first_word.tsv")
    (tmp_path / "first_word.label").write_text("\n".join(words) + "\n")
    result = zeroshot.main(["--checkpoint", str(checkpoint), "--encoder", "bow", "--classify",
                            str(tmp_path / "first_word.tsv"), "--retrieval", str(captioned / "dev.tsv")])
    classification, retrieval = result["classification"], result["retrieval"]
    assert classification["classes"] == len(set(words)) and 0.0 <= classification["accuracy"] <= 1.0
    for direction in ("audio_to_text", "text_to_audio"):
        recalls = retrieval[direction]
        assert 0.0 <= recalls["R@1"] <= recalls["R@5"] <= recalls["R@10"] <= 1.0
    assert retrieval["captions"] == 2 * retrieval["clips"]
    assert f"zero-shot accuracy: {100 * classification['accuracy']:.2f}%" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        zeroshot.main(["--checkpoint", str(checkpoint), "--encoder", "bow", "--classify", "x.tsv", "--template", "{x}"])


def test_retrieval_ranks():
    from zeroshot import recall_at, retrieval_ranks

    # 3 clips; captions 0, 1 belong to clip 0, caption 2 to clip 1, caption 3 to clip 2
    similarity = torch.tensor([[0.9, 0.1, 0.5, 0.0],
                               [0.2, 0.3, 0.4, 0.95],
                               [0.1, 0.8, 0.2, 0.3]])
    audio_to_text, text_to_audio = retrieval_ranks(similarity, torch.tensor([0, 0, 1, 2]))
    # clip 0: its caption 0 is first; clip 1: caption 3 (0.95) above its own 0.4; clip 2: caption 1 above its 0.3
    assert audio_to_text.tolist() == [0, 1, 1]
    # caption 1 (clip 0 scores 0.1) is beaten by clips 1 and 2; captions 2 and 3 by one clip each
    assert text_to_audio.tolist() == [0, 2, 1, 1]
    assert recall_at(audio_to_text, (1, 2)) == {"R@1": pytest.approx(1 / 3), "R@2": 1.0}
    assert recall_at(text_to_audio, (1, 2)) == {"R@1": 0.25, "R@2": 0.75}


def test_checkpoint_serves_linear_evaluation_and_fine_tuning(tiny_run):
    from linear_eval import load_encoder

    from maskssl_fairseq.models.audio_classifier import load_pretrained
    from maskssl_fairseq.models.m2d_clap import M2DClapModel

    _, checkpoint = tiny_run
    encoder = load_encoder(checkpoint, random_init=False, device=torch.device("cpu"))
    assert encoder.extract_features(torch.randn(1, 16000))["clip"].shape == (1, 5 * 64)
    pretrained, args = load_pretrained(str(checkpoint))  # what spectrogram_classifier builds on
    assert isinstance(pretrained, M2DClapModel) and args["_name"] == "m2d_clap"
    assert torch.equal(pretrained.audio_proj.mlp[0].weight, encoder.audio_proj.mlp[0].weight)


def test_caption_width_must_match_the_model(captioned):
    from omegaconf import OmegaConf

    from maskssl_fairseq.models.m2d_clap import M2DClapConfig
    from maskssl_fairseq.tasks.spectrogram_pretraining import SpectrogramPretrainingConfig, SpectrogramPretrainingTask

    task = SpectrogramPretrainingTask(SpectrogramPretrainingConfig(
        data=str(captioned), captions=True, train_subset="pretrain", seed=1, norm_stats=[-7.1, 4.2]))
    cfg = OmegaConf.structured(tiny_model().cfg)
    cfg._name = "m2d_clap"
    with pytest.raises(ValueError, match=r"pretrain.capemb.npy: 64-d caption embeddings, model.caption_embed_dim is 32$"):
        task.build_model(cfg)
    cfg.caption_embed_dim = 64
    assert task.build_model(cfg).text_proj.in_features == 64


def test_demo_captions_combine_manifests(captioned, tmp_path):
    import demo_captions

    from maskssl_fairseq.data.captions import read_captions
    from maskssl_fairseq.data.manifests import audio_files

    out = tmp_path / "both.tsv"
    demo_captions.main(["--combine", str(out), str(captioned / "pretrain.tsv"), str(captioned / "dev.tsv")])
    sources = audio_files(captioned / "pretrain.tsv") + audio_files(captioned / "dev.tsv")
    assert audio_files(out) == sources
    expected = (captioned / "pretrain.cap").read_text().splitlines() + (captioned / "dev.cap").read_text().splitlines()
    assert (out.with_suffix(".cap")).read_text().splitlines() == expected
    assert len(read_captions(out.with_suffix(".cap"), len(sources))) == len(sources)
    with pytest.raises(SystemExit):
        demo_captions.main(["--combine", str(out), str(captioned / "dev.tsv")])


def test_fairseq_training_clamps_the_logit_scale(captioned, tmp_path):
    log = fairseq_hydra_train(CONFIGS, "tiny", f"task.data={captioned}", "task.norm_sample_size=8",
                              "optimization.max_update=2", "++model.logit_scale_init=5.0", "checkpoint.no_save=true",
                              "dataset.disable_validation=true", run_dir=tmp_path)
    # 5.0 is above log 100: clamped before the first forward, it stays at the bound
    assert series(log, "logit_scale") == [pytest.approx(math.log(100), abs=1e-3)] * 2

"""The paper-scale configs' DDP backends: ``pytorch_ddp`` only where a training step leaves no trainable
parameter without a gradient (``run/unused_params.py``, real fairseq train steps on CPU), ``legacy_ddp`` where a
step can (layerdrop, a frozen fine-tuning encoder or CNN)."""

import sys

import pytest
from omegaconf import OmegaConf

from helpers import PLUGIN_DIR, REPO

sys.path.insert(0, str(REPO / "run"))
sys.path.insert(0, str(REPO / "examples" / "armhubert"))

PAPER_CONFIGS = sorted(path for path in (REPO / "examples").glob("*/*.yaml")
                       if not path.stem.startswith(("tiny", "demo", "finetune_tiny", "finetune_demo")))
SMALL = {  # sizes only; everything else as written
    "m2d": ["task.crop_frames=208", "task.norm_sample_size=20", "dataset.batch_size=4", "model.encoder_embed_dim=32",
            "model.encoder_layers=1", "model.encoder_attention_heads=2", "model.predictor_embed_dim=32",
            "model.predictor_layers=1", "model.predictor_attention_heads=2"],
    "eat": ["task.crop_frames=256", "task.crop_samples=40000", "dataset.batch_size=2", "model.input_frames=256",
            "model.encoder_embed_dim=32", "model.encoder_layers=2", "model.encoder_attention_heads=2",
            "model.decoder_dim=32", "model.decoder_layers=1", "model.decoder_groups=16", "model.average_top_k_layers=2"],
    "armhubert": ["dataset.max_tokens=160000", "++task.max_sample_size=48000", "model.teacher_embed_dim=64",
                  "model.encoder_layers=2", "model.encoder_embed_dim=48", "model.encoder_ffn_embed_dim=96",
                  "model.encoder_attention_heads=4", 'model.reuse_attention="[False, True]"',
                  'model.conv_feature_layers="[(16, 10, 5)] + [(32, 3, 2)] * 4 + [(48, 2, 2)] * 2"'],
}


def test_legacy_ddp_only_where_a_step_can_leave_parameters_without_gradients():
    assert len(PAPER_CONFIGS) == 26
    for path in PAPER_CONFIGS:
        config = OmegaConf.load(path)
        skips = (config.model.get("layerdrop", 0) > 0 or config.model.get("freeze_finetune_updates", 0) > 0
                 or config.model.get("feature_grad_mult", 1) == 0)
        backend = config.distributed_training.ddp_backend
        assert backend == ("legacy_ddp" if skips else "pytorch_ddp"), path
        assert config.distributed_training.distributed_world_size == 8, path


@pytest.mark.parametrize("method, config", [("m2d", "m2d_dwm"), ("eat", "eat_base_as2m"), ("armhubert", "armhubert")])
def test_pytorch_ddp_configs_use_every_parameter_at_the_first_and_last_update(demo_corpus, tmp_path, method, config):
    import unused_params

    overrides = [f"common.user_dir={PLUGIN_DIR}", f"task.data={demo_corpus}", "dataset.train_subset=pretrain",
                 *SMALL[method]]
    if method == "armhubert":
        import make_random_teacher

        make_random_teacher.main(["--kind", "hubert", "--out", str(tmp_path / "teacher.pt"), "--layers", "2",
                                  "--dim", "64", "--ffn", "64", "--heads", "2", "--conv-dim", "16", "--conv-pos", "16",
                                  "--conv-pos-groups", "4"])
        overrides.append(f"model.teacher_path={tmp_path / 'teacher.pt'}")
    cfg = unused_params.compose(str(REPO / "examples" / method), config, overrides, str(tmp_path / "checkpoints"))
    assert cfg.distributed_training.ddp_backend == "pytorch_ddp"
    found = unused_params.unused_parameters(cfg, [0, -1])
    assert found == {0: [], cfg.optimization.max_update - 1: []}


def test_layerdrop_leaves_whole_blocks_without_gradients(demo_corpus, tmp_path):
    """Why EH-MAM keeps legacy_ddp: a dropped block is not in the step's graph at all."""
    import unused_params

    cfg = unused_params.compose(str(REPO / "examples" / "eh_mam"), "base_librispeech", [
        f"common.user_dir={PLUGIN_DIR}", f"task.data={demo_corpus}", "dataset.train_subset=pretrain",
        "dataset.max_tokens=48000", "task.max_sample_size=24000", "model.embed_dim=32", "model.num_heads=2",
        "model.depth=2", "model.prenet_depth=0", "model.average_top_k_layers=2", "model.layerdrop=1.0",
        "model.feature_encoder_spec='[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2'", "model.conv_pos_depth=1",
        "model.conv_pos_width=16", "model.conv_pos_groups=4", "model.decoder_dim=32", "model.decoder_groups=4",
        "model.decoder_layers=1", "model.clone_batch=2"], str(tmp_path / "checkpoints"))
    unused = unused_params.unused_parameters(cfg, [0])[0]
    blocks = {name.split(".")[2] for name in unused if name.startswith("encoder.blocks.")}
    assert blocks == {"0", "1"}, unused

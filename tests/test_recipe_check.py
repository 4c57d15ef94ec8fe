"""``run/recipe_check.py``: every paper-scale recipe is covered with size overrides only, and a selection of
them (one per model, precision and optimizer wrapper) trains as written through fairseq's hydra entry."""

import re
import sys

import pytest

from helpers import REPO

sys.path.insert(0, str(REPO / "run"))
import recipe_check  # noqa: E402

# what a size override may touch: widths, depths, batch, crop, the number of updates and warm-ups, data paths
SIZE_OVERRIDE = re.compile(
    r"\+\+(model\.(\w*(dim|layers|heads|depth|groups|width|frames|spec|top_k_layers|feature_layers|conv_pos)\w*"
    r"|reuse_attention|freeze_finetune_updates|teacher_path|pretrained_path|w2v_path)"
    r"|task\.(crop_frames|crop_samples|norm_sample_size|max_sample_size|min_sample_size)"
    r"|dataset\.(batch_size|max_tokens)|optimization\.max_update"
    r"|lr_scheduler\.(warmup_updates|total_num_update)|optimizer\.groups\.\w+\.lr_scheduler\.warmup_updates)=")

# amp (MSM-MAE: the most precision-sensitive loss) and fp16 with the composite optimizer, fine-tuning with layer-decay groups, amp with Adam, fp16 with fairseq's
# flattened master copy (the others repeat these paths with other values); the fine-tuning ones start from the EAT
# pretraining run and from a tiny fairseq wav2vec 2.0
SELECTION = "m2d/msm_mae_dwm,eat/eat_base_as2m,eat/finetune_as20k,armhubert/armwavlm_s.yaml,finetune/base_10m"


class Stub:
    checkpoints = {"eat": "eat.pt", "data2vec_multi_eh_mam": "eh_mam.pt", "wav2vec2": "wav2vec2.pt"}

    def teacher(self, kind):
        return f"{kind}.pt"


def test_every_paper_recipe_has_size_overrides_only():
    names = {str(p.relative_to(recipe_check.EXAMPLES).with_suffix("")) for p in recipe_check.recipes()}
    assert {"m2d/m2d_dwm", "m2d/msm_mae_random", "m2d_clap/m2d_clap_2024", "eat/eat_large_as2m", "eat/finetune_spcv2",
            "armhubert/maskhubert_100h", "eh_mam/base_librispeech", "eh_mam/finetune_1h", "finetune/base_10m"} <= names
    assert len(names) >= 26 and not any("tiny" in n or "demo" in n for n in names)
    for path in recipe_check.recipes():
        overrides = recipe_check.size_overrides(recipe_check.read_yaml(path), Stub(), updates=2)
        assert all(SIZE_OVERRIDE.match(o) for o in overrides), [o for o in overrides if not SIZE_OVERRIDE.match(o)]


def test_recipes_train_as_written(demo_corpus, capsys):
    results = recipe_check.main(["--data", str(demo_corpus), "--only", SELECTION])
    printed = capsys.readouterr().out
    by_name = {r["recipe"]: r for r in results}
    assert set(by_name) == set(SELECTION.replace(".yaml", "").split(","))
    for result in results:
        assert result["trains"] and result["bf16_ok"], result
        assert f"{result['recipe']:<28}" in printed
    assert by_name["m2d/msm_mae_dwm"]["optimizer"] == "AMPOptimizer + FairseqCompositeOptimizer"
    assert by_name["eat/eat_base_as2m"]["optimizer"] == "FP16Optimizer + FairseqCompositeOptimizer"
    assert by_name["eat/eat_base_as2m"]["loss_scale"] < 128  # fp16's dynamic scale was used (and lowered)
    assert by_name["armhubert/armwavlm_s"]["optimizer"] == "AMPOptimizer + FairseqAdam"
    assert by_name["finetune/base_10m"]["optimizer"] == "FP16Optimizer + FairseqAdam"
    assert f"{len(results)} of {len(results)} recipes pass" in printed


def test_a_recipe_without_size_overrides_is_named(tmp_path):
    cfg = {"model": {"_name": "hubert"}, "task": {"_name": "hubert_pretraining"}}
    with pytest.raises(KeyError, match="no size overrides for model 'hubert'"):
        recipe_check.size_overrides(cfg, Stub(), updates=2)

"""The s3prl upstream (maskssl_fairseq.s3prl_upstream) through s3prl's own Featurizer, the weighted layer sum every
SUPERB downstream task uses, for a tiny checkpoint of every model."""

import pytest
import torch

from maskssl_fairseq.s3prl_upstream import UpstreamExpert  # installs the torchaudio stubs first
from s3prl.upstream.interfaces import Featurizer  # noqa: E402
from tiny_checkpoints import SPEECH, TINY


@pytest.mark.parametrize("kind", TINY)
def test_s3prl_featurizer_takes_the_weighted_sum_of_every_layer(tiny_checkpoints, kind):
    upstream = UpstreamExpert(str(tiny_checkpoints[kind]), model_config=None, refresh=False)  # as s3prl's runner
    assert upstream.get_downsample_rates("hidden_states") == (320 if kind in SPEECH else 2560)
    featurizer = Featurizer(upstream, feature_selection="hidden_states", upstream_device="cpu")
    generator = torch.Generator().manual_seed(0)
    wavs = [torch.randn(n, generator=generator) * 0.1 for n in (16000, 27000)]  # unpadded, as s3prl gives them
    with torch.no_grad():
        output = upstream(wavs)
        features = featurizer(wavs, output)
    hidden = output["hidden_states"]
    assert featurizer.layer_num == len(hidden) == 3 and output["last_hidden_state"] is hidden[-1]
    assert len({h.shape for h in hidden}) == 1  # one shape, for the weighted sum
    stacked = torch.stack(hidden)  # [layers, B, T, D]; untrained weights: the plain mean of the layers
    for row, (wav, feature) in enumerate(zip(wavs, features)):
        frames = round(len(wav) / featurizer.downsample_rate)  # s3prl's own length rule
        assert abs(feature.shape[0] - frames) <= 1 and feature.shape[1] == featurizer.output_dim
        torch.testing.assert_close(feature, stacked[:, row, :feature.shape[0]].mean(0), rtol=0, atol=1e-6)
    alone = upstream(wavs[:1])["hidden_states"]  # a padded batch gives each clip what it gives alone
    for single, batched in zip(alone, hidden):
        torch.testing.assert_close(batched[0, :single.shape[1]], single[0], rtol=0, atol=1e-5)

"""Draws a log-mel spectrogram with one draw of the random, inverse-block and DWM masks over it, and the
DWM hint-ratio schedule (like Fig. 1 and Fig. 2 of the DWM paper).

    python run/visualize_masks.py --audio speech.flac --out masks.png [--mask-ratio 0.7] [--seed 0]

The audio is resampled to 16 kHz and its first 6.08 s (608 frames, M2D's training width; shorter clips are
zero-padded) are drawn; masked 16x16 patches are greyed out. DWM is drawn at ``--hint-ratio`` (default 0,
pure dispersion weighting, where its effect is clearest). The spectrogram is standardised with M2D's
default statistics (mean -7.1, std 4.2).
"""

import argparse
import sys
from pathlib import Path

import torch

M2D_DEFAULT_STATS = (-7.1, 4.2)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audio", type=Path, required=True, help="any audio file libsndfile reads")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--mask-ratio", type=float, default=0.7, help="M2D: 0.7")
    parser.add_argument("--hint-ratio", type=float, default=0.0, help="DWM hint ratio for the drawing")
    parser.add_argument("--frames", type=int, default=608, help="spectrogram frames drawn (a multiple of 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="overwrite --out")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.force:
        parser.error(f"{args.out} exists; pass --force to overwrite it")
    if args.frames % 16 or args.frames < 16:
        parser.error(f"--frames must be a positive multiple of 16, got {args.frames}")

    import logging

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # fairseq's import turns the root logger to DEBUG
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from maskssl_fairseq.masking import dispersion_weighted_mask, hint_ratio, inverse_block_mask, random_mask
    from maskssl_fairseq.modules.log_mel import LogMelSpectrogram
    from maskssl_fairseq.modules.spectrogram_vit import patchify
    from maskssl_fairseq.tasks.spectrogram_pretraining import load_audio

    frontend = LogMelSpectrogram()
    frontend.set_norm_stats(*M2D_DEFAULT_STATS)
    samples = (args.frames - 1) * frontend.hop_length
    waveform = load_audio(args.audio, 16000, str(args.audio), samples)
    waveform = torch.nn.functional.pad(waveform, (0, samples - waveform.shape[0]))
    spectrogram = frontend(waveform.unsqueeze(0))[..., : args.frames].unsqueeze(1)  # [1, 1, 80, frames]
    grid = (spectrogram.shape[2] // 16, spectrogram.shape[3] // 16)

    generator = torch.Generator().manual_seed(args.seed)
    masks = {
        f"random masking ({args.mask_ratio:g})": random_mask(1, grid[0] * grid[1], args.mask_ratio, generator=generator),
        "inverse block masking (5x5 blocks)": inverse_block_mask(1, grid, args.mask_ratio, generator=generator),
        f"dispersion-weighted masking (hint ratio {args.hint_ratio:g})": dispersion_weighted_mask(
            patchify(spectrogram, 16), args.mask_ratio, args.hint_ratio, generator=generator),
    }

    image = spectrogram[0, 0].numpy()
    figure, axes = plt.subplots(5, 1, figsize=(12, 13), gridspec_kw={"height_ratios": [1, 1, 1, 1, 1.2]})
    panels = [("log-mel spectrogram", None)] + list(masks.items())
    for axis, (title, mask) in zip(axes, panels):
        axis.imshow(image, origin="lower", aspect="auto", cmap="magma", interpolation="nearest")
        if mask is not None:
            masked = mask.view(*grid).float().repeat_interleave(16, 0).repeat_interleave(16, 1)
            overlay = torch.full((*masked.shape, 4), 0.8)  # light grey over the masked patches
            overlay[..., 3] = 0.85 * masked
            axis.imshow(overlay.numpy(), origin="lower", aspect="auto", interpolation="nearest")
        axis.set_title(title)
        axis.set_ylabel("mel bin")
    axes[3].set_xlabel("frame (10 ms)")

    progress = torch.linspace(0, 1, 101)
    for gamma in (1, 2, 4, 8):
        axes[4].plot(progress, [hint_ratio(float(p), gamma) for p in progress], linewidth=2.5 if gamma == 2 else 1,
                     label=f"gamma = {gamma}" + (" (paper)" if gamma == 2 else ""))
    axes[4].set_title("DWM hint ratio schedule 1 - progress^gamma (1 = random masking, 0 = pure DWM)")
    axes[4].set_xlabel("training progress")
    axes[4].set_ylabel("hint ratio")
    axes[4].legend()
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, RuntimeError) as error:
        sys.exit(f"error: {error}")

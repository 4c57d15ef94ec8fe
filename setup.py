from setuptools import find_packages, setup

setup(
    name="maskssl_fairseq",
    version="0.1.0",
    description="Masked self-supervised speech and audio models (EH-MAM, M2D with DWM, ARMHuBERT) as a fairseq plugin",
    packages=find_packages(include=["maskssl_fairseq", "maskssl_fairseq.*"]),
    python_requires=">=3.10",
    install_requires=[
        # fairseq main with the Python 3.11+ fixes; pins hydra-core 1.3.2 and omegaconf 2.3.0
        "fairseq-fixed==0.12.3.1",
        "torch",
        "torchaudio",
        "timm",
        "soundfile",
        "sentencepiece",
        "numpy",
        "matplotlib",
        "flashlight-text",
        "editdistance",  # WER in fairseq's ctc criterion and run/decode.py
    ],
    # s3prl: tests/test_s3prl_upstream.py runs our upstream through s3prl's own Featurizer (0.4.18 imports on
    # torchaudio 2.11 with the stubs of maskssl_fairseq/s3prl_compat.py; it leaves torch and torchaudio alone)
    extras_require={"test": ["pytest", "s3prl==0.4.18"]},
)

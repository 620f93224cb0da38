"""Package `toolkit`: a multilingual wav2vec 2.0 / XLSR speech recognition toolkit.

The pinned stack lives in requirements.txt and is installed by local/install.sh;
install_requires only names what the package cannot import without.
"""
from setuptools import find_packages, setup

setup(
    name="xlsr-toolkit",
    version="0.1.0",
    description="wav2vec 2.0 / XLSR pretraining, CTC fine-tuning, WFST decoding and scoring",
    python_requires=">=3.10",
    packages=find_packages(include=["toolkit", "toolkit.*"]),
    install_requires=["torch", "torchaudio", "numpy", "pyyaml", "lhotse", "tqdm"],
    extras_require={"k2": ["k2"]},
    entry_points={"console_scripts": ["toolkit=toolkit.cli:main"]},
)

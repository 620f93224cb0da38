"""A multilingual wav2vec 2.0 / XLSR speech recognition toolkit.

Subpackages: model (the one model core), data, text, lm, train, decode, score.
Recipes reach them only through the `toolkit` command line (toolkit/cli.py).
"""
__version__ = "0.1.0"

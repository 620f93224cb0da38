"""Text: per-language normalisation, character and SentencePiece vocabularies, lang dirs.

`normalize_text` is imported eagerly (cheap, used by data preparation); the tokenizer is
loaded on first use so `import toolkit.text` does not pull in sentencepiece.
"""
from toolkit.text.normalize import normalize_text

__all__ = ["normalize_text", "Tokenizer"]


def __getattr__(name: str):
    if name == "Tokenizer":
        from toolkit.text.tokenizer import Tokenizer

        return Tokenizer
    raise AttributeError(f"module 'toolkit.text' has no attribute {name!r}")

"""Hand-made lang dirs, ARPA LMs and CTC log-probs for the graph and decoder tests.

Nothing here but `flat_model_lang` comes from the toolkit's own text or LM code, so graph and
decoder tests do not depend on it: the files are written exactly as icefall's formats and the ARPA
standard say. `flat_model_lang` needs a 4-gram too large to write by hand and estimates one with the
toolkit's Kneser-Ney (what its tests check is the size of the search, not the LM).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_lang(d: Path, tokens: list[str], lexicon: list[tuple[str, list[str]]],
               extra_words: tuple[str, ...] = ()) -> Path:
    """tokens.txt (given order), words.txt (<eps>, sorted words, #0, <s>, </s>), lexicon.txt."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "tokens.txt").write_text("".join(f"{t} {i}\n" for i, t in enumerate(tokens)), encoding="utf-8")
    words = sorted({w for w, _ in lexicon} | set(extra_words))
    table = ["<eps>", *words, "#0", "<s>", "</s>"]
    (d / "words.txt").write_text("".join(f"{w} {i}\n" for i, w in enumerate(table)), encoding="utf-8")
    (d / "lexicon.txt").write_text("".join(f"{w} {' '.join(s)}\n" for w, s in lexicon), encoding="utf-8")
    return d


def char_lang(d: Path, words: list[str]) -> Path:
    """Character lang dir: <blk>, |, the letters, <unk>; each spelling ends with |."""
    letters = sorted({c for w in words for c in w})
    return write_lang(d, ["<blk>", "|", *letters, "<unk>"], [(w, [*w, "|"]) for w in words])


# Four words over the letters a, b, c: "cob" is the more frequent word alone, but "cab" is what
# follows "ab", so only the LM can pick "ab cab" when the acoustics leave a/o ambiguous.
FOUR_WORDS = ["ab", "ba", "cab", "cob"]


def four_word_lang(d: Path, cab_cob_backoff: float = -0.50) -> Path:
    """`char_lang` of FOUR_WORDS plus its bigram `lm.arpa` (hand-written log10 values)."""
    char_lang(d, FOUR_WORDS)
    write_arpa(d / "lm.arpa",
               {"<s>": (-99.0, -0.30), "</s>": (-0.80, None), "ab": (-0.70, -0.20), "ba": (-0.90, -0.20),
                "cab": (-1.50, cab_cob_backoff), "cob": (-0.60, cab_cob_backoff)},
               {("<s>", "ab"): -0.10, ("ab", "cab"): -0.05, ("ab", "ba"): -0.40, ("ba", "</s>"): -0.10,
                ("cab", "</s>"): -0.05, ("cob", "</s>"): -0.30})
    return d


def write_arpa(path: Path, unigrams: dict[str, tuple[float, float | None]],
               bigrams: dict[tuple[str, str], float] | None = None) -> Path:
    """An ARPA file from log10 probabilities (and back-off weights) given by hand."""
    bigrams = bigrams or {}
    lines = ["", "\\data\\", f"ngram 1={len(unigrams)}"]
    if bigrams:
        lines.append(f"ngram 2={len(bigrams)}")
    lines += ["", "\\1-grams:"]
    for w, (p, bow) in unigrams.items():
        # back-off weights exist only below the highest order
        has_bow = bow is not None and bigrams
        lines.append(f"{p:.4f}\t{w}" + (f"\t{bow:.4f}" if has_bow else ""))
    if bigrams:
        lines += ["", "\\2-grams:"]
        lines += [f"{p:.4f}\t{a} {b}" for (a, b), p in bigrams.items()]
    lines += ["", "\\end\\", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def ctc_frames(token_ids: list[int], vocab_size: int, frames_per_token: int = 2, peak: float = 6.0,
               noise: float = 0.5, seed: int = 0, ambiguous: dict[int, list[int]] | None = None) -> np.ndarray:
    """(T, V) log-probs whose best path spells ``token_ids`` (blank between tokens, blank at both ends).

    ``ambiguous`` maps a position in ``token_ids`` to alternative token ids that get the same
    (plus a hair more) score on that token's frames, so acoustics alone cannot decide.
    """
    rng = np.random.default_rng(seed)
    labels: list[tuple[int, list[int]]] = [(0, [])]
    for pos, t in enumerate(token_ids):
        alts = (ambiguous or {}).get(pos, [])
        labels += [(t, alts)] * frames_per_token + [(0, [])]
    logits = rng.normal(0.0, noise, size=(len(labels), vocab_size)).astype(np.float32)
    for f, (t, alts) in enumerate(labels):
        logits[f, t] += peak
        for a in alts:
            logits[f, a] = logits[f, t] + 0.01  # the wrong spelling wins greedily, barely
    logits -= logits.max(axis=1, keepdims=True)
    return (logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))).astype(np.float32)


def spell_ids(lang_dir: Path, sentence: str) -> list[int]:
    """Token ids of a sentence through the lang dir's own lexicon (first spelling of each word)."""
    tokens = {}
    for line in (lang_dir / "tokens.txt").read_text(encoding="utf-8").splitlines():
        s, i = line.split()
        tokens[s] = int(i)
    lex = {}
    for line in (lang_dir / "lexicon.txt").read_text(encoding="utf-8").splitlines():
        w, *toks = line.split()
        lex.setdefault(w, toks)
    return [tokens[t] for w in sentence.split() for t in lex[w]]


def flat_model_lang(d: Path):
    """A 59-word character lang dir whose HLG carries a bigram and whose rescoring G a 4-gram (both
    from random text), and the (T, V) log-probs of a barely trained model: near-uniform posteriors,
    whose lattice holds thousands of arcs per frame."""
    from toolkit.lm.arpa import write_arpa
    from toolkit.lm.graph import Lang, compile_graphs, rescore_grammar
    from toolkit.lm.kneser_ney import train_kneser_ney

    rng = np.random.default_rng(3)
    words = sorted({"".join(rng.choice(list("abcdefgh"), size=rng.integers(2, 5))) for _ in range(60)})
    char_lang(d, words)
    model, _ = train_kneser_ney([" ".join(rng.choice(words, size=rng.integers(3, 9))) for _ in range(400)], order=4)
    write_arpa(model, d / "lm4.arpa")
    compile_graphs(d, d / "lm4.arpa", order=2)
    rescore_grammar(d, d / "lm4.arpa")
    lg = Lang.load(d)
    lp = rng.normal(0.0, 0.7, size=(60, lg.num_tokens)).astype(np.float32)
    return lg, lp - np.log(np.exp(lp).sum(axis=1, keepdims=True))

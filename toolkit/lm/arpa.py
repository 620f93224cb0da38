"""ARPA back-off n-gram models: reader, writer and a scorer with back-off.

An ARPA file holds, for every order k, entries `log10 p(w | h)  h w  [log10 bow(h w)]`.
The probability of a word w after history h is found by backing off:

    p(w | h) = p*(w | h)                 if the n-gram `h w` is listed,
             = bow(h) * p(w | h[1:])     otherwise (bow(h) = 1 when h itself is not listed).

`ArpaModel.logprob` and `ArpaModel.score` implement exactly that, so they agree with KenLM's
`kenlm.Model.score` on the same file (tests/test_lm.py checks it). External ARPA files
(e.g. LibriSpeech's 3-gram) are accepted as they are; `read_arpa` and `validate_arpa`
check the header and the sections and name the file and line of the first corruption, and
refuse an n-gram listed twice.
"""
from __future__ import annotations

import gzip
import io
import math
import os
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable, Iterator, Sequence

from toolkit.utils import ToolkitError, atomic_path

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
Ngram = tuple[str, ...]


@dataclass
class ArpaModel:
    """A back-off n-gram model held in memory.

    `ngrams[k - 1]` maps the k-gram (a tuple of words) to `(log10 prob, log10 backoff)`;
    the back-off is 0.0 when the file gives none (ARPA's convention: bow = 1).
    """

    ngrams: list[dict[Ngram, tuple[float, float]]] = field(default_factory=list)

    @property
    def order(self) -> int:
        return len(self.ngrams)

    @property
    def vocab(self) -> list[str]:
        """The unigram words, in file order (includes <s>, </s> and usually <unk>)."""
        return [w[0] for w in self.ngrams[0]] if self.ngrams else []

    def logprob(self, word: str, history: Sequence[str]) -> float:
        """log10 p(word | history) with back-off; out-of-vocabulary words score as <unk>."""
        unigrams = self.ngrams[0]
        if (word,) not in unigrams:
            word = UNK
            if (UNK,) not in unigrams:
                # Without an <unk> entry an OOV word has probability 0 (KenLM says the same).
                return -math.inf
        history = tuple(history)[max(0, len(history) - self.order + 1):]
        backoff = 0.0
        for start in range(len(history) + 1):
            ctx = history[start:]
            entry = self.ngrams[len(ctx)].get(ctx + (word,))
            if entry is not None:
                return backoff + entry[0]
            ctx_entry = self.ngrams[len(ctx) - 1].get(ctx) if ctx else None
            if ctx_entry is not None:
                backoff += ctx_entry[1]
        raise AssertionError("unreachable: the unigram was found above")

    def score(self, sentence: str | Sequence[str], bos: bool = True, eos: bool = True) -> float:
        """log10 probability of a sentence (like `kenlm.Model.score(s, bos, eos)`)."""
        words = sentence.split() if isinstance(sentence, str) else list(sentence)
        history: list[str] = [BOS] if bos else []
        total = 0.0
        for w in words + ([EOS] if eos else []):
            total += self.logprob(w, history)
            history.append(w if (w,) in self.ngrams[0] else UNK)
        return total

    def perplexity(self, sentences: Iterable[str]) -> float:
        """Per-token perplexity (</s> counted, <s> not), as KenLM's `query` reports it."""
        total, tokens = 0.0, 0
        for s in sentences:
            total += self.score(s)
            tokens += len(s.split()) + 1
        return 10.0 ** (-total / max(tokens, 1))


# ---------------------------------------------------------------------------------------
# Writing


def format_entry(ngram: Ngram, logp: float, bow: float | None) -> str:
    # 7 decimals of log10: far below the 1e-4 agreement the tests ask of probabilities.
    text = f"{logp:.7f}\t{' '.join(ngram)}"
    return text if bow is None else f"{text}\t{bow:.7f}"


def write_arpa(model: ArpaModel, path: str | os.PathLike) -> None:
    """Write `model` to `path` atomically in ARPA format (gzip when the name ends in .gz).

    Every n-gram below the highest order gets a back-off field (0 when it is no history),
    except those ending in </s>, which can never be a history. N-grams are written sorted,
    so the same model always gives the same file.
    """
    with atomic_path(path) as tmp:
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(tmp, "wt", encoding="utf-8") as f:
            f.write("\n\\data\\\n")
            for k, table in enumerate(model.ngrams, start=1):
                f.write(f"ngram {k}={len(table)}\n")
            for k, table in enumerate(model.ngrams, start=1):
                f.write(f"\n\\{k}-grams:\n")
                top = k == model.order
                for ngram in sorted(table):
                    logp, bow = table[ngram]
                    write_bow = not top and ngram[-1] != EOS
                    f.write(format_entry(ngram, logp, bow if write_bow else None) + "\n")
            f.write("\n\\end\\\n")


# ---------------------------------------------------------------------------------------
# Reading and validation


def is_gzip(path: str | os.PathLike) -> bool:
    """True when the file starts with gzip's magic bytes (whatever its name says)."""
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def plain_lf_text(path: str | os.PathLike, probe: int = 1 << 20) -> bool:
    """True when a program reading raw bytes sees what `iter_arpa` sees: no gzip, no byte-order
    mark, no carriage return (checked in the first `probe` bytes). kaldilm reads an ARPA file as
    it is: a "\r" left at the end of the line becomes part of the last word, which then matches
    no words.txt entry, and the n-gram is skipped without a word."""
    with open(path, "rb") as f:
        head = f.read(probe)
    return not (head.startswith((b"\x1f\x8b", b"\xef\xbb\xbf")) or b"\r" in head)


def _open_text(path: Path) -> IO[str]:
    """An ARPA file as strict UTF-8 text, gunzipped when its magic bytes say gzip."""
    if not path.is_file():
        raise ToolkitError(f"{path}: ARPA file not found; train one with `toolkit lm train` or check the path")
    raw = path.open("rb")
    magic = raw.read(2)
    raw.seek(0)
    stream = gzip.open(raw) if magic == b"\x1f\x8b" else raw
    return io.TextIOWrapper(stream, encoding="utf-8-sig", errors="strict")  # a byte-order mark is dropped


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with _open_text(path) as f:
        lineno = 0
        try:
            for lineno, line in enumerate(f, start=1):
                yield lineno, line.strip()
        except UnicodeDecodeError:
            raise ToolkitError(f"{path}:{lineno + 1}: not UTF-8 text; an ARPA file must be UTF-8") from None
        except (EOFError, OSError) as e:
            raise ToolkitError(f"{path}:{lineno + 1}: unreadable ({e}); the file is truncated or corrupt") from None


def _bad(path: Path, lineno: int, what: str) -> ToolkitError:
    return ToolkitError(f"{path}:{lineno}: {what}; the ARPA file is corrupt, re-create it")


def iter_arpa(path: str | os.PathLike) -> Iterator[tuple[int, Ngram, float, float]]:
    """Stream `(order, ngram, log10 prob, log10 backoff)` from an ARPA file, validating as it goes.

    Text before `\\data\\` is skipped, as Kaldi's parser does. Checks: the `\\data\\` header
    with `ngram k=count` lines for k = 1..N, the sections `\\k-grams:` in order with exactly
    the announced number of entries, entries with a numeric probability <= 0, k words and an
    optional numeric back-off, and the `\\end\\` marker. Any violation raises `ToolkitError`
    naming the file and the line.
    """
    path = Path(path)
    counts: dict[int, int] = {}
    state = "start"  # start -> header -> section(k) -> end
    order = seen = 0
    last = 0
    for lineno, line in _lines(path):
        last = lineno
        if not line:
            continue
        if state == "start":
            # Like Kaldi's ARPA parser, text before \data\ (a comment header) is ignored.
            if line == "\\data\\":
                state = "header"
        elif state == "header" and line.startswith("ngram "):
            key, _, value = line[6:].partition("=")
            if not (key.strip().isdigit() and value.strip().isdigit()) or int(key) != len(counts) + 1:
                raise _bad(path, lineno, f"bad count line {line!r} (want 'ngram {len(counts) + 1}=<count>')")
            counts[int(key)] = int(value)
        elif state in ("header", "section") and line.startswith("\\"):
            if state == "section" and seen != counts[order]:
                raise _bad(path, lineno, f"section \\{order}-grams: has {seen} entries, the header says {counts[order]}")
            if line == "\\end\\":
                if order != len(counts) or not counts:
                    raise _bad(path, lineno, f"\\end\\ after order {order}, the header announces {len(counts)}")
                state = "end"
                continue
            if line != f"\\{order + 1}-grams:" or order + 1 not in counts:
                raise _bad(path, lineno, f"unexpected section marker {line!r} (want \\{order + 1}-grams:)")
            order, seen, state = order + 1, 0, "section"
        elif state == "section":
            yield order, *_parse_entry(path, lineno, line, order)
            seen += 1
        elif state == "end":
            raise _bad(path, lineno, "text after \\end\\")
        else:
            raise _bad(path, lineno, f"unexpected line {line[:40]!r}")
    if state == "start":
        raise _bad(path, 1, "no \\data\\ header found; this is not an ARPA file")
    if state != "end":
        raise _bad(path, last, "file ends before \\end\\ (truncated?)")


def _parse_entry(path: Path, lineno: int, line: str, order: int) -> tuple[Ngram, float, float]:
    fields = line.split()
    if len(fields) not in (order + 1, order + 2):
        raise _bad(path, lineno, f"a {order}-gram entry needs {order + 1} or {order + 2} fields, found {len(fields)}")
    try:
        logp = float(fields[0])
        bow = float(fields[order + 1]) if len(fields) == order + 2 else 0.0
    except ValueError:
        raise _bad(path, lineno, f"non-numeric probability or back-off in {line[:60]!r}") from None
    if logp > 1e-6 or math.isnan(logp) or math.isnan(bow):
        raise _bad(path, lineno, f"log10 probability {fields[0]} is not <= 0")
    return tuple(fields[1:order + 1]), logp, bow


def arpa_counts(path: str | os.PathLike) -> list[int]:
    """The n-gram counts the `\\data\\` header announces, per order, read without the n-grams."""
    path = Path(path)
    counts: list[int] = []
    in_header = False
    for lineno, line in _lines(path):
        if line == "\\data\\":
            in_header = True
        elif in_header and line.startswith("ngram "):
            key, _, value = line[6:].partition("=")
            if not (key.strip().isdigit() and value.strip().isdigit()) or int(key) != len(counts) + 1:
                raise _bad(path, lineno, f"bad count line {line!r} (want 'ngram {len(counts) + 1}=<count>')")
            counts.append(int(value))
        elif in_header and line:
            break
    if not counts:
        raise ToolkitError(f"{path}: not an ARPA file (no \\data\\ section with 'ngram N=' lines); give an ARPA LM")
    return counts


def arpa_order(path: str | os.PathLike) -> int:
    """Highest n-gram order declared in an ARPA file's header (one-line errors as `arpa_counts`)."""
    return len(arpa_counts(path))


def validate_arpa(path: str | os.PathLike) -> list[int]:
    """Check an ARPA file without holding its n-grams in memory; return the n-gram counts per order.

    Besides `iter_arpa`'s checks, an n-gram listed twice in its section is an error: which entry
    counts is up to the reader (the graph compiler keeps both arcs), and the header's count
    includes the copy, so nothing else would notice. Each section's n-grams are kept as 8-byte
    hashes only (sorted to find equal ones); hashes that collide are settled by a second pass
    over those n-grams alone, so a collision is never reported as a duplicate.
    """
    import numpy as np

    counts: list[int] = []
    suspects: dict[int, set[int]] = {}
    hashes = array("q")

    def close_section(order: int) -> None:
        if len(hashes) > 1:
            h = np.sort(np.frombuffer(hashes, dtype=np.int64))
            same = h[1:][h[1:] == h[:-1]]
            if same.size:
                suspects[order] = set(same.tolist())

    for order, ngram, _, _ in iter_arpa(path):
        while order > len(counts):  # a section may be empty
            close_section(len(counts))
            hashes = array("q")
            counts.append(0)
        counts[order - 1] += 1
        hashes.append(_ngram_hash(ngram))
    close_section(len(counts))
    if suspects:
        seen: dict[int, set[Ngram]] = {k: set() for k in suspects}
        for order, ngram, _, _ in iter_arpa(path):
            if order in suspects and _ngram_hash(ngram) in suspects[order]:
                if ngram in seen[order]:
                    raise _duplicate(path, order, ngram)
                seen[order].add(ngram)
    return counts


def _ngram_hash(ngram: Ngram) -> int:
    """A 64-bit hash of an n-gram, stable within the process (both passes of validate_arpa)."""
    return hash(ngram)


def _duplicate(path: str | os.PathLike, order: int, ngram: Ngram) -> ToolkitError:
    return ToolkitError(f"{path}: the {order}-gram {' '.join(ngram)!r} is listed twice; an ARPA file lists each "
                        "n-gram once (which entry counts would be up to the reader): re-create the LM or remove the copy")


def read_arpa(path: str | os.PathLike) -> ArpaModel:
    """Read a (plain or gzipped) ARPA file into an `ArpaModel`, validating it (see `iter_arpa`)."""
    model = ArpaModel()
    for order, ngram, logp, bow in iter_arpa(path):
        while order > model.order:  # a section may be empty
            model.ngrams.append({})
        section = model.ngrams[order - 1]
        if ngram in section:
            raise _duplicate(path, order, ngram)
        section[ngram] = (logp, bow)
    if not model.ngrams or not model.ngrams[0]:
        raise ToolkitError(f"{path}: the ARPA file has no unigrams; re-create it")
    return model

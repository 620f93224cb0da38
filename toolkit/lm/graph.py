"""Decoding graphs with kaldifst: H (CTC topology), L (lexicon), G (n-gram LM) and HLG.

Label conventions (those of icefall's ``prepare_lang_fst.py``, which kaldi-decoder's
``DecodableCtc`` expects):

- Input side of H and of L: token id + 1 (``TOKEN_OFFSET``), so that label 0 stays epsilon
  although the CTC blank has id 0 in ``tokens.txt``. ``DecodableCtc`` reads column
  ``label - 1`` of the log-probability matrix.
- Disambiguation symbols ``#0, #1, ...`` of L follow the last token: ``#k`` has label
  ``num_tokens + 1 + k``. They are replaced by epsilon in LG before H is composed, so HLG's
  input alphabet is exactly the shifted tokens.
- Output side of L, G and HLG: word ids of ``words.txt`` (``<eps>`` = 0; ``#0`` is the word-level
  back-off disambiguator that ``arpa2fst`` writes on G's back-off arcs).

``compile_graphs`` writes ``H.fst``, ``L_disambig.fst``, ``G_<order>.fst`` and ``HLG.fst`` into the lang
dir and rebuilds a file only when one of its inputs (file content hashes and options) changed;
the hashes live in ``graphs.json`` beside them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import kaldifst

from toolkit.lm.arpa import arpa_order, plain_lf_text, validate_arpa
from toolkit.lm.vocab import (NORMALIZATION_VERSION, WordMap, arpa_unigrams, coverage, diagnose, normalize_arpa,
                              oov_rate, word_map)
from toolkit.text.symbols import is_disambig, read_symbol_table
from toolkit.utils import ToolkitError, atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

TOKEN_OFFSET = 1  # graph input label = token id + 1, so 0 can mean epsilon
GRAPH_VERSION = 3  # bump when the construction or graphs.json changes, so cached graphs are rebuilt
SPECIAL_WORDS = ("<eps>", "#0", "<s>", "</s>")
DEFAULT_LANGUAGE = "und"  # normalisation without language-specific rules (all but Turkic lower-casing)
DEFAULT_MIN_COVERAGE = 0.5  # compile-graph refuses an LM that has fewer of the lexicon's words


# ---------------------------------------------------------------------------------------
# Lang dir text files

def read_lexicon(path: str | os.PathLike) -> list[tuple[str, list[str]]]:
    """Read ``lexicon.txt``: ``word tok tok ...`` per line (a word may have several lines)."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"{path}: not found; build the lang dir first (toolkit lang-dir)")
    entries = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise ToolkitError(f"{path}:{n}: word {parts[0]!r} has an empty spelling; fix the lexicon")
        entries.append((parts[0], parts[1:]))
    if not entries:
        raise ToolkitError(f"{path}: empty lexicon; rebuild the lang dir")
    return entries


@dataclass
class Lang:
    """The text files of an icefall-style lang dir, checked against each other."""

    dir: Path
    tokens: dict[str, int]
    words: dict[str, int]
    lexicon: list[tuple[str, list[str]]]
    id2word: dict[int, str] = field(init=False)

    def __post_init__(self) -> None:
        # icefall appends #0, #1, ... to tokens.txt; they are graph symbols, not model outputs.
        self.tokens = {t: i for t, i in self.tokens.items() if not is_disambig(t)}
        self.id2word = {i: w for w, i in self.words.items()}
        if self.tokens.get("<blk>", 0) != 0 or 0 not in self.tokens.values():
            raise ToolkitError(f"{self.dir}/tokens.txt: the CTC blank must have id 0; rebuild the lang dir")
        if self.words.get("<eps>") != 0:
            raise ToolkitError(f"{self.dir}/words.txt: '<eps>' must have id 0; rebuild the lang dir")
        if "#0" not in self.words:
            raise ToolkitError(f"{self.dir}/words.txt: lacks the back-off symbol '#0'; rebuild the lang dir")
        for word, toks in self.lexicon:
            if word not in self.words:
                raise ToolkitError(f"{self.dir}/lexicon.txt: word {word!r} is not in words.txt; rebuild the lang dir")
            bad = [t for t in toks if t not in self.tokens]
            if bad:
                raise ToolkitError(
                    f"{self.dir}/lexicon.txt: token(s) {' '.join(bad)} of {word!r} not in tokens.txt; rebuild the lang dir"
                )

    @classmethod
    def load(cls, lang_dir: str | os.PathLike) -> "Lang":
        d = Path(lang_dir)
        if not d.is_dir():
            raise ToolkitError(f"{d}: lang dir not found; create it with `toolkit lang-dir` or fix --lang-dir")
        return cls(d, read_symbol_table(d / "tokens.txt"), read_symbol_table(d / "words.txt"), read_lexicon(d / "lexicon.txt"))

    @property
    def num_tokens(self) -> int:
        """Size of the CTC output layer (max token id + 1)."""
        return max(self.tokens.values()) + 1

    def words_of(self, ids: list[int]) -> list[str]:
        """Word ids from a graph's output side to words, dropping epsilon and LM specials."""
        out = []
        for i in ids:
            w = self.id2word.get(i)
            if w is not None and w not in SPECIAL_WORDS:
                out.append(w)
        return out


def add_disambig(lexicon: list[tuple[str, list[str]]]) -> tuple[list[tuple[str, list[str]]], int]:
    """Append ``#k`` to spellings that are homophones or prefixes of others (Kaldi's add_lex_disambig).

    Returns the new entries and the highest k used (0 when no entry needed one). ``#0`` is reserved
    for the LM back-off and never used here.
    """
    counts = Counter(tuple(toks) for _, toks in lexicon)
    prefixes = {tuple(toks[:i]) for _, toks in lexicon for i in range(1, len(toks))}
    last_used: dict[tuple[str, ...], int] = {}
    out = []
    max_k = 0
    for word, toks in lexicon:
        key = tuple(toks)
        if key in prefixes or counts[key] > 1:
            k = last_used.get(key, 0) + 1
            last_used[key] = k
            max_k = max(max_k, k)
            toks = toks + [f"#{k}"]
        out.append((word, list(toks)))
    return out, max_k


# ---------------------------------------------------------------------------------------
# H, L, G and HLG

def build_ctc_topo(num_tokens: int, compact: bool = False) -> kaldifst.StdVectorFst:
    """CTC topology H over tokens ``0..num_tokens-1`` (0 = blank), labels shifted by TOKEN_OFFSET.

    Standard: one state per token, fully connected (V^2 arcs); a token repeats only across a
    blank, so H maps frame labels to exactly the collapsed sequence. Compact: a blank state and one
    state per token with an epsilon arc back (O(V) arcs, for large word-piece vocabularies); it also
    accepts a token repeated without blank in between, as k2's ``ctc_topo(modified=True)``.
    """
    fst = kaldifst.StdVectorFst()
    for _ in range(num_tokens):
        s = fst.add_state()
        fst.set_final(state=s, weight=0.0)
    fst.start = 0
    blank_label = 0 + TOKEN_OFFSET
    for i in range(num_tokens):
        if compact:
            if i == 0:
                fst.add_arc(state=0, arc=kaldifst.StdArc(blank_label, 0, 0.0, 0))
                continue
            lab = i + TOKEN_OFFSET
            fst.add_arc(state=0, arc=kaldifst.StdArc(lab, lab, 0.0, i))
            fst.add_arc(state=i, arc=kaldifst.StdArc(lab, 0, 0.0, i))
            fst.add_arc(state=i, arc=kaldifst.StdArc(0, 0, 0.0, 0))
            continue
        for k in range(num_tokens):
            # Staying in the same token (self-loop) or emitting blank outputs nothing.
            olabel = 0 if (k == i or k == 0) else k + TOKEN_OFFSET
            fst.add_arc(state=i, arc=kaldifst.StdArc(k + TOKEN_OFFSET, olabel, 0.0, k))
    kaldifst.arcsort(fst, sort_type="olabel")
    return fst


def build_lexicon_fst(lang: Lang) -> tuple[kaldifst.StdVectorFst, int]:
    """L_disambig: token sequences (with ``#k``) to words; a ``#0`` self-loop passes G's back-off.

    Returns the FST (olabel-sorted) and the label of ``#0`` (the first disambiguation label).
    """
    entries, max_k = add_disambig(lang.lexicon)
    first_disambig = lang.num_tokens + TOKEN_OFFSET

    def label(tok: str) -> int:
        if tok.startswith("#") and tok not in lang.tokens:
            return first_disambig + int(tok[1:])
        return lang.tokens[tok] + TOKEN_OFFSET

    fst = kaldifst.StdVectorFst()
    loop = fst.add_state()
    fst.start = loop
    fst.set_final(state=loop, weight=0.0)
    for word, toks in entries:
        src = loop
        for j, tok in enumerate(toks):
            dst = loop if j == len(toks) - 1 else fst.add_state()
            olabel = lang.words[word] if j == 0 else 0
            fst.add_arc(state=src, arc=kaldifst.StdArc(label(tok), olabel, 0.0, dst))
            src = dst
    fst.add_arc(state=loop, arc=kaldifst.StdArc(first_disambig, lang.words["#0"], 0.0, loop))
    kaldifst.arcsort(fst, sort_type="olabel")
    logger.debug("L: %d entries, disambiguation symbols #0..#%d", len(entries), max_k)
    return fst, first_disambig


def build_grammar_fst(arpa: str | os.PathLike, words_txt: str | os.PathLike, max_order: int = -1,
                      language: str = DEFAULT_LANGUAGE, wmap: WordMap | None = None) -> kaldifst.StdVectorFst:
    """G from an ARPA file through kaldilm's arpa2fst (``#0`` on back-off arcs, <s>/</s> removed).

    The ARPA's words are normalised like the transcripts first (`toolkit.lm.vocab.normalize_arpa`;
    a file whose words are normal already is used as it is), so an UPPER-case LM gives the G of its
    lower-case twin. kaldilm aborts the process on malformed input, so it runs in a child process;
    n-grams with words missing from words.txt are skipped (`compile_graphs` checks the coverage first).
    """
    arpa_order(arpa)  # clear error for a missing or non-ARPA file
    # Validated as given, whichever way it is used: kaldilm ignores the header's counts (a cut-off
    # section would give a G without a word of warning) and keeps both copies of an n-gram listed
    # twice, which normalize_arpa would carry over too.
    validate_arpa(arpa)
    wmap = wmap or word_map(arpa_unigrams(arpa), language)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "G.fst"
        if not (wmap.identity and plain_lf_text(arpa)):  # kaldilm reads plain "\n"-ended text only
            plain = Path(tmp) / "lm.arpa"
            info = normalize_arpa(arpa, plain, language, wmap)
            if not wmap.identity:
                logger.info("%s: words normalised for language %s: %s", arpa, language, info.summary())
            arpa = plain
        from toolkit.external import run_python_module

        proc = run_python_module("kaldilm", [f"--read-symbol-table={words_txt}", "--disambig-symbol=#0",
                                             f"--max-order={max_order}", "--max-arpa-warnings=0", arpa, out],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0 or not out.is_file():
            errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("[E]") or "ERROR" in ln]
            why = errors[-1] if errors else f"kaldilm exited with {proc.returncode}"
            raise ToolkitError(f"{arpa}: cannot convert the ARPA LM to an FST ({why}); fix or regenerate the LM")
        fst = kaldifst.StdVectorFst.read(str(out))
    if fst.num_states == 0:
        raise ToolkitError(f"{arpa}: the LM shares no words with {words_txt}; build the LM from the lang dir's text")
    return fst


@dataclass
class LmCoverage:
    """How well an LM fits a lang dir: the share of the lexicon's words it has, the dev OOV rate."""

    lm: str
    coverage: float
    lexicon_words: int
    dev_oov_rate: float | None = None
    dev_tokens: int = 0

    def describe(self) -> str:
        text = f"the LM has {100 * self.coverage:.1f}% of the {self.lexicon_words} lexicon words"
        if self.dev_oov_rate is not None:
            text += f"; dev OOV rate against the lexicon {100 * self.dev_oov_rate:.2f}% of {self.dev_tokens} words"
        return text


def check_lm_coverage(lang: Lang, lm: str | os.PathLike, wmap: WordMap, min_coverage: float,
                      dev_sentences: list[str] | None = None, option: str = "--lm") -> LmCoverage:
    """The LM's coverage of the lexicon (and the dev OOV rate); a one-line ToolkitError below ``min_coverage``.

    A G that knows few of the lexicon's words gives an HLG that can say little or nothing (an
    UPPER-case LM against lower-case words used to give an empty graph without a word of warning).
    """
    lex_words = {w for w, _ in lang.lexicon}
    cov, n = coverage(lex_words, wmap.words())
    result = LmCoverage(str(lm), cov, n)
    if dev_sentences is not None:
        result.dev_oov_rate, _, result.dev_tokens = oov_rate(dev_sentences, lex_words)
    if cov < min_coverage or cov == 0:  # none at all, even under --min-coverage 0: a graph that only says <unk>
        limit = f"below --min-coverage {100 * min_coverage:.0f}%" if cov < min_coverage else "none of its words"
        raise ToolkitError(f"{option} {lm}: {result.describe()} of {lang.dir / 'lexicon.txt'}, {limit}; "
                           f"likely cause: {diagnose(lex_words, wmap.mapping, wmap.words())}")
    logger.info("%s: %s", lm, result.describe())
    return result


def relabel(fst: kaldifst.StdVectorFst, ilabel_map=None, olabel_map=None) -> kaldifst.StdVectorFst:
    """Return a copy with labels mapped by the given functions (text round trip keeps properties honest)."""
    lines = []
    for line in fst.to_str().splitlines():
        p = line.split()
        if len(p) >= 4:
            if ilabel_map is not None:
                p[2] = str(ilabel_map(int(p[2])))
            if olabel_map is not None:
                p[3] = str(olabel_map(int(p[3])))
        lines.append(" ".join(p))
    return kaldifst.compile("\n".join(lines) + "\n")


def remove_backoff_disambig(G: kaldifst.StdVectorFst, backoff_id: int) -> kaldifst.StdVectorFst:
    """G with ``#0`` replaced by epsilon: an acceptor of word strings usable for rescoring."""
    out = relabel(G, lambda x: 0 if x == backoff_id else x, lambda x: 0 if x == backoff_id else x)
    kaldifst.arcsort(out, sort_type="ilabel")
    return out


def build_hlg(H: kaldifst.StdVectorFst, L: kaldifst.StdVectorFst, G: kaldifst.StdVectorFst,
              first_disambig: int) -> kaldifst.StdVectorFst:
    """HLG = H o min(det(L o G)), disambiguation symbols removed, input-label sorted."""
    kaldifst.arcsort(G, sort_type="ilabel")
    LG = kaldifst.compose(L, G)
    if LG.num_states == 0:
        raise ToolkitError("L o G is empty: no lexicon word is in the LM; build the LM from the lang dir's words")
    if kaldifst.determinize_star(LG):
        raise ToolkitError("determinizing L o G hit the state limit; use a smaller (pruned) LM")
    kaldifst.minimize_encoded(LG)
    LG = relabel(LG, ilabel_map=lambda x: 0 if x >= first_disambig else x)
    kaldifst.rmepsilon(LG)
    kaldifst.arcsort(LG, sort_type="ilabel")
    Hs = H.copy()
    kaldifst.arcsort(Hs, sort_type="olabel")
    HLG = kaldifst.compose(Hs, LG)
    kaldifst.connect(HLG)
    kaldifst.arcsort(HLG, sort_type="ilabel")
    return HLG


# ---------------------------------------------------------------------------------------
# Cached compilation into the lang dir, with provenance

LANG_FILES = ("tokens.txt", "words.txt", "lexicon.txt")  # the lang-dir files a graph is built from


def file_hash(path: str | os.PathLike) -> str:
    """sha256 of a file's content (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class GraphCache:
    """``graphs.json`` in the lang dir: how each graph file was built.

    ``{"version": GRAPH_VERSION, "graphs": {name: {"key": ..., "lang_files": {file: sha256}}},
    "rescore_G": name}``. ``key`` hashes every input (lang-dir files, the LM) and option, so
    `compile-graph` rebuilds exactly what changed; ``lang_files`` lets a decoder check that a graph
    still belongs to the lang dir beside it (`checked_graph`). A record of another version counts
    as empty: everything is rebuilt.
    """

    def __init__(self, lang_dir: str | os.PathLike):
        self.dir = Path(lang_dir)
        self.path = self.dir / "graphs.json"
        self.graphs: dict[str, dict] = {}
        self.rescore_g: str | None = None
        try:
            data = json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = {}  # a damaged record only costs a rebuild
        if isinstance(data, dict) and data.get("version") == GRAPH_VERSION:
            self.graphs = dict(data.get("graphs") or {})
            self.rescore_g = data.get("rescore_G")

    @staticmethod
    def key(inputs: list[Path], **options) -> str:
        payload = {"version": GRAPH_VERSION, "inputs": [file_hash(p) for p in inputs], "options": options}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def fresh(self, name: str, key: str) -> bool:
        return (self.graphs.get(name) or {}).get("key") == key and (self.dir / name).is_file()

    def record(self, name: str, key: str, lang_files: tuple[str, ...] = LANG_FILES) -> None:
        """Note that `name` was built from inputs `key`, and from these lang-dir files as they are now."""
        self.graphs[name] = {"key": key, "lang_files": {f: file_hash(self.dir / f) for f in lang_files}}
        self._save()

    def forget(self, *names: str) -> None:
        """Drop the records of `names` (their files stay): until rebuilt, `checked_graph` refuses them."""
        if any(n in self.graphs for n in names):
            for n in names:
                self.graphs.pop(n, None)
            self._save()

    def set_rescore_grammar(self, name: str) -> None:
        self.rescore_g = name
        self._save()

    def _save(self) -> None:
        data = {"version": GRAPH_VERSION, "graphs": self.graphs, "rescore_G": self.rescore_g}
        atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def remove_graphs(lang_dir: str | os.PathLike) -> list[str]:
    """Delete every compiled graph of a lang dir and its record (the lang dir is being rebuilt)."""
    d = Path(lang_dir)
    removed = []
    for name in list(GraphCache(d).graphs) + ["graphs.json"]:
        if (d / name).is_file():
            (d / name).unlink()
            removed.append(name)
    # graphs recorded by an older version of graphs.json
    for pattern in ("H.fst", "L_disambig.fst", "G_*.fst", "HLG.fst", "HLG.pt", "G_*.pt"):
        for p in d.glob(pattern):
            p.unlink()
            removed.append(p.name)
    return removed


def compile_hint(lang_dir: Path, name: str) -> str:
    """The `toolkit compile-graph` command that builds graph `name` of `lang_dir`."""
    if name == "HLG.pt":
        return f"`toolkit compile-graph --lang-dir {lang_dir} --lm LM --k2`"
    if name.endswith("_rescore.fst"):
        return f"`toolkit compile-graph --lang-dir {lang_dir} --lm LM --rescore-lm BIG_LM`"
    if name.endswith("gram.pt"):  # the k2 form of the rescoring G
        return f"`toolkit compile-graph --lang-dir {lang_dir} --lm LM --rescore-lm BIG_LM --k2`"
    return f"`toolkit compile-graph --lang-dir {lang_dir} --lm LM`"


def checked_graph(lang_dir: str | os.PathLike, name: str) -> Path:
    """Path of a compiled graph that still belongs to this lang dir, or a one-line ToolkitError.

    Refused: a missing graph, one without a build record, and one built from other versions of the
    lang dir's tokens.txt / words.txt / lexicon.txt (the lang dir was rebuilt since: its word ids
    mean other words now, and decoding would print wrong words).
    """
    d = Path(lang_dir)
    path = d / name
    fix = compile_hint(d, name)
    if not path.is_file():
        raise ToolkitError(f"{path}: not found; build it with {fix}")
    entry = GraphCache(d).graphs.get(name)
    if not entry or "lang_files" not in entry:
        raise ToolkitError(f"{path}: no current build record in {d / 'graphs.json'} (a later compile-graph with "
                           f"another LM did not rebuild it, or another tool or version built it); rebuild it with {fix}")
    for f, digest in entry["lang_files"].items():
        if not (d / f).is_file() or file_hash(d / f) != digest:
            raise ToolkitError(f"{path}: built from another {f} than the one in {d} (the lang dir changed since); "
                               f"rebuild it with {fix}")
    if path.stat().st_size == 0:
        raise ToolkitError(f"{path}: empty file; rebuild it with {fix} --force")
    return path


def write_fst(fst: kaldifst.StdVectorFst, path: Path) -> None:
    """Write an OpenFst binary atomically; a one-line error when it cannot be written."""
    with atomic_path(path) as tmp:
        if not fst.write(str(tmp)):
            raise ToolkitError(f"{path}: cannot write the FST; check disk space and permissions")


def read_fst(path: str | os.PathLike) -> kaldifst.StdVectorFst:
    """Read an OpenFst binary; one-line ToolkitError for a missing, empty or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"{path}: graph not found; run `toolkit compile-graph` first")
    if path.stat().st_size == 0:
        raise ToolkitError(f"{path}: empty graph file; rebuild it with `toolkit compile-graph --force`")
    try:
        return kaldifst.StdVectorFst.read(str(path))
    except RuntimeError as e:
        why = str(e).strip().splitlines()[-1][:120] if str(e).strip() else "unreadable"
        raise ToolkitError(f"{path}: not a readable OpenFst graph ({why}); rebuild it with "
                           "`toolkit compile-graph --force`") from None


@dataclass
class GraphPaths:
    """The graphs `compile_graphs` leaves in the lang dir (G and HLG only with an LM) and which it rebuilt."""

    H: Path
    L: Path
    G: Path | None
    HLG: Path | None
    rebuilt: list[str]
    coverage: LmCoverage | None = None


def lang_dir_language(lang_dir: str | os.PathLike) -> str:
    """The language `toolkit lang-dir` recorded for a lang dir (its transcripts'), else DEFAULT_LANGUAGE."""
    from toolkit.text.lang_dir import recorded_language

    return recorded_language(lang_dir) or DEFAULT_LANGUAGE


def _lm_inputs(lang: Lang, lm: str | os.PathLike, language: str | None, min_coverage: float,
               dev_sentences: list[str] | None, option: str = "--lm") -> tuple[str, WordMap, LmCoverage]:
    language = language or lang_dir_language(lang.dir)
    wmap = word_map(arpa_unigrams(lm), language)
    return language, wmap, check_lm_coverage(lang, lm, wmap, min_coverage, dev_sentences, option)


def compile_graphs(lang_dir: str | os.PathLike, lm: str | os.PathLike | None = None, order: int | None = None,
                   compact: bool = False, force: bool = False, language: str | None = None,
                   min_coverage: float = DEFAULT_MIN_COVERAGE, dev_sentences: list[str] | None = None) -> GraphPaths:
    """Build (or reuse) H.fst, L_disambig.fst and, given an ARPA ``lm``, G_<order>.fst and HLG.fst.

    ``order`` caps the n-gram order used (default: the ARPA's own). The LM's words are normalised
    for ``language`` (default: the lang dir's recorded language) and must cover ``min_coverage``
    of the lexicon's words (`check_lm_coverage`; ``dev_sentences`` adds the dev OOV rate to the
    report). A graph is rebuilt only when the content of an input file or an option changed
    (``force`` rebuilds everything).
    """
    lang = Lang.load(lang_dir)
    d = lang.dir
    cache = GraphCache(d)
    rebuilt: list[str] = []
    text_inputs = [d / f for f in LANG_FILES]

    h_key = cache.key([d / "tokens.txt"], compact=compact)
    if force or not cache.fresh("H.fst", h_key):
        write_fst(build_ctc_topo(lang.num_tokens, compact=compact), d / "H.fst")
        cache.record("H.fst", h_key, ("tokens.txt",))
        rebuilt.append("H.fst")
    l_key = cache.key(text_inputs)
    if force or not cache.fresh("L_disambig.fst", l_key):
        write_fst(build_lexicon_fst(lang)[0], d / "L_disambig.fst")
        cache.record("L_disambig.fst", l_key)
        rebuilt.append("L_disambig.fst")
    if lm is None:
        return GraphPaths(d / "H.fst", d / "L_disambig.fst", None, None, rebuilt)

    language, wmap, cov = _lm_inputs(lang, lm, language, min_coverage, dev_sentences)
    lm_order = arpa_order(lm)
    if order and order > lm_order:
        raise ToolkitError(f"--order {order}: {lm} is a {lm_order}-gram LM; give --order {lm_order} or less "
                           "(or leave it out)")
    order = order or lm_order
    g_name = f"G_{order}.fst"
    norm = {"language": language, "normalization": NORMALIZATION_VERSION}
    g_key = cache.key([Path(lm), d / "words.txt"], order=order, **norm)
    hlg_key = cache.key(text_inputs + [Path(lm)], order=order, compact=compact, **norm)
    rebuild_hlg = force or not cache.fresh("HLG.fst", hlg_key)
    if rebuild_hlg:
        # The HLGs in the lang dir are of another LM (or options) from here on: unrecorded, a decoder
        # refuses them, also when building G or HLG fails below or `--k2` is not given this time.
        cache.forget("HLG.fst", "HLG.pt")
    if force or not cache.fresh(g_name, g_key):
        write_fst(build_grammar_fst(lm, d / "words.txt", order, language, wmap), d / g_name)
        cache.record(g_name, g_key, ("words.txt",))
        rebuilt.append(g_name)
    if rebuild_hlg:
        _, first_disambig = build_lexicon_fst(lang)
        HLG = build_hlg(read_fst(d / "H.fst"), read_fst(d / "L_disambig.fst"), read_fst(d / g_name), first_disambig)
        write_fst(HLG, d / "HLG.fst")
        cache.record("HLG.fst", hlg_key)
        rebuilt.append("HLG.fst")
    return GraphPaths(d / "H.fst", d / "L_disambig.fst", d / g_name, d / "HLG.fst", rebuilt, cov)


def rescore_grammar(lang_dir: str | os.PathLike, lm: str | os.PathLike, force: bool = False,
                    language: str | None = None, min_coverage: float = DEFAULT_MIN_COVERAGE) -> tuple[Path, bool]:
    """Build (or reuse) G_<order>_rescore.fst of a rescoring LM and record it as the lang dir's
    rescoring G (where the decoders find it); returns its path and whether it was built now. Its
    words are normalised and its coverage of the lexicon checked as for the first-pass LM.

    Its own name, so that a rescoring LM of the first-pass LM's order never overwrites the G
    that HLG.fst was built from (and is never mistaken for it)."""
    d = Path(lang_dir)
    lang = Lang.load(d)  # a clear error for a missing or broken lang dir
    language, wmap, _ = _lm_inputs(lang, lm, language, min_coverage, None, "--rescore-lm")
    order = arpa_order(lm)
    name = f"G_{order}_rescore.fst"
    cache = GraphCache(d)
    key = cache.key([Path(lm), d / "words.txt"], order=order, language=language, normalization=NORMALIZATION_VERSION)
    built = force or not cache.fresh(name, key)
    if built:
        # its k2 form (built by --k2) is of the old LM now: until rebuilt, the k2 rescoring methods
        # refuse it instead of rescoring with the LM this rebuild replaces
        cache.forget(name, k2_rescore_name(name))
        logger.info("building %s from %s", name, lm)
        write_fst(build_grammar_fst(lm, d / "words.txt", order, language, wmap), d / name)
        cache.record(name, key, ("words.txt",))
    if cache.rescore_g != name:
        cache.set_rescore_grammar(name)
    return d / name, built


def k2_rescore_name(fst_name: str) -> str:
    """``G_4_rescore.fst`` -> ``G_4gram.pt``: the k2 form of a rescoring G (built by `toolkit.lm.k2_graph`)."""
    order = fst_name[len("G_"):].split("_", 1)[0]
    return f"G_{order}gram.pt"


def rescore_grammar_path(lang_dir: str | os.PathLike) -> Path:
    """The rescoring G recorded by `rescore_grammar` (checked like every graph), or a one-line error."""
    d = Path(lang_dir)
    name = GraphCache(d).rescore_g
    if not name:
        raise ToolkitError(f"{d}: no rescoring LM compiled; run `toolkit compile-graph --lang-dir {d} "
                           "--lm LM --rescore-lm BIG_LM` first (hlg-rescore and k2-nbest-rescore need it)")
    return checked_graph(d, name)

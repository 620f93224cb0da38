"""`toolkit lang-dir`: files read back with kaldifst symbol tables, a lexicon FST that maps a
tokenised sentence back to its words, sentencepiece reading bpe.model, idempotency, errors."""
from __future__ import annotations

import os
from pathlib import Path

import kaldifst
import pytest
from lhotse import AudioSource, CutSet, MonoCut, Recording, SupervisionSegment

from toolkit.cli import main
from toolkit.text.normalize import normalize_text
from toolkit.text.tokenizer import Tokenizer

RAW = [
    ("en", "The quick brown fox doesn't jump over the lazy dog."),
    ("en", "A cat sat on the mat; the dog did not."),
    ("fr", "L'homme qu'il a vu était là, près du château."),
    ("de", "Größere Straßen führen über alte Brücken."),
    ("ru", "Съешь же ещё этих мягких французских булок."),
    ("el", "Ο ΛΟΓΟΣ είναι σοφός και καλός."),
    ("tr", "IŞIK İSTANBUL'DA yanıyor."),
    ("hi", "मैं घर जा रहा हूँ। तुम कहाँ हो॥"),
]


def write_cuts(path: Path, items: list[tuple[str, str]], normalise: bool = True) -> Path:
    """A CutSet manifest whose cuts carry only supervisions (lang-dir reads no audio)."""
    cuts = []
    for i, (lang, text) in enumerate(items):
        rec = Recording(id=f"rec{i}", sources=[AudioSource(type="file", channels=[0], source=f"/none/{i}.wav")],
                        sampling_rate=16000, num_samples=16000, duration=1.0)
        sup = SupervisionSegment(id=f"utt{i}", recording_id=rec.id, start=0.0, duration=1.0, channel=0,
                                 text=normalize_text(text, lang) if normalise else text, language=lang)
        cuts.append(MonoCut(id=f"utt{i}", start=0.0, duration=1.0, channel=0, recording=rec, supervisions=[sup]))
    CutSet.from_cuts(cuts).to_file(path)
    return path


def read_table(path: Path) -> list[str]:
    """Symbols in id order, read with kaldifst (OpenFst's own text symbol-table reader)."""
    table = kaldifst.SymbolTable.read_text(str(path))
    return [table.find(i) for i in range(table.num_symbols())]


def lexicon(path: Path) -> list[tuple[str, list[str]]]:
    return [(ln.split()[0], ln.split()[1:]) for ln in path.read_text(encoding="utf-8").splitlines()]


def words_through_lexicon(lang: Path, token_seq: list[str]) -> list[str]:
    """Compose a linear token acceptor with L (built from lexicon.txt) and read the words.

    Checks that lexicon symbols exist in tokens.txt / words.txt (compile fails otherwise)
    and that the spellings segment an encoded sentence into exactly its words.
    """
    # token ids shifted by one so <blk> (id 0) does not become OpenFst's epsilon
    tokens = read_table(lang / "tokens.txt")
    tsyms = kaldifst.SymbolTable()
    tsyms.add_symbol("<eps>", 0)
    for i, t in enumerate(tokens):
        tsyms.add_symbol(t, i + 1)
    wsyms = kaldifst.SymbolTable.read_text(str(lang / "words.txt"))
    arcs, nxt = [], 1
    for word, spelling in lexicon(lang / "lexicon.txt"):
        state = 0
        for j, tok in enumerate(spelling):
            dest = 0 if j == len(spelling) - 1 else nxt
            arcs.append(f"{state} {dest} {tok} {word if j == 0 else '<eps>'}")
            state, nxt = dest, nxt + (dest != 0)
    L = kaldifst.compile("\n".join(arcs + ["0"]) + "\n", isymbols=tsyms, osymbols=wsyms)
    lin = "".join(f"{i} {i + 1} {t} {t}\n" for i, t in enumerate(token_seq)) + f"{len(token_seq)}\n"
    A = kaldifst.compile(lin, isymbols=tsyms, osymbols=tsyms)
    kaldifst.arcsort(L, sort_type="ilabel")
    best = kaldifst.shortest_path(kaldifst.compose(A, L))
    linear, _, osyms, _ = kaldifst.get_linear_symbol_sequence(best)
    assert linear, "no path through L for the token sequence"
    return [wsyms.find(i) for i in osyms]


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_lang_dir_files_read_back(tmp_path: Path, kind: str) -> None:
    cuts = write_cuts(tmp_path / "train_cuts.jsonl.gz", RAW)
    out = tmp_path / f"lang_{kind}"
    extra = ["--vocab-size", "140"] if kind == "bpe" else []
    assert main(["lang-dir", "--type", kind, "--cuts", str(cuts), "--out", str(out), *extra]) == 0

    tokens = read_table(out / "tokens.txt")
    assert tokens[0] == "<blk>" and "<unk>" in tokens
    words = read_table(out / "words.txt")
    sentences = [normalize_text(t, lang) for lang, t in RAW]
    vocab = sorted({w for s in sentences for w in s.split()})
    assert words == ["<eps>", "<unk>", *vocab, "#0", "<s>", "</s>"]
    assert (out / "transcript_words.txt").read_text(encoding="utf-8").splitlines() == sentences

    lex = lexicon(out / "lexicon.txt")
    assert [w for w, _ in lex] == ["<unk>", *vocab]
    assert all(set(spelling) <= set(tokens) for _, spelling in lex)
    tok = Tokenizer.from_lang_dir(out)
    assert tok.type == kind and tok.tokens == tokens
    for word, spelling in lex[1:]:
        if kind == "char":
            assert spelling == [*word, "|"]
        else:
            assert "".join(spelling) == "\u2581" + word
    if kind == "bpe":
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(out / "bpe.model"))
        assert [sp.id_to_piece(i) for i in range(sp.get_piece_size())] == tokens
    # the tokenizer's training targets and the lexicon agree: L maps them back to words
    for sentence in sentences:
        seq = [tokens[i] for i in tok.encode(sentence)]
        assert words_through_lexicon(out, seq) == sentence.split()


def test_lang_dir_is_idempotent_and_rebuilds_on_change(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cuts = write_cuts(tmp_path / "c.jsonl.gz", RAW[:4])
    out = tmp_path / "lang"
    args = ["lang-dir", "--type", "char", "--cuts", str(cuts), "--out", str(out)]
    assert main(args) == 0
    stamp = {f.name: f.stat().st_mtime_ns for f in out.iterdir()}
    assert main(args) == 0
    assert {f.name: f.stat().st_mtime_ns for f in out.iterdir()} == stamp
    # a new input changes the vocabulary; a missing output forces a rebuild as well
    write_cuts(cuts, RAW)
    assert main(args) == 0
    assert "ё" in read_table(out / "tokens.txt")
    os.remove(out / "lexicon.txt")
    assert main(args) == 0 and (out / "lexicon.txt").is_file()


def test_multiple_manifests_are_united(tmp_path: Path) -> None:
    a = write_cuts(tmp_path / "a.jsonl.gz", RAW[:2])
    b = write_cuts(tmp_path / "b.jsonl.gz", RAW[4:6])
    out = tmp_path / "lang"
    assert main(["lang-dir", "--type", "char", "--cuts", str(a), str(b), "--out", str(out)]) == 0
    text = (out / "transcript_words.txt").read_text(encoding="utf-8").splitlines()
    assert len(text) == 4 and "ь" in read_table(out / "tokens.txt")


def test_lang_dir_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "missing.jsonl.gz"
    assert main(["lang-dir", "--type", "char", "--cuts", str(missing), "--out", str(tmp_path / "l")]) == 1
    err = capsys.readouterr().err.strip()
    assert "missing.jsonl.gz" in err and "toolkit prepare" in err and "\n" not in err
    raw = write_cuts(tmp_path / "raw.jsonl.gz", [("hi", "नमस्ते। दुनिया"), ("en", "a|b")], normalise=False)
    assert main(["lang-dir", "--type", "char", "--cuts", str(raw), "--out", str(tmp_path / "l")]) == 1
    err = capsys.readouterr().err.strip()
    assert "U+007C" in err and "U+0964" in err and "\n" not in err
    assert not (tmp_path / "l" / "tokens.txt").exists()
    # capitals, as Common Voice's sentence column and lhotse's recipes keep them: both "Lungo" and
    # "lungo" became words (and the capitals tokens), the former unreachable through a normalised LM
    cased = write_cuts(tmp_path / "cased.jsonl.gz", [("it", "Lungo la strada"), ("it", "lungo il fiume")],
                       normalise=False)
    assert main(["lang-dir", "--type", "char", "--cuts", str(cased), "--out", str(tmp_path / "l")]) == 1
    err = capsys.readouterr().err.strip()
    assert "1 of 2 transcripts are not normalised for language it" in err and "'lungo la strada'" in err, err
    assert "\n" not in err and not (tmp_path / "l" / "tokens.txt").exists()

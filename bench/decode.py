"""Benchmark: our `hlg` decoder (kaldi-decoder over HLG.fst) vs torchaudio's flashlight ctc_decoder,
and (when k2 is installed) our `k2-hlg` (k2 over HLG.pt, batches of utterances) vs `hlg`.

Both decode the same CTC log-probs with the same lexicon and the same ARPA LM (LM weight 1, no word
insertion score), one utterance at a time on one CPU thread. The log-probs are synthetic but shaped
like a CTC model's: a word-level bigram "language" over a 1000-word vocabulary, character tokens of
1-3 frames with blanks between, Gaussian noise and acoustically confusable letters (a quarter of the
letters) that make greedy decoding's WER high. The LM is a 3-gram trained on 20k other sentences of
the same language by the toolkit's Kneser-Ney trainer.

Prints the decoding real-time factor of each, their ratio (flashlight time / our time: > 1 means we are
faster), and the WER of each (plus greedy's, for scale). k2-hlg uses the same graph (HLG.pt is built
from the same L and G), beam and max-active, and decodes `--k2-batch` utterances per
`intersect_dense_pruned` call on `--k2-device` (cuda when available); it is timed batch by batch,
interleaved with `hlg` on the same utterances: `rtf_ratio_k2_vs_hlg` = k2-hlg time / hlg time
(< 1 means k2 is faster). Usage:

    .venv/bin/python bench/decode.py [--utts 300] [--beam 12] [--max-active 1000] [--fl-beam-size 50] [--k2-batch 50]
"""
from __future__ import annotations

import argparse
import string
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolkit.decode.greedy import greedy_ids  # noqa: E402
from toolkit.decode.options import SearchOptions  # noqa: E402
from toolkit.decode.wfst import HlgDecoder  # noqa: E402
from toolkit.lm.graph import Lang, compile_graphs  # noqa: E402

FRAME_SECONDS = 0.02  # wav2vec 2.0 frame rate


class ToyLanguage:
    """Words of random letters; each word prefers a few successors (so an LM helps)."""

    def __init__(self, n_words: int, rng: np.random.Generator):
        words: set[str] = set()
        while len(words) < n_words:
            words.add("".join(rng.choice(list(string.ascii_lowercase), size=int(rng.integers(2, 9)))))
        self.words = sorted(words)
        self.rng = rng
        zipf = 1.0 / np.arange(1, n_words + 1)
        self.unigram = zipf / zipf.sum()
        self.successors = [rng.choice(n_words, size=5, p=self.unigram, replace=False) for _ in range(n_words)]

    def sentence(self) -> str:
        n = int(self.rng.integers(4, 13))
        w = int(self.rng.choice(len(self.words), p=self.unigram))
        out = [w]
        for _ in range(n - 1):
            w = int(self.rng.choice(self.successors[w])) if self.rng.random() < 0.8 else \
                int(self.rng.choice(len(self.words), p=self.unigram))
            out.append(w)
        return " ".join(self.words[i] for i in out)


def emissions(sentence: str, token_id: dict[str, int], rng: np.random.Generator, confusion: float,
              noise: float) -> np.ndarray:
    """(T, V) log-probs for a sentence, peaked on a CTC alignment; some letters confusable with another."""
    V = len(token_id)
    labels = []
    for word in sentence.split():
        for ch in [*word, "|"]:
            labels += [0] * int(rng.integers(0, 3))
            if labels and labels[-1] == token_id[ch]:
                labels.append(0)  # a repeated token needs a blank between
            labels += [token_id[ch]] * int(rng.integers(1, 4))
    labels += [0] * int(rng.integers(1, 3))
    logits = rng.normal(0.0, noise, size=(len(labels), V)).astype(np.float32)
    rival = None
    for t, lab in enumerate(labels):
        logits[t, lab] += 5.0
        if lab > 1 and (t == 0 or labels[t - 1] != lab):  # a new letter: maybe confusable
            rival = int(rng.integers(2, V - 1)) if rng.random() < confusion else None
        if lab > 1 and rival is not None and rival != lab:
            logits[t, rival] = logits[t, lab] + float(rng.normal(0.3, 1.0))
    return torch.from_numpy(logits).log_softmax(-1).numpy()


def wer(refs: list[str], hyps: list[str]) -> float:
    import jiwer

    return 100.0 * jiwer.wer(refs, hyps)


def build(workdir: Path, args) -> tuple[Path, list[str], list[str]]:
    from toolkit.lm.arpa import write_arpa
    from toolkit.lm.kneser_ney import train_kneser_ney

    rng = np.random.default_rng(args.seed)
    lang = ToyLanguage(args.words, rng)
    train = [lang.sentence() for _ in range(args.lm_sentences)]
    test = [lang.sentence() for _ in range(args.utts)]
    d = workdir / "lang"
    d.mkdir()
    tokens = ["<blk>", "|", *string.ascii_lowercase, "<unk>"]
    (d / "tokens.txt").write_text("".join(f"{t} {i}\n" for i, t in enumerate(tokens)))
    words = ["<eps>", "<unk>", *lang.words, "#0", "<s>", "</s>"]
    (d / "words.txt").write_text("".join(f"{w} {i}\n" for i, w in enumerate(words)))
    lexicon = "<unk> <unk> |\n" + "".join(f"{w} {' '.join(w)} |\n" for w in lang.words)
    (d / "lexicon.txt").write_text(lexicon)
    model, _ = train_kneser_ney(train, order=args.order)
    write_arpa(model, d / "lm.arpa")
    return d, tokens, test


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--utts", type=int, default=300)
    p.add_argument("--words", type=int, default=1000)
    p.add_argument("--lm-sentences", type=int, default=20000)
    p.add_argument("--order", type=int, default=3)
    p.add_argument("--confusion", type=float, default=0.25)
    p.add_argument("--noise", type=float, default=1.3)
    p.add_argument("--beam", type=float, default=12.0)
    p.add_argument("--max-active", type=int, default=1000)
    p.add_argument("--fl-beam-size", type=int, default=50)
    p.add_argument("--fl-beam-threshold", type=float, default=25.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k2-batch", type=int, default=50, help="utterances per k2 intersection")
    p.add_argument("--k2-device", default="auto", help="k2-hlg device: auto (cuda when available), cpu, cuda")
    args = p.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        d, tokens, test = build(Path(tmp), args)
        t0 = time.perf_counter()
        paths = compile_graphs(d, d / "lm.arpa")
        print(f"HLG compiled in {time.perf_counter() - t0:.1f} s")
        token_id = {t: i for i, t in enumerate(tokens)}
        rng = np.random.default_rng(args.seed + 1)
        mats = [emissions(s, token_id, rng, args.confusion, args.noise) for s in test]
        audio = sum(m.shape[0] for m in mats) * FRAME_SECONDS
        print(f"{len(mats)} utterances, {audio:.0f} s of audio at 20 ms frames, vocabulary {len(tokens)} tokens")

        batch = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(m) for m in mats], batch_first=True)
        lengths = torch.tensor([m.shape[0] for m in mats])
        greedy = [" ".join("".join(tokens[i] for i in ids).replace("|", " ").split())
                  for ids in greedy_ids(batch, lengths)]

        lang = Lang.load(d)
        ours = HlgDecoder(paths.HLG, SearchOptions(beam=args.beam, max_active=args.max_active))
        from torchaudio.models.decoder import ctc_decoder

        fl = ctc_decoder(lexicon=str(d / "lexicon.txt"), tokens=tokens, lm=str(d / "lm.arpa"), nbest=1,
                         beam_size=args.fl_beam_size, beam_threshold=args.fl_beam_threshold, lm_weight=1.0,
                         word_score=0.0, sil_score=0.0, blank_token="<blk>", sil_token="|", unk_word="<unk>")
        tensors = [torch.from_numpy(m)[None] for m in mats]
        ours.decode(mats[0])  # warm-up both
        fl(tensors[0])
        # Interleaved per utterance, so that load from other processes on this machine hits both alike.
        hyp_ours, hyp_fl, t_ours, t_fl = [], [], 0.0, 0.0
        for m, x in zip(mats, tensors):
            t0 = time.perf_counter()
            hyp_ours.append(" ".join(lang.words_of(ours.decode(m))))
            t1 = time.perf_counter()
            hyp_fl.append(" ".join(fl(x)[0][0].words))
            t2 = time.perf_counter()
            t_ours += t1 - t0
            t_fl += t2 - t1

        k2_result = bench_k2(d, mats, ours, args)

    w_greedy, w_ours, w_fl = wer(test, greedy), wer(test, hyp_ours), wer(test, hyp_fl)
    print(f"settings: ours beam={args.beam} max_active={args.max_active}; "
          f"flashlight beam_size={args.fl_beam_size} beam_threshold={args.fl_beam_threshold}; LM weight 1")
    print(f"greedy (no LM)       WER {w_greedy:6.2f}%")
    print(f"hlg (kaldi-decoder)  WER {w_ours:6.2f}%  search RTF {t_ours / audio:.5f}  ({t_ours:.2f} s)")
    print(f"flashlight (torchaudio) WER {w_fl:6.2f}%  search RTF {t_fl / audio:.5f}  ({t_fl:.2f} s)")
    ratio = t_fl / t_ours
    print(f"rtf_ratio_vs_flashlight = flashlight time / hlg time = {ratio:.2f} "
          f"({'hlg is faster' if ratio > 1 else 'flashlight is faster'})")
    print(f"RESULT rtf_ratio_vs_flashlight={ratio:.3f}")
    print(f"RESULT wer_hlg={w_ours:.2f}")
    print(f"RESULT wer_flashlight={w_fl:.2f}")
    if k2_result is not None:
        hyp_k2, t_k2, t_hlg, device = k2_result
        w_k2 = wer(test, hyp_k2)
        print(f"k2-hlg ({device}, batches of {args.k2_batch}) WER {w_k2:6.2f}%  search RTF {t_k2 / audio:.5f}  "
              f"({t_k2:.2f} s; hlg in the same passes {t_hlg:.2f} s)")
        print(f"rtf_ratio_k2_vs_hlg = k2-hlg time / hlg time = {t_k2 / t_hlg:.3f} "
              f"({'k2-hlg is faster' if t_k2 < t_hlg else 'hlg is faster'})")
        print(f"RESULT rtf_ratio_k2_vs_hlg={t_k2 / t_hlg:.3f}")
        print(f"RESULT wer_k2_hlg={w_k2:.2f}")


def bench_k2(d: Path, mats: list[np.ndarray], hlg, args):
    """(k2-hlg hypotheses, k2 seconds, hlg seconds on the same batches, device), or None without k2."""
    try:
        import k2  # noqa: F401
    except ImportError as e:
        print(f"k2 not installed ({e}): no k2-hlg (build it with local/install_k2.sh)")
        return None
    from toolkit.decode.k2_decode import K2Search
    from toolkit.lm.k2_graph import save_k2_graphs
    from toolkit.utils import resolve_device

    device = resolve_device(args.k2_device, "--k2-device")
    t0 = time.perf_counter()
    save_k2_graphs(d, d / "lm.arpa")
    print(f"HLG.pt compiled in {time.perf_counter() - t0:.1f} s")
    search = K2Search("k2-hlg", SearchOptions(beam=args.beam, max_active=args.max_active), d, None, device)
    batches = [mats[i:i + args.k2_batch] for i in range(0, len(mats), args.k2_batch)]
    search(*_padded(batches[0][:2]))  # warm-up
    hyps, t_k2, t_hlg = [], 0.0, 0.0
    for group in batches:
        t0 = time.perf_counter()
        for m in group:
            hlg.decode(m)
        t1 = time.perf_counter()
        hyps += [h.text for h in search(*_padded(group))]
        t2 = time.perf_counter()
        t_hlg += t1 - t0
        t_k2 += t2 - t1
    return hyps, t_k2, t_hlg, device


def _padded(group: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([m.shape[0] for m in group])
    return torch.nn.utils.rnn.pad_sequence([torch.from_numpy(m) for m in group], batch_first=True), lengths


if __name__ == "__main__":
    main()

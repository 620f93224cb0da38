"""The decoding search: CTC log-probabilities -> word hypotheses, for every method.

Used by `toolkit decode` (toolkit/decode/cli.py) and by anything else that turns a model's
frame log-probs into text. Nothing here reads argparse namespaces or compiles graphs: the
graphs come from `toolkit compile-graph`, and a missing or stale graph is a one-line error
naming that command.

Methods (`METHODS`):
- ``greedy``: per-frame arg-max, repeats collapsed, blanks dropped (no lang dir needed).
- ``hlg``: kaldi-decoder one-best over ``HLG.fst`` (CPU).
- ``hlg-rescore``: a kaldi-decoder lattice over ``HLG.fst`` rescored with the larger G recorded by
  ``compile-graph --rescore-lm`` (whole lattice, or the ``num_paths`` best word sequences).
- ``k2-ctc``, ``k2-hlg``, ``k2-nbest-rescore``, ``k2-whole-lattice-rescore`` (optional k2, batched,
  GPU or CPU; toolkit/decode/k2_decode.py).

Every method with words takes an LM scale and a word insertion penalty (`SearchOptions`) and a
sweep of them (`SWEEP_METHODS`: each utterance's lattice searched once, the best path under every
setting in ``Hypothesis.sweep``; `toolkit.decode.tuning` scores them on dev and applies the choice).

Use::

    opts = SearchOptions(beam=16.0)
    with make_searcher("hlg", opts, lang_dir, tokenizer) as search:
        hyps = search(log_probs, lengths)        # list[Hypothesis], one per utterance
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from toolkit.decode.options import Hypothesis, SearchOptions
from toolkit.utils import ToolkitError

log = logging.getLogger("toolkit.decode")

METHODS = ("greedy", "hlg", "hlg-rescore", "k2-ctc", "k2-hlg", "k2-nbest-rescore", "k2-whole-lattice-rescore")
WFST_METHODS = ("hlg", "hlg-rescore")
SWEEP_METHODS = ("hlg", "hlg-rescore", "k2-hlg", "k2-nbest-rescore", "k2-whole-lattice-rescore")
K2_METHODS = ("k2-ctc", "k2-hlg", "k2-nbest-rescore", "k2-whole-lattice-rescore")


class Searcher(Protocol):
    """``search(log_probs (B, T, V) float, lengths (B,)) -> [Hypothesis] * B`` (a context manager)."""

    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[Hypothesis]: ...

    def __enter__(self) -> "Searcher": ...

    def __exit__(self, *exc: Any) -> None: ...


def check_vocab(tokenizer: Any, lang_dir: Path) -> None:
    """The model's output ids must mean the lang dir's tokens, else the graphs decode garbage."""
    from toolkit.text.symbols import read_token_list

    lang_tokens = read_token_list(Path(lang_dir) / "tokens.txt")
    if lang_tokens != list(tokenizer.tokens):
        raise ToolkitError(f"{lang_dir}/tokens.txt does not match the checkpoint's vocabulary "
                           f"({len(lang_tokens)} vs {len(tokenizer.tokens)} tokens); use the lang dir the model was trained with")


def make_searcher(method: str, opts: SearchOptions, lang_dir: str | Path | None, tokenizer: Any,
                  device: torch.device | str = "cpu", nj: int = 1,
                  sweep: list[tuple[float, float]] | None = None) -> Searcher:
    """The searcher of one method. Every method but greedy needs ``lang_dir`` with its compiled graphs
    (and a vocabulary equal to ``tokenizer``'s); ``nj`` worker processes serve the CPU WFST search.
    ``sweep``: (lm_scale, word_penalty) settings whose hypotheses each utterance also gets
    (``Hypothesis.sweep``; `SWEEP_METHODS` only)."""
    if method not in METHODS:
        raise ToolkitError(f"--method {method!r}: unknown; choose from {', '.join(METHODS)}")
    opts.check()
    if sweep and method not in SWEEP_METHODS:
        raise ToolkitError(f"--method {method}: an LM-scale/word-penalty sweep works with {', '.join(SWEEP_METHODS)} "
                           "only; decode it without the sweep options")
    if method == "greedy":
        return GreedySearch(tokenizer)
    if lang_dir is None:
        raise ToolkitError(f"--method {method} needs --lang-dir (graphs and words.txt)")
    check_vocab(tokenizer, Path(lang_dir))
    if method in WFST_METHODS:
        return WfstSearch(method, opts, Path(lang_dir), nj, sweep)
    from toolkit.decode.k2_decode import K2Search

    return K2Search(method, opts, Path(lang_dir), tokenizer, device, sweep)


class GreedySearch:
    """Greedy CTC: the arg-max path of each utterance, detokenised."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def __enter__(self) -> "GreedySearch":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[Hypothesis]:
        from toolkit.decode.greedy import greedy_ids

        t0 = time.perf_counter()
        ids = greedy_ids(log_probs, lengths, blank=0)
        per = (time.perf_counter() - t0) / max(len(ids), 1)
        return [Hypothesis(self.tokenizer.decode(x), per) for x in ids]


class WfstSearch:
    """kaldi-decoder over the lang dir's HLG.fst (and its rescoring G for ``hlg-rescore``); with an LM
    scale, a word penalty or a sweep, through a lattice (`toolkit.decode.wfst.LatticeSearch`)."""

    def __init__(self, method: str, opts: SearchOptions, lang_dir: Path, nj: int = 1,
                 sweep: list[tuple[float, float]] | None = None):
        from toolkit.decode.wfst import WfstRunner
        from toolkit.lm.graph import Lang, checked_graph, rescore_grammar_path

        self.lang = Lang.load(lang_dir)
        self.sweep = sweep
        hlg = checked_graph(lang_dir, "HLG.fst")
        rescore_g = rescore_grammar_path(lang_dir) if method == "hlg-rescore" else None
        settings = ([(opts.lm_scale, opts.word_penalty)] + list(sweep)) if sweep else None
        self.runner = WfstRunner(method, hlg, opts, nj=nj, rescore_g=rescore_g, backoff_id=self.lang.words["#0"],
                                 settings=settings)

    def __enter__(self) -> "WfstSearch":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.runner.close()

    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[Hypothesis]:
        from toolkit.decode.wfst import to_matrix

        mats = [to_matrix(log_probs[i, : int(lengths[i])]) for i in range(log_probs.shape[0])]
        out = []
        for ids, secs in self.runner.decode(mats):
            if self.sweep:  # the first setting is the options' own, then the sweep's
                texts = [" ".join(self.lang.words_of(x)) for x in ids]
                out.append(Hypothesis(texts[0], secs, texts[1:]))
            else:
                out.append(Hypothesis(" ".join(self.lang.words_of(ids)), secs))
        return out


# ---------------------------------------------------------------------------------------
# A test set through the model and the searchers

@dataclass
class DecodeResult:
    """What `decode_cuts` returns: references, languages, and per method hypotheses, timings and
    (in a sweep) the words of every setting."""

    refs: dict[str, str] = field(default_factory=dict)
    languages: dict[str, str | None] = field(default_factory=dict)
    hyps: dict[str, dict[str, str]] = field(default_factory=dict)
    sweeps: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # method -> cut -> words per setting
    timings: dict[str, Any] = field(default_factory=dict)  # method -> toolkit.score.timing.Timing


def batches(cuts: Any, max_duration: float) -> Any:
    """Cuts sorted by duration (less padding), grouped into batches of at most max_duration seconds
    (a longer cut is a batch of its own)."""
    batch, total = [], 0.0
    for cut in sorted(cuts, key=lambda c: c.duration):
        if batch and total + cut.duration > max_duration:
            yield batch
            batch, total = [], 0.0
        batch.append(cut)
        total += cut.duration
    if batch:
        yield batch


def decode_cuts(model: torch.nn.Module, cuts: Any, searchers: dict[str, Searcher], normalize: bool,
                device: torch.device, max_duration: float, chunk_above: float = 60.0,
                chunk: Any = None, dtype: str = "auto") -> DecodeResult:
    """Model forward once per batch of at most `max_duration` seconds; every searcher decodes the
    same log-probs. An utterance longer than `chunk_above` seconds is run alone in overlapping windows
    (`toolkit.decode.chunking.chunked_log_probs` with `chunk`, a ChunkOptions: the code `toolkit
    transcribe` uses), so whole test sets decode whatever their longest utterance.

    Every cut is decoded (a cut whose audio cannot be used is a ToolkitError naming it, never a
    silent omission). Forward time is shared among a batch's utterances by duration. `dtype`: the
    model's precision as `toolkit transcribe --dtype` takes it (auto: bfloat16 on CUDA, float32 on CPU).
    """
    from lhotse import CutSet
    from tqdm import tqdm

    from toolkit.data.dataset import AudioDataset
    from toolkit.decode.chunking import ChunkOptions, chunked_log_probs, inference_context
    from toolkit.score.timing import Timing

    chunk = chunk or ChunkOptions()
    # the dataset leaves normalisation to the windows of a chunked utterance (per window, as transcribe)
    conv_layers = getattr(getattr(model, "cfg", None), "conv_feature_layers", None)  # its frame geometry
    dataset = AudioDataset(normalize=normalize, drop_unfit=False, conv_layers=conv_layers)
    raw = AudioDataset(normalize=False, drop_unfit=False, conv_layers=conv_layers)
    result = DecodeResult(hyps={m: {} for m in searchers}, timings={m: Timing(m) for m in searchers})
    short = [c for c in cuts if c.duration <= chunk_above]
    long = [[c] for c in cuts if c.duration > chunk_above]
    if long:
        log.info("decode: %d utterance(s) longer than %g s run in %g s windows", len(long), chunk_above, chunk.chunk_s)
    with tqdm(total=len(cuts), desc="decode", unit="utt") as bar:
        for batch in [*batches(short, max_duration), *long]:
            t0 = time.perf_counter()
            if batch[0].duration > chunk_above:
                data = raw[CutSet.from_cuts(batch)]
                lp = chunked_log_probs(model, data["audio"][0], chunk, normalize=normalize, device=device, dtype=dtype)
                log_probs, out_lengths = lp[None].to(device), torch.tensor([lp.shape[0]], device=device)
            else:
                data = dataset[CutSet.from_cuts(batch)]
                with inference_context(device, dtype):
                    log_probs, out_lengths = model(data["audio"].to(device), data["lengths"].to(device))
            log_probs = log_probs.float()
            if device.type == "cuda":
                torch.cuda.synchronize()
            forward = time.perf_counter() - t0
            durations = [c.duration for c in batch]
            share = [forward * d / max(sum(durations), 1e-9) for d in durations]
            for i, cid in enumerate(data["cut_ids"]):
                result.refs[cid] = data["texts"][i]
                result.languages[cid] = data["languages"][i]
            for m, search in searchers.items():
                for i, (cid, hyp) in enumerate(zip(data["cut_ids"], search(log_probs, out_lengths))):
                    result.hyps[m][cid] = hyp.text
                    if hyp.sweep is not None:
                        result.sweeps.setdefault(m, {})[cid] = hyp.sweep
                    result.timings[m].add(cid, durations[i], share[i], hyp.seconds)
            bar.update(len(batch))
    return result

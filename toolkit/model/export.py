"""`toolkit export --checkpoint CKPT --to hf|onnx|torchscript OUT`: a checkpoint for other runtimes.

- `hf`: a Hugging Face folder (`save_pretrained` layout). A CTC checkpoint becomes a
  `Wav2Vec2ForCTC` with its `Wav2Vec2CTCTokenizer` (vocab.json: the checkpoint's tokens in id
  order, `<blk>` as the pad token = CTC blank, `|` the word delimiter) and
  `Wav2Vec2FeatureExtractor` (16 kHz, `do_normalize` = the model's `normalize`), so
  `transformers.pipeline("automatic-speech-recognition", model=OUT)` loads it. A pretraining
  checkpoint becomes a `Wav2Vec2ForPreTraining` (with its quantizer) plus the feature extractor,
  for continued pretraining or fine-tuning elsewhere. Weights go through `convert.to_hf`, the
  inverse of `import-checkpoint --from hf`; word-piece vocabularies have no Hugging Face CTC
  tokenizer and are refused (export them to onnx / torchscript).
- `onnx`: `OUT/model.onnx` (torch.onnx's dynamo exporter, opset 18): inputs `audio` float32
  (batch, samples) at 16 kHz, zero-padded, and `lengths` int64 (batch,); outputs `log_probs`
  float32 (batch, frames, vocab) and `out_lengths` int64 (batch,); batch and length axes dynamic.
  Waveform normalisation (for `normalize` models) is inside the graph, over each row's valid
  samples. `OUT/tokens.txt` (id order; blank 0, `|` = space) and `OUT/export.json` (sample rate,
  frame shift, language, check result) come with it.
- `torchscript`: `OUT/model.pt` (`torch.jit.trace` of the same module; `torch.jit.load` runs it
  without the toolkit), with the same tokens.txt and export.json.

Every export is checked before it is kept: the exported model runs on test waveforms of two
lengths in one padded batch (and a third length alone) and its outputs are compared with the
PyTorch model's; the largest absolute log-prob difference is printed, and above `--tolerance`
the export fails and nothing is written. OUT is written beside itself and renamed into place.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from toolkit.utils import ToolkitError, current_umask, refuse_output_over_inputs

log = logging.getLogger("toolkit.export")

TARGETS = ("hf", "onnx", "torchscript")
SAMPLE_RATE = 16000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="toolkit checkpoint (fine-tuned CTC; pretraining for hf)")
    parser.add_argument("--to", required=True, choices=TARGETS, help="hf (Hugging Face folder), onnx, torchscript")
    parser.add_argument("--tolerance", type=float, default=1e-3,
                        help="largest absolute log-prob difference against PyTorch accepted by the check")
    parser.add_argument("--force", action="store_true", help="replace OUT when it exists")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("out", help="output folder")


def run(args: argparse.Namespace) -> int:
    from toolkit.model.checkpoint import build_model, config_of, load_checkpoint

    out = Path(args.out)
    refuse_output_over_inputs(out, {"--checkpoint": args.checkpoint})
    here = Path.cwd()
    if out.resolve() == here or out.resolve() in here.parents:
        raise ToolkitError(f"{out}: is the current folder (or holds it); choose another OUT")
    if out.exists() or out.is_symlink():
        if not args.force:
            raise ToolkitError(f"{out}: exists; remove it, choose another OUT or pass --force")
        _check_replaceable(out)
    ckpt = load_checkpoint(args.checkpoint)
    cfg = config_of(ckpt)
    if ckpt["kind"] != "ctc" and args.to != "hf":
        raise ToolkitError(f"--checkpoint {args.checkpoint}: a {ckpt['kind']} checkpoint has no CTC head; "
                           f"--to {args.to} exports recognisers (CTC checkpoints); use --to hf for pretraining models")
    if args.to == "hf":  # before the eps warning below, which would not apply
        from toolkit.model.convert import check_hf_exportable

        check_hf_exportable(cfg)
    model = build_model(ckpt).eval()
    vocab = ckpt.get("vocab") if ckpt["kind"] == "ctc" else None
    writer = {"hf": write_hf, "onnx": write_onnx, "torchscript": write_torchscript}[args.to]
    if args.to == "hf" and cfg.normalize:
        log.warning("%s: Hugging Face's feature extractor normalises with eps 1e-7, the toolkit with 1e-5: the "
                    "same log-probs at ordinary levels, different ones for audio some 60 dB quieter", out)
    with _staged_dir(out) as tmp:
        try:
            diff = writer(model, cfg, vocab, tmp, args.tolerance)
        except ToolkitError as e:  # name OUT, not the staging folder that is about to go
            raise ToolkitError(str(e).replace(str(tmp), str(out))) from None
    print(f"{args.checkpoint} -> {out} ({args.to}); check against PyTorch: max abs log-prob difference "
          f"{diff:.3g} (tolerance {args.tolerance:g})")
    return 0


# What an export writes (any --to, and what transformers' save_pretrained may add). --force
# replaces a folder that holds nothing else: an experiment folder, or one with the user's own
# files, is never taken with it.
EXPORT_FILES = frozenset({
    "export.json", "tokens.txt", "bpe.model", "model.pt", "model.onnx", "model.onnx.data",
    "config.json", "model.safetensors", "pytorch_model.bin", "vocab.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "preprocessor_config.json", "processor_config.json",
    "generation_config.json"})


def _check_replaceable(out: Path) -> None:
    """One-line ToolkitError unless `out` is a folder that only an earlier export could have written."""
    if out.is_symlink() or not out.is_dir():
        kind = "a link" if out.is_symlink() else "a file"
        raise ToolkitError(f"{out}: is {kind}, not an earlier export folder; --force replaces only those: "
                           "remove it yourself or choose another OUT")
    others = sorted(p.name for p in out.iterdir() if p.name not in EXPORT_FILES)
    if others:
        more = f" and {len(others) - 1} more" if len(others) > 1 else ""
        raise ToolkitError(f"{out}: holds {others[0]}{more}, which no export writes; --force replaces only an "
                           "earlier export folder: choose another OUT")


class _staged_dir:
    """A temporary folder beside `out`, renamed to `out` when the block succeeds (replacing it);
    on any failure, the rename included, the temporary folder is removed and `out` is as it was."""

    def __init__(self, out: Path):
        self.out = Path(os.path.abspath(out))

    def __enter__(self) -> Path:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=self.out.parent))
        # mkdtemp makes the folder private (0700); the export gets the mode any new folder gets here
        os.chmod(self.tmp, 0o777 & ~current_umask())
        return self.tmp

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        try:
            if self.out.exists():
                old = self.out.parent / f".{self.out.name}.old.{os.getpid()}"
                os.replace(self.out, old)
            os.replace(self.tmp, self.out)
        except BaseException:
            if old is not None and not self.out.exists():
                os.replace(old, self.out)
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        if old is not None:
            try:
                shutil.rmtree(old)
            except OSError as e:  # the new export is in place; only the old copy could not go
                log.warning("%s: the earlier export, moved aside, could not be removed (%s); delete it", old, e)


# -------------------------------------------------------------------------------------------------
# The module every runtime gets: normalisation + model, (audio, lengths) -> (log_probs, out_lengths)

class ExportModule(nn.Module):
    """A `Wav2Vec2ForCTC` with the waveform normalisation of `normalize` models in front of it.

    Normalisation is per row over its `lengths` valid samples, zero after them: what
    `F.layer_norm(wav, wav.shape)` on each unpadded waveform gives (toolkit.data.dataset).
    """

    def __init__(self, model: nn.Module, normalize: bool):
        super().__init__()
        if hasattr(model, "freeze_feature_encoder"):
            # inference only: the CNN's gradient scaling (an autograd Function, identity forward) must
            # not be traced; freezing takes the same forward without it
            model.freeze_feature_encoder()
        self.model = model
        self.normalize = normalize

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.normalize:
            valid = (torch.arange(audio.shape[1], device=audio.device)[None, :] < lengths[:, None]).to(audio.dtype)
            n = lengths.to(audio.dtype)[:, None]
            mean = (audio * valid).sum(1, keepdim=True) / n
            var = ((audio - mean) * valid).square().sum(1, keepdim=True) / n
            audio = (audio - mean) * torch.rsqrt(var + 1e-5) * valid
        return self.model(audio, lengths)


def check_inputs(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Test batches: two lengths padded into one batch, and a third length alone (not the traced shapes)."""
    g = torch.Generator().manual_seed(seed)
    a = 0.1 * torch.randn(2, 24000, generator=g)
    a[1, 17123:] = 0.0
    b = 0.1 * torch.randn(1, 40321, generator=g)
    return [(a, torch.tensor([24000, 17123])), (b, torch.tensor([40321]))]


def compare(reference: nn.Module, run: Callable[[torch.Tensor, torch.Tensor], tuple], tolerance: float,
            what: str) -> float:
    """Largest |log-prob difference| over the valid frames of `check_inputs`; ToolkitError above `tolerance`."""
    worst = 0.0
    for audio, lengths in check_inputs():
        with torch.inference_mode():
            want, want_len = reference(audio, lengths)
        got, got_len = run(audio, lengths)
        got, got_len = torch.as_tensor(got).detach().float(), torch.as_tensor(got_len).long()
        if got.shape != want.shape or not torch.equal(got_len, want_len.long()):
            raise ToolkitError(f"{what}: output shape {tuple(got.shape)} / lengths {got_len.tolist()} differ from "
                               f"PyTorch's {tuple(want.shape)} / {want_len.tolist()}; the export is broken")
        for b in range(audio.shape[0]):
            t = int(want_len[b])
            worst = max(worst, float((got[b, :t] - want[b, :t]).detach().abs().max()))
    if not worst <= tolerance:
        raise ToolkitError(f"{what}: max abs log-prob difference against PyTorch is {worst:.3g}, above the "
                           f"tolerance {tolerance:g}; the export is not kept")
    return worst


def _meta(cfg, vocab: dict | None, runtime: str, diff: float) -> dict:
    return {"format": "xlsr-toolkit export", "runtime": runtime, "sample_rate": SAMPLE_RATE,
            "frame_shift_s": cfg.total_stride / SAMPLE_RATE, "receptive_field_samples": cfg.receptive_field,
            "normalize_in_graph": bool(cfg.normalize), "inputs": {"audio": "float32 (batch, samples), zero-padded",
                                                                  "lengths": "int64 (batch,) valid samples"},
            "outputs": {"log_probs": "float32 (batch, frames, vocab), log-softmax",
                        "out_lengths": "int64 (batch,) valid frames"},
            "blank_id": 0, "word_boundary": "|" if vocab and vocab.get("type") == "char" else None,
            "vocab_type": vocab.get("type") if vocab else None, "language": (vocab or {}).get("language"),
            "check_max_abs_diff": diff}


def _write_tokens(vocab: dict, out: Path) -> None:
    from toolkit.text.tokenizer import Tokenizer

    tok = Tokenizer.from_dict(vocab)
    tok.write_tokens(out / "tokens.txt")
    if tok.type == "bpe":
        (out / "bpe.model").write_bytes(tok.bpe_model)


# -------------------------------------------------------------------------------------------------
# ONNX and TorchScript

def write_onnx(model: nn.Module, cfg, vocab: dict, out: Path, tolerance: float) -> float:
    import warnings

    module = ExportModule(model, bool(cfg.normalize)).eval()
    audio, lengths = check_inputs()[0]
    batch = torch.export.Dim("batch", min=1)
    samples = torch.export.Dim("samples", min=cfg.receptive_field)
    path = out / "model.onnx"
    log.info("exporting to ONNX (torch.onnx dynamo exporter; a minute on a small CPU)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, (audio, lengths), str(path), input_names=["audio", "lengths"],
                              output_names=["log_probs", "out_lengths"], opset_version=18, dynamo=True,
                              dynamic_shapes={"audio": {0: batch, 1: samples}, "lengths": {0: batch}},
                              external_data=False, verbose=False)
        except ImportError as e:
            raise ToolkitError(f"ONNX export needs the onnx and onnxscript packages ({e}); run local/install.sh") from None
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diff = compare(module, lambda a, n: session.run(None, {"audio": a.numpy(), "lengths": n.numpy()}),
                   tolerance, f"{path} (onnxruntime)")
    _write_tokens(vocab, out)
    (out / "export.json").write_text(json.dumps(_meta(cfg, vocab, "onnx", diff), indent=2) + "\n", encoding="utf-8")
    return diff


def write_torchscript(model: nn.Module, cfg, vocab: dict, out: Path, tolerance: float) -> float:
    import warnings

    module = ExportModule(model, bool(cfg.normalize)).eval()
    audio, lengths = check_inputs()[0]
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, (audio, lengths), check_trace=False)
    path = out / "model.pt"
    traced.save(str(path))
    loaded = torch.jit.load(str(path))

    def run(a: torch.Tensor, n: torch.Tensor) -> tuple:
        with torch.inference_mode():
            return loaded(a, n)

    diff = compare(module, run, tolerance, f"{path} (torch.jit.load)")
    _write_tokens(vocab, out)
    (out / "export.json").write_text(json.dumps(_meta(cfg, vocab, "torchscript", diff), indent=2) + "\n",
                                     encoding="utf-8")
    return diff


# -------------------------------------------------------------------------------------------------
# Hugging Face

def hf_config(cfg, state_dict: dict, vocab: dict | None) -> tuple[dict, dict]:
    """(config dict, HF state dict) for Wav2Vec2ForCTC (vocab given) or Wav2Vec2ForPreTraining."""
    from toolkit.model.convert import TOOLKIT_KEY, to_hf

    conf, sd = to_hf(cfg, state_dict)
    if vocab is not None and vocab.get("language"):
        conf[TOOLKIT_KEY]["language"] = vocab["language"]
    if vocab is not None:
        conf.update(architectures=["Wav2Vec2ForCTC"], vocab_size=len(vocab["tokens"]), pad_token_id=0,
                    bos_token_id=None, eos_token_id=None, ctc_loss_reduction="sum", ctc_zero_infinity=True)
    else:
        conf.update(architectures=["Wav2Vec2ForPreTraining"])
    return conf, sd


def write_hf(model: nn.Module, cfg, vocab: dict | None, out: Path, tolerance: float) -> float:
    import transformers

    conf, sd = hf_config(cfg, model.state_dict(), vocab)
    hf_cfg = transformers.Wav2Vec2Config(**conf)
    if vocab is not None:
        if vocab.get("type") != "char":
            raise ToolkitError("--to hf: Hugging Face's Wav2Vec2CTCTokenizer reads character vocabularies only; this "
                               "checkpoint has word pieces: export it --to onnx or --to torchscript")
        hf = transformers.Wav2Vec2ForCTC(hf_cfg)
    else:
        hf = transformers.Wav2Vec2ForPreTraining(hf_cfg)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k != "wav2vec2.masked_spec_embed"]
    if missing or unexpected:
        raise ToolkitError(f"--to hf: the converted weights do not fit transformers' model (missing {missing[:4]}, "
                           f"unexpected {unexpected[:4]}); is transformers the pinned version?")
    hf.eval().save_pretrained(out)
    normalize = bool(cfg.normalize)
    extractor = transformers.Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0, do_normalize=normalize,
        return_attention_mask=cfg.extractor_mode == "layer_norm")
    if vocab is not None:
        tokens = list(vocab["tokens"])
        (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False, indent=1)
                                        + "\n", encoding="utf-8")
        tokenizer = transformers.Wav2Vec2CTCTokenizer(
            str(out / "vocab.json"), bos_token=None, eos_token=None, unk_token="<unk>", pad_token=tokens[0],
            word_delimiter_token="|", do_lower_case=False, clean_up_tokenization_spaces=False)
        if len(tokenizer) != len(tokens):
            raise ToolkitError(f"--to hf: the Hugging Face tokenizer has {len(tokenizer)} entries for "
                               f"{len(tokens)} tokens; the vocabulary cannot be represented")
        transformers.Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(out)
    # preprocessor_config.json too (transformers 5 folds it into processor_config.json): older readers,
    # and `toolkit import-checkpoint --from hf`, take do_normalize from it
    extractor.save_pretrained(out)
    if vocab is None:
        return _check_hf_pretraining(model, out, tolerance)
    loaded = transformers.Wav2Vec2ForCTC.from_pretrained(out).eval()
    # the folder's own feature extractor, as HF's Processor and pipeline run it: its do_normalize
    # uses eps 1e-7 where the toolkit (fairseq) uses 1e-5, which the check inputs' level hides but
    # very quiet audio does not (docs/ARCHITECTURE.md)
    saved = transformers.Wav2Vec2FeatureExtractor.from_pretrained(out)

    def run(a: torch.Tensor, n: torch.Tensor) -> tuple:
        # One row at a time, unpadded: transformers' group-norm feature encoder is not padding-aware.
        rows = []
        for b in range(a.shape[0]):
            x = saved(a[b, : int(n[b])].numpy(), sampling_rate=SAMPLE_RATE, return_tensors="pt").input_values
            with torch.inference_mode():
                rows.append(loaded(x).logits.log_softmax(-1)[0])
        frames = model.wav2vec2.output_lengths(n)
        padded = torch.zeros(a.shape[0], int(frames.max()), rows[0].shape[-1])
        for b, r in enumerate(rows):
            padded[b, : r.shape[0]] = r
        return padded, frames

    return compare(ExportModule(model, normalize), run, tolerance, f"{out} (transformers Wav2Vec2ForCTC)")


def _check_hf_pretraining(model: nn.Module, out: Path, tolerance: float) -> float:
    """The backbone's final output against transformers' `last_hidden_state` of the saved folder."""
    import transformers

    loaded = transformers.Wav2Vec2ForPreTraining.from_pretrained(out).eval()
    worst = 0.0
    for audio, lengths in check_inputs():
        for b in range(audio.shape[0]):
            a = audio[b: b + 1, : int(lengths[b])]
            with torch.inference_mode():
                want = model.wav2vec2(a).x
                got = loaded.wav2vec2(a).last_hidden_state
            worst = max(worst, float((got - want).abs().max()))
    if not worst <= tolerance:
        raise ToolkitError(f"{out}: transformers' Wav2Vec2ForPreTraining differs from the checkpoint by {worst:.3g} "
                           f"(max abs hidden state), above --tolerance {tolerance:g}; the export is not kept")
    return worst

"""`toolkit import-checkpoint --from {fairseq,hf,torchaudio} SRC OUT.pt`: foreign models -> toolkit checkpoint.

* fairseq: a `.pt` written by fairseq (pretraining `Wav2Vec2Model` or fine-tuned `Wav2Vec2Ctc`),
  read through a restricted unpickler and mapped onto toolkit keys and configuration (`fairseq_io`).
* hf: a Hugging Face folder (`config.json` + `model.safetensors` / `pytorch_model.bin`) of a
  `Wav2Vec2ForPreTraining`, `Wav2Vec2ForCTC` or `Wav2Vec2Model`, converted by `convert.from_hf`.
* torchaudio: `torch.save(model.state_dict())` of a torchaudio `Wav2Vec2Model` (optionally with
  the `aux` CTC head), converted by `convert.from_torchaudio`.

The weights are loaded strictly into the toolkit model (any missing/unexpected/mis-shaped key is
one error naming the file) and written with `checkpoint.save_checkpoint`.

CTC vocabularies follow the toolkit's Tokenizer rules (blank `<blk>` at id 0, `<unk>`, `|`
between words). fairseq and torchaudio checkpoints carry no vocabulary, so `--vocab` is required
for their CTC heads; a Hugging Face folder's `vocab.json` is used when present. Output rows of
the head are permuted when the source's blank is not id 0; special tokens other than blank and
unk (`<s>`, `</s>`, `<pad>` that is not the blank) are renamed to private-use characters
(U+E000...) since the character vocabulary allows single characters only.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Callable

import torch

from toolkit.model.config import SAMPLE_RATE
from toolkit.text.symbols import read_token_list
from toolkit.utils import ToolkitError, refuse_output_over_inputs

log = logging.getLogger(__name__)

SOURCES = ("fairseq", "hf", "torchaudio")
BLANK, UNK, PRIVATE_BASE = "<blk>", "<unk>", 0xE000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", required=True, choices=SOURCES,
                        help="format of SRC: fairseq .pt, Hugging Face folder, or torchaudio state dict")
    parser.add_argument("src", help="fairseq .pt file, Hugging Face model folder, or torchaudio state-dict file")
    parser.add_argument("out", help="toolkit checkpoint to write (.pt)")
    parser.add_argument("--config-json", default=None,
                        help="torchaudio only: a JSON file, or the JSON object itself, with what shapes cannot "
                             'show, e.g. \'{"num_heads": 16, "layer_norm_first": true, "conv_strides": '
                             "[5,2,2,2,2,2,2]}', plus any model config field (dropouts, normalize, ...)")
    parser.add_argument("--vocab", default=None,
                        help="CTC vocabulary: fairseq dict.ltr.txt, Hugging Face vocab.json (default: SRC/vocab.json), "
                             "or an icefall tokens.txt (torchaudio)")
    parser.add_argument("--force", action="store_true", help="replace OUT when it exists")
    parser.add_argument("--verbose", action="store_true", help="debug logging")


def run(args: argparse.Namespace) -> int:
    src, out = Path(args.src), Path(args.out)
    refuse_output_over_inputs(out, {"SRC": src, **({"--vocab": args.vocab} if args.vocab else {})})
    if out.exists() and not args.force:
        raise ToolkitError(f"{out}: exists; remove it, choose another OUT or pass --force")
    if args.source == "fairseq":
        cfg, state, kind, vocab = import_fairseq(src, args.vocab)
    elif args.source == "hf":
        cfg, state, kind, vocab = import_hf(src, args.vocab)
    else:
        cfg, state, kind, vocab = import_torchaudio(src, args.config_json, args.vocab)
    model, kind = build_and_load(cfg, state, kind, where=f"{src}")
    from toolkit.model.checkpoint import save_checkpoint

    save_checkpoint(out, model, cfg, kind, vocab=vocab,
                    imported_from={"format": args.source, "path": str(src.resolve())})
    params = sum(p.numel() for p in model.parameters())
    arch = (f"{cfg.encoder_layers} layers x {cfg.encoder_embed_dim} ({cfg.encoder_attention_heads} heads), "
            f"{'pre' if cfg.layer_norm_first else 'post'}-LN, extractor {cfg.extractor_mode}")
    extra = f", vocab {len(vocab['tokens'])} tokens" if vocab else ""
    print(f"imported {args.source} {src} -> {out}: kind {kind}, {arch}, {params:,} parameters{extra}")
    return 0


# ---------------------------------------------------------------------------------------
# Building and checking


def build_and_load(cfg: Any, state: dict, kind: str, where: str) -> tuple[torch.nn.Module, str]:
    """The toolkit model for `kind` with `state` loaded strictly (one-line error on mismatch).

    kind "backbone" (a source without pretraining heads: HF `Wav2Vec2Model`, torchaudio without
    `aux`) gives a pretraining model whose quantizer and projections keep their fresh
    initialisation; it is returned with kind "pretrain" (usable for fine-tuning, feature
    extraction and continued pretraining).
    """
    from toolkit.model.checkpoint import load_state_dict_strict
    from toolkit.model.wav2vec2 import Wav2Vec2ForCTC, Wav2Vec2ForPretraining

    if kind == "ctc":
        if "proj.weight" not in state:
            raise ToolkitError(f"{where}: no CTC head found; import it as a pretraining model")
        model: torch.nn.Module = Wav2Vec2ForCTC(cfg, int(state["proj.weight"].shape[0]))
        load_state_dict_strict(model, state, where=where)
        return model.eval(), kind
    model = Wav2Vec2ForPretraining(cfg)
    if kind == "backbone":
        log.warning("%s: no quantizer/projection heads in the source; they are freshly initialised", where)
        prefix = "wav2vec2."
        load_state_dict_strict(model.wav2vec2, {k[len(prefix):]: v for k, v in state.items()}, where=where)
        return model.eval(), "pretrain"
    load_state_dict_strict(model, state, where=where)
    return model.eval(), kind


def ctc_vocab_from_file(state: dict, kind: str, vocab_path: str | None, read: Callable[[Path], list[str]],
                        missing: str) -> tuple[dict, dict | None]:
    """(state, vocab) for a CTC `kind`: tokens read from `vocab_path` with `read` (blank = id 0,
    `<unk>` where listed) and the head permuted by `vocab_from_tokens`; other kinds pass
    through with no vocab. `missing` is the error when a CTC model comes without `vocab_path`."""
    if kind != "ctc":
        return state, None
    if vocab_path is None:
        raise ToolkitError(missing)
    tokens = read(Path(vocab_path))
    unk = tokens.index(UNK) if UNK in tokens else None
    return vocab_from_tokens(state, tokens, blank=0, unk=unk, where=vocab_path)


# ---------------------------------------------------------------------------------------
# fairseq


def import_fairseq(src: Path, vocab_path: str | None) -> tuple[Any, dict, str, dict | None]:
    """(Wav2Vec2Config, toolkit state dict, kind, vocab) of a fairseq wav2vec 2.0 checkpoint."""
    from toolkit.model import fairseq_io

    raw = fairseq_io.load_fairseq_file(src)
    cfg, mapped, kind = fairseq_io.convert_fairseq(raw["model"], str(src),
                                                   lambda kind: fairseq_io.config_parts(raw, kind))
    mapped, vocab = ctc_vocab_from_file(
        mapped, kind, vocab_path, read_fairseq_dict,
        missing=f"{src}: fairseq CTC checkpoints do not store their vocabulary; "
                "pass the fine-tuning dictionary with --vocab dict.ltr.txt")
    return cfg, mapped, kind, vocab


def read_fairseq_dict(path: Path) -> list[str]:
    """Token list of a fairseq `Dictionary` file: `<s> <pad> </s> <unk>` then one `SYMBOL COUNT` a line.

    fairseq's CTC uses index 0 (`<s>`, the bos symbol) as the blank.
    """
    if not path.is_file():
        raise ToolkitError(f"{path}: vocabulary file not found; pass the fairseq dict.ltr.txt used for fine-tuning")
    tokens = ["<s>", "<pad>", "</s>", "<unk>"]
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rstrip("\n").split(" ")
        if len(parts) < 2 or parts[0] == "":
            raise ToolkitError(f"{path}:{n}: expected 'SYMBOL COUNT', got {line!r}; is it a fairseq dict.ltr.txt?")
        tokens.append(parts[0])
    return tokens


# ---------------------------------------------------------------------------------------
# Vocabularies


def vocab_from_tokens(state: dict, tokens: list[str], blank: int, unk: int | None,
                      where: str) -> tuple[dict, dict]:
    """Reorder the CTC head so `blank` is id 0 and build the toolkit's "vocab" entry.

    `tokens[i]` is the label of output row i in the source. Returns (state with `proj.*` rows
    permuted, vocab dict for the Tokenizer). A source without an unknown token gets an extra
    `<unk>` row that can never win (zero weights, bias -1e4).
    """
    weight, bias = state["proj.weight"], state.get("proj.bias")
    if len(tokens) != weight.shape[0]:
        raise ToolkitError(f"{where}: vocabulary has {len(tokens)} tokens but the CTC head has {weight.shape[0]} "
                           "outputs; pass the vocabulary the model was fine-tuned with")
    order = [blank] + [i for i in range(len(tokens)) if i != blank]
    names, private = [], PRIVATE_BASE
    for i in order:
        if i == blank:
            names.append(BLANK)
        elif i == unk:
            names.append(UNK)
        elif len(tokens[i]) == 1 and tokens[i] not in (BLANK, UNK):
            names.append(tokens[i])
        elif tokens[i].startswith(("<", "[")) and tokens[i].endswith((">", "]")):
            names.append(chr(private))  # a special symbol (<s>, </s>, [PAD]) the model never needs
            private += 1
        else:
            raise ToolkitError(f"{where}: token {tokens[i]!r} is not a single character; only character "
                               "vocabularies can be imported")
    idx = torch.tensor(order)
    new_w, new_b = weight[idx], (bias[idx] if bias is not None else None)
    if unk is None:
        names.append(UNK)
        new_w = torch.cat([new_w, torch.zeros(1, new_w.shape[1], dtype=new_w.dtype)])
        if new_b is not None:
            new_b = torch.cat([new_b, torch.full((1,), -1e4, dtype=new_b.dtype)])
    if "|" not in names:
        raise ToolkitError(f"{where}: vocabulary has no word boundary '|'; only fairseq/HF-style character "
                           "vocabularies (words separated by '|') can be imported")
    state = dict(state)
    state["proj.weight"] = new_w.contiguous()
    if new_b is not None:
        state["proj.bias"] = new_b.contiguous()
    from toolkit.text.tokenizer import Tokenizer

    vocab = {"type": "char", "tokens": names, "bpe_model": None}
    Tokenizer.from_dict(vocab)  # the toolkit must be able to use it: fail now, not at decode time
    return state, vocab


# ---------------------------------------------------------------------------------------
# Hugging Face


def read_hf_folder(src: Path) -> tuple[dict, dict]:
    """(config.json as a dict, state dict) of a Hugging Face model folder (safetensors preferred)."""
    if not src.is_dir():
        raise ToolkitError(f"{src}: not a folder; --from hf expects a folder written by save_pretrained "
                           "(config.json + model.safetensors or pytorch_model.bin)")
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        raise ToolkitError(f"{src}: no config.json; is it a Hugging Face model folder?")
    config = read_json(cfg_path)
    files = _hf_weight_files(src)
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            if f.suffix == ".safetensors":
                from safetensors.torch import load_file

                state.update(load_file(str(f)))
            else:
                state.update(torch.load(f, map_location="cpu", weights_only=True))
        except Exception as e:  # safetensors raises its own error types; all mean "unreadable"
            first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
            raise ToolkitError(f"{f}: cannot read the weights (truncated or corrupt? {first}); re-download them") from None
    return config, state


def _hf_weight_files(src: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = src / index_name
        if index.is_file():
            try:
                shards = sorted(set(read_json(index)["weight_map"].values()))
            except (KeyError, TypeError, AttributeError) as e:
                raise ToolkitError(f"{index}: malformed shard index ({e!r})") from None
            missing = [s for s in shards if not (src / s).is_file()]
            if missing:
                raise ToolkitError(f"{src}: shard(s) {', '.join(missing)} listed in {index_name} are missing")
            return [src / s for s in shards]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (src / name).is_file():
            return [src / name]
    raise ToolkitError(f"{src}: no model.safetensors or pytorch_model.bin; save the model with save_pretrained")


def import_hf(src: Path, vocab_path: str | None) -> tuple[Any, dict, str, dict | None]:
    """(Wav2Vec2Config, toolkit state dict, kind, vocab) of a Hugging Face wav2vec 2.0 folder."""
    from toolkit.model.convert import TOOLKIT_KEY, from_hf, infer_kind

    config, state = read_hf_folder(src)
    if config.get("model_type") not in (None, "wav2vec2"):
        raise ToolkitError(f"{src}: model_type {config.get('model_type')!r} is not wav2vec2; "
                           "only Wav2Vec2ForPreTraining / Wav2Vec2ForCTC / Wav2Vec2Model can be imported")
    cfg, sd = from_hf(state, config, source=str(src))
    cfg = _hf_preprocessing(src, cfg)
    kind = infer_kind(sd)
    vocab = None
    if kind == "ctc":
        path = Path(vocab_path) if vocab_path else src / "vocab.json"
        if not path.is_file():
            raise ToolkitError(f"{src}: a CTC model needs its vocabulary: no {path}; pass --vocab vocab.json")
        tokens = _read_vocab_json(path)
        tokens += _hf_added_tokens(path.parent, len(tokens), int(sd["proj.weight"].shape[0]))
        blank = int(config.get("pad_token_id", 0) if config.get("pad_token_id") is not None else 0)
        unk = next((i for i, t in enumerate(tokens) if t in ("<unk>", "[UNK]")), None)
        if not 0 <= blank < len(tokens):
            raise ToolkitError(f"{src}/config.json: pad_token_id {blank} (the CTC blank) is outside the vocabulary")
        sd, vocab = vocab_from_tokens(sd, tokens, blank=blank, unk=unk, where=str(path))
        extra = config.get(TOOLKIT_KEY)
        if isinstance(extra, dict) and isinstance(extra.get("language"), str):  # a `toolkit export` folder
            vocab["language"] = extra["language"]
    return cfg, sd, kind, vocab


def _hf_preprocessing(src: Path, cfg: Any) -> Any:
    """Waveform normalisation from the folder's feature-extractor settings (`do_normalize`).

    Hugging Face keeps it with the feature extractor, not the model config; XLSR/LV-60 models
    are trained on normalised audio, so dropping it would silently degrade their features.
    transformers < 5 writes it to `preprocessor_config.json`; transformers 5's
    `Wav2Vec2Processor.save_pretrained` writes only `processor_config.json`, with the same
    settings under "feature_extractor".
    """
    pre = None
    for path, section in ((src / "preprocessor_config.json", None), (src / "processor_config.json", "feature_extractor")):
        if not path.is_file():
            continue
        data = read_json(path)
        pre = data.get(section) if section and isinstance(data, dict) else data
        if isinstance(pre, dict):
            break
        pre = None
    if pre is None:
        log.warning("%s: no feature-extractor settings (preprocessor_config.json, or processor_config.json "
                    "with a feature_extractor section); assuming normalize=%s", src, cfg.normalize)
        return cfg
    rate = pre.get("sampling_rate", SAMPLE_RATE)
    if rate != SAMPLE_RATE:
        raise ToolkitError(f"{path}: the model expects {rate} Hz audio; the toolkit works at {SAMPLE_RATE} Hz only")
    return cfg.replace(normalize=bool(pre.get("do_normalize", cfg.normalize)))


def _hf_added_tokens(folder: Path, first: int, rows: int) -> list[str]:
    """Tokens with ids `first`.. that the tokenizer added after vocab.json (many Hub XLSR fine-tunes
    append `<s>` and `</s>` this way, and their CTC head has a row for each).

    Read from `added_tokens.json` ({token: id}, transformers < 5), else from tokenizer_config.json's
    `added_tokens_decoder` ({id: {"content": token}}); only when the head has more rows than
    vocab.json has tokens, so a head/vocabulary mismatch is still reported by `vocab_from_tokens`.
    """
    if rows <= first:
        return []
    found: dict[int, str] = {}
    for name in ("added_tokens.json", "tokenizer_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        data = read_json(path)
        if name == "added_tokens.json" and isinstance(data, dict):
            found.update({i: t for t, i in data.items() if isinstance(i, int) and i >= first})
        elif isinstance(data, dict) and isinstance(data.get("added_tokens_decoder"), dict):
            for i, entry in data["added_tokens_decoder"].items():
                if str(i).isdigit() and int(i) >= first and isinstance(entry, dict) and "content" in entry:
                    found.setdefault(int(i), str(entry["content"]))
    added = []
    for i in range(first, rows):
        if i not in found:
            break
        added.append(found[i])
    return added


def read_json(path: Path) -> Any:
    """The JSON of one file of a model folder; one-line ToolkitError naming it when it is not
    UTF-8 JSON (a truncated download, a file edited by hand)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f"line {e.lineno}: {e.msg}" if isinstance(e, json.JSONDecodeError) else "not UTF-8"
        raise ToolkitError(f"{path}: invalid JSON ({where}); re-save the folder with save_pretrained "
                           "or download it again") from None


def _read_vocab_json(path: Path) -> list[str]:
    """Tokens of a HF `vocab.json` ({token: id}) in id order; multilingual {lang: {...}} not supported."""
    data = read_json(path)
    if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
        raise ToolkitError(f"{path}: expected a {{token: id}} mapping (per-language vocabularies are not supported)")
    by_id = sorted((i, t) for t, i in data.items())
    if [i for i, _ in by_id] != list(range(len(by_id))):
        raise ToolkitError(f"{path}: token ids must be 0..N-1 without gaps")
    return [t for _, t in by_id]


# ---------------------------------------------------------------------------------------
# torchaudio


def import_torchaudio(src: Path, config_json: str | None, vocab_path: str | None) -> tuple[Any, dict, str, dict | None]:
    """(Wav2Vec2Config, toolkit state dict, kind, vocab) of a torchaudio Wav2Vec2Model state dict."""
    from toolkit.model.convert import from_torchaudio, infer_kind

    if not src.is_file():
        raise ToolkitError(f"{src}: state-dict file not found; check the SRC path")
    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refusals, truncation, not a torch file
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ToolkitError(f"{src}: cannot read the state dict (truncated, or not a plain torch.save of "
                           f"model.state_dict()? {first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = sorted(map(str, state))[:6] if isinstance(state, dict) else type(state).__name__
        raise ToolkitError(f"{src}: expected torch.save(model.state_dict()) of a torchaudio Wav2Vec2Model, "
                           f"found {keys}; use --from fairseq / --from hf for other formats")
    overrides: dict = {}
    if config_json and config_json.lstrip().startswith("{"):  # the object itself on the command line
        try:
            overrides = json.loads(config_json)
        except json.JSONDecodeError as e:
            raise ToolkitError(f"--config-json {config_json}: invalid JSON ({e}); quote it for the shell, "
                               """e.g. '{"num_heads": 16}'""") from None
    elif config_json:
        try:
            overrides = json.loads(Path(config_json).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ToolkitError(f"{config_json}: cannot read the --config-json file ({e})") from None
        if not isinstance(overrides, dict):
            raise ToolkitError(f"{config_json}: expected a JSON object such as "
                               '{"num_heads": 16, "layer_norm_first": true}')
    try:
        cfg, sd = from_torchaudio(state, source=str(src), **overrides)
    except TypeError as e:  # a key that is neither a from_torchaudio option nor a config field
        raise ToolkitError(f"{config_json}: {e}") from None
    kind = infer_kind(sd)
    sd, vocab = ctc_vocab_from_file(
        sd, kind, vocab_path, read_token_list,
        missing=f"{src}: the state dict has a CTC head (aux) but no vocabulary; "
                "pass --vocab tokens.txt (SYMBOL ID per line, blank first)")
    return cfg, sd, kind, vocab

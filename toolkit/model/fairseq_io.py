"""Reading fairseq wav2vec 2.0 checkpoints safely, and mapping them onto the toolkit's model.

A fairseq `.pt` file is a pickle: loading it with plain `pickle`/`torch.load(weights_only=False)`
runs whatever callables the file names, so a checkpoint downloaded from the internet could run
`os.system`. We never do that. `load_fairseq_file` unpickles through `_RestrictedUnpickler`, whose
`find_class` is an allow-list:

* tensor machinery (`torch._utils._rebuild_*`, storages, dtypes, `torch.Size`),
* plain containers (`collections.OrderedDict`, `argparse.Namespace`, builtin types),
* configuration classes of fairseq/omegaconf/hydra/numpy/typing/enum: these are *not imported*;
  the unpickler substitutes `_StandIn`, an inert record that only keeps the constructor
  arguments and the pickled state, so `to_plain` can read the values back as dicts/lists.

Any other global (`os.system`, `builtins.eval`, `subprocess.Popen`, ...) stops the load with a
one-line `ToolkitError` naming the global and the file, before anything is called.

The second half maps fairseq state-dict keys and configuration onto the toolkit's
`Wav2Vec2Config` / state-dict layout (docs/ARCHITECTURE.md), falling back to the tensor shapes
where the configuration is missing.
"""
from __future__ import annotations

import _compat_pickle
import argparse
import ast
import collections
import copyreg
import dataclasses
import logging
import pickle
import re
import types
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

from toolkit.model.config import Wav2Vec2Config
from toolkit.utils import ToolkitError

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------
# Restricted unpickling


class DisallowedGlobal(pickle.UnpicklingError):
    """A pickle names a global outside the allow-list; `name` is `module.qualname`."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class _StandIn:
    """Inert replacement for a pickled configuration object (omegaconf node, enum, ...).

    Whatever way the pickle builds it (call, `__new__`, `__setstate__`), it only records the
    arguments and state; it has no behaviour that could run code from the file.
    """

    _standin_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "_StandIn":
        obj = object.__new__(cls)
        obj.args = args
        obj.kwargs = kwargs
        obj.state = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # called by REDUCE; nothing to do
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    # pickle's SETITEM(S)/APPEND(S) may target dict/list subclasses (e.g. a pickled
    # omegaconf container built by its __reduce__); keep the items instead of failing.
    def __setitem__(self, key: Any, value: Any) -> None:
        self.kwargs[key] = value

    def append(self, item: Any) -> None:
        self.args = self.args + (item,)

    def extend(self, items: Any) -> None:
        self.args = self.args + tuple(items)

    def __repr__(self) -> str:
        return f"<stand-in {self._standin_name}>"


_STANDIN_CACHE: dict[str, type] = {}


def _standin_class(full_name: str) -> type:
    cls = _STANDIN_CACHE.get(full_name)
    if cls is None:
        cls = type("StandIn", (_StandIn,), {"_standin_name": full_name})
        _STANDIN_CACHE[full_name] = cls
    return cls


# Top-level modules whose classes are replaced by stand-ins (configuration and logging
# state in fairseq checkpoints: omegaconf containers/nodes, fairseq enums and meters,
# numpy scalars in extra_state, typing.Any in omegaconf metadata).
_STANDIN_MODULES = frozenset({"omegaconf", "fairseq", "hydra", "numpy", "typing", "enum", "pathlib"})

# Callables that typing annotations in omegaconf metadata pickle through (`List[int]` is
# `operator.getitem(typing.List, int)`, `NoneType` is `type(None)`): recorded, never called.
_STANDIN_NAMES = frozenset({"_operator.getitem", "operator.getitem", "builtins.type"})

_BUILTINS_ALLOWED = frozenset(
    {"dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str", "bytes",
     "bytearray", "bool", "slice", "range"}
)

_TORCH_REBUILD = frozenset(
    {"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
     "_rebuild_parameter_with_state", "_rebuild_device_tensor_from_cpu_tensor"}
)


def _plain_defaultdict(*_args: Any) -> dict:
    """`collections.defaultdict(factory)` becomes a plain dict: the factory is never kept."""
    return {}


def _allowed_global(module: str, name: str) -> Any:
    """The object a pickle's GLOBAL(module, name) resolves to, or raise DisallowedGlobal."""
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    full = f"{module}.{name}"
    if module == "builtins" and name in _BUILTINS_ALLOWED:
        return getattr(__import__("builtins"), name)
    if full == "collections.OrderedDict":
        return collections.OrderedDict
    if full == "collections.defaultdict":
        return _plain_defaultdict
    if full == "argparse.Namespace":
        return argparse.Namespace
    if full == "copyreg._reconstructor":  # protocol 0/1 objects; calls only allowed classes
        return copyreg._reconstructor
    if full == "_codecs.encode":  # bytes in protocol-2 pickles written by Python 3
        import _codecs

        return _codecs.encode
    if module == "torch._utils" and name in _TORCH_REBUILD:
        return getattr(torch._utils, name)
    if module == "torch":
        obj = getattr(torch, name, None)
        if isinstance(obj, torch.dtype) or obj is torch.Size:
            return obj
        if isinstance(obj, type) and name.endswith("Storage"):
            return obj
    if module == "torch.storage" and name in ("UntypedStorage", "TypedStorage", "_load_from_bytes"):
        if name == "_load_from_bytes":  # legacy storages re-enter torch.load (weights_only)
            return _storage_from_bytes
        return getattr(torch.storage, name)
    if module.split(".")[0] in _STANDIN_MODULES or full in _STANDIN_NAMES:
        return _standin_class(full)
    raise DisallowedGlobal(full)


def _storage_from_bytes(b: bytes) -> Any:
    import io

    return torch.load(io.BytesIO(b), weights_only=True)


class _RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` whose globals come only from `_allowed_global`."""

    def find_class(self, module: str, name: str) -> Any:
        return _allowed_global(module, name)


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return _RestrictedUnpickler(file, **kwargs).load()


def _restricted_loads(data: bytes, **kwargs: Any) -> Any:
    import io

    return _RestrictedUnpickler(io.BytesIO(data), **kwargs).load()


# A stand-in for the `pickle` module handed to torch.load: torch wraps `Unpickler` (adding
# tensor storages through persistent_load) and uses `load` for the legacy format's headers.
restricted_pickle = types.ModuleType("toolkit_restricted_pickle")
restricted_pickle.Unpickler = _RestrictedUnpickler  # type: ignore[attr-defined]
restricted_pickle.load = _restricted_load  # type: ignore[attr-defined]
restricted_pickle.loads = _restricted_loads  # type: ignore[attr-defined]
restricted_pickle.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]


def load_fairseq_file(path: str | Path) -> dict:
    """Load a fairseq checkpoint (`{"model": state_dict, "cfg"|"args": ...}`) without running code.

    Tensors are loaded on the CPU. Raises ToolkitError (one line, naming `path`) for a missing,
    truncated or non-checkpoint file, and for a pickle that names a global outside the allow-list.
    """
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"{path}: checkpoint file not found; check the SRC path")
    try:
        # weights_only=False is required by torch to use our pickle module; the safety comes
        # from that module's allow-list (`_allowed_global`), not from torch.
        obj = torch.load(path, map_location="cpu", pickle_module=restricted_pickle, weights_only=False)
    except DisallowedGlobal as e:
        raise ToolkitError(
            f"{path}: refusing to load: the pickle references {e.name}, which is not allowed in a "
            "fairseq checkpoint (nothing was executed); only load checkpoints from a source you trust"
        ) from None
    except (EOFError, pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, ValueError,
            OSError, IndexError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ToolkitError(
            f"{path}: cannot read the checkpoint (truncated or not a PyTorch/fairseq .pt file: {first}); "
            "re-download or re-copy it"
        ) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
        keys = sorted(map(str, obj))[:8] if isinstance(obj, dict) else []
        what = f"a dict with keys {keys}" if isinstance(obj, dict) else type(obj).__name__
        raise ToolkitError(
            f"{path}: not a fairseq checkpoint (expected a dict with a 'model' state dict, found {what}); "
            "use --from hf for a Hugging Face folder or --from torchaudio for a bare state dict"
        )
    return obj


# ---------------------------------------------------------------------------------------
# Stand-ins back to plain data


def to_plain(obj: Any, _depth: int = 0) -> Any:
    """Turn omegaconf stand-ins, enums and Namespaces into dicts, lists and scalars.

    omegaconf pickles a DictConfig/ListConfig as its `__dict__` (`_content` holds the child
    nodes) and a value node with its value in `_val`; an enum member is pickled as a call
    `EnumClass(value)`. The omegaconf "missing" marker `???` becomes None.
    """
    if _depth > 100:
        raise ToolkitError("checkpoint configuration is nested too deeply (corrupt file?)")
    d = _depth + 1
    if isinstance(obj, _StandIn):
        state = obj.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]  # (dict state, slot state)
        if isinstance(state, dict) and "_content" in state:
            return to_plain(state["_content"], d)
        if isinstance(state, dict) and "_val" in state:
            return to_plain(state["_val"], d)
        if obj.kwargs and not obj.args:  # a dict subclass filled by SETITEMS
            return {k: to_plain(v, d) for k, v in obj.kwargs.items()}
        if len(obj.args) == 1 and state is None:  # enum member / scalar wrapper: Cls(value)
            return to_plain(obj.args[0], d)
        return None  # opaque object (meters, numpy arrays): not configuration we use
    if isinstance(obj, argparse.Namespace):
        return {k: to_plain(v, d) for k, v in vars(obj).items()}
    if isinstance(obj, dict):
        return {k: to_plain(v, d) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v, d) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_plain(v, d) for v in obj)
    if isinstance(obj, str) and obj == "???":
        return None
    return obj


_INTERP = re.compile(r"^\$\{([A-Za-z0-9_.]+)\}$")


def resolve_interpolations(root: dict) -> dict:
    """Resolve omegaconf `${a.b.c}` references (absolute paths only) inside a plain config."""

    def lookup(path: str) -> Any:
        node: Any = root
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def walk(node: Any, depth: int = 0) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, depth) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, depth) for v in node]
        if isinstance(node, str) and depth < 10:
            m = _INTERP.match(node)
            if m:
                return walk(lookup(m.group(1)), depth + 1)
        return node

    return walk(root)


# ---------------------------------------------------------------------------------------
# fairseq configuration -> Wav2Vec2Config fields


def parse_conv_layers(spec: Any, where: str = "conv_feature_layers") -> list[tuple[int, int, int]]:
    """Parse fairseq's `conv_feature_layers` ("[(512,10,5)]+[(512,3,2)]*4+...") without eval.

    Only list/tuple literals of integers combined with `+` and `*` are accepted.
    """
    if isinstance(spec, (list, tuple)):
        return [tuple(int(v) for v in layer) for layer in spec]  # type: ignore[misc]

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            vals = [ev(e) for e in node.elts]
            return vals if isinstance(node, ast.List) else tuple(vals)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            a, b = ev(node.left), ev(node.right)
            return a + b if isinstance(node.op, ast.Add) else a * b
        raise ValueError(f"unsupported expression {ast.dump(node)[:60]}")

    try:
        value = ev(ast.parse(str(spec), mode="eval"))
        layers = [tuple(int(v) for v in layer) for layer in value]
        if not layers or any(len(layer) != 3 for layer in layers):
            raise ValueError("each layer must be (dim, kernel, stride)")
    except (SyntaxError, ValueError, TypeError) as e:
        raise ToolkitError(f"{where}: cannot parse {str(spec)[:80]!r} ({e}); expected e.g. '[(512,10,5)]+[(512,3,2)]*4'") from None
    return layers  # type: ignore[return-value]


def _tuple_of_floats(value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):  # old argparse configs keep "(2,0.5,0.999995)" as a string
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return None
    if isinstance(value, (int, float)):
        value = (value,)
    return tuple(float(v) for v in value)


# Fine-tuning options that fairseq's Wav2VecEncoder copies over the pretraining config
# (`arg_overrides` in fairseq/models/wav2vec/wav2vec2_asr.py): fine-tune name -> model name.
_FINETUNE_OVERRIDES = {
    "dropout": "dropout",
    "activation_dropout": "activation_dropout",
    "dropout_input": "dropout_input",
    "attention_dropout": "attention_dropout",
    "mask_length": "mask_length",
    "mask_prob": "mask_prob",
    "mask_channel_length": "mask_channel_length",
    "mask_channel_prob": "mask_channel_prob",
    "layerdrop": "encoder_layerdrop",
    "feature_grad_mult": "feature_grad_mult",
}


@dataclasses.dataclass
class FairseqConfigParts:
    """The parts of a fairseq configuration the importer needs, as plain dicts."""

    model: dict  # architecture (pretraining model section)
    task: dict
    criterion: dict
    finetune: dict | None  # fine-tuning model section (CTC checkpoints)


def config_parts(raw: dict, kind: str) -> FairseqConfigParts:
    """Split a loaded fairseq checkpoint's `cfg` (new) or `args` (old) into its sections."""
    cfg = to_plain(raw.get("cfg"))
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        cfg = resolve_interpolations(cfg)
        model, task, crit = cfg["model"], cfg.get("task") or {}, cfg.get("criterion") or {}
    else:
        args = to_plain(raw.get("args"))
        flat = args if isinstance(args, dict) else {}
        model, task, crit = flat, flat, flat
    if kind != "ctc":
        return FairseqConfigParts(model, task, crit, None)
    finetune = model
    w2v = finetune.get("w2v_args")
    if isinstance(w2v, dict) and isinstance(w2v.get("model"), dict):  # new: a full fairseq config
        w2v = resolve_interpolations(w2v)
        return FairseqConfigParts(w2v["model"], w2v.get("task") or task, w2v.get("criterion") or {}, finetune)
    if isinstance(w2v, dict):  # old: the pretraining argparse namespace
        return FairseqConfigParts(w2v, w2v, w2v, finetune)
    return FairseqConfigParts({}, task, {}, finetune)


def model_fields_from_fairseq(parts: FairseqConfigParts, field_names: set[str]) -> dict:
    """Wav2Vec2Config keyword arguments read from a fairseq config (only fields it names)."""
    out: dict[str, Any] = {}
    for name in field_names:
        if name in parts.model and parts.model[name] is not None:
            out[name] = parts.model[name]
    if parts.finetune:
        for src, dst in _FINETUNE_OVERRIDES.items():
            if parts.finetune.get(src) is not None and dst in field_names:
                out[dst] = parts.finetune[src]
    if "conv_feature_layers" in out:
        out["conv_feature_layers"] = parse_conv_layers(out["conv_feature_layers"])
    for name in ("latent_temp", "loss_weights"):
        if name in out:
            out[name] = _tuple_of_floats(out[name])
    if "loss_weights" in field_names and parts.criterion.get("loss_weights") is not None:
        out["loss_weights"] = _tuple_of_floats(parts.criterion["loss_weights"])
    if "normalize" in field_names and parts.task.get("normalize") is not None:
        out["normalize"] = bool(parts.task["normalize"])
    if "extractor_mode" in out:
        out["extractor_mode"] = str(out["extractor_mode"])
    return out


# ---------------------------------------------------------------------------------------
# State-dict keys


_W2V_RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"^feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)$"),
     r"wav2vec2.feature_extractor.conv_layers.\1.conv.\2"),
    # "default" mode: Fp32GroupNorm is module 2 of layer 0
    (re.compile(r"^feature_extractor\.conv_layers\.(\d+)\.2\.(weight|bias)$"),
     r"wav2vec2.feature_extractor.conv_layers.\1.norm.\2"),
    # "layer_norm" mode: Sequential(TransposeLast, Fp32LayerNorm, TransposeLast) is module 2
    (re.compile(r"^feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)$"),
     r"wav2vec2.feature_extractor.conv_layers.\1.norm.\2"),
    (re.compile(r"^encoder\.pos_conv\.0\.(?:weight_g|parametrizations\.weight\.original0)$"),
     "wav2vec2.encoder.pos_conv.conv.parametrizations.weight.original0"),
    (re.compile(r"^encoder\.pos_conv\.0\.(?:weight_v|parametrizations\.weight\.original1)$"),
     "wav2vec2.encoder.pos_conv.conv.parametrizations.weight.original1"),
    (re.compile(r"^encoder\.pos_conv\.0\.bias$"), "wav2vec2.encoder.pos_conv.conv.bias"),
    (re.compile(r"^((?:layer_norm|post_extract_proj)\.(?:weight|bias)|mask_emb)$"), r"wav2vec2.\1"),
    (re.compile(r"^(encoder\.layers\.\d+\.(?:self_attn\.(?:q|k|v|out)_proj|self_attn_layer_norm|fc1|fc2"
                r"|final_layer_norm)\.(?:weight|bias))$"), r"wav2vec2.\1"),
    (re.compile(r"^(encoder\.layer_norm\.(?:weight|bias))$"), r"wav2vec2.\1"),
]
_PRETRAIN_RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"^(quantizer\.vars|quantizer\.weight_proj\.(?:weight|bias)"
                r"|(?:project_q|final_proj)\.(?:weight|bias))$"), r"\1"),
]
# Buffers fairseq keeps that carry no weights.
_IGNORED = re.compile(r"(^|\.)(_float_tensor|version)$")


def detect_kind(keys: list[str]) -> str:
    """"ctc" for a fine-tuned Wav2Vec2Ctc state dict, "pretrain" for a Wav2Vec2Model one."""
    return "ctc" if any(k.startswith("w2v_encoder.") for k in keys) else "pretrain"


def map_fairseq_state_dict(sd: dict, kind: str) -> tuple[dict, list[str]]:
    """Rename fairseq keys to toolkit keys. Returns (mapped, fairseq keys that matched no rule).

    weight_g/weight_v of the positional convolution become the parametrization's original0/1
    (torch.nn.utils.parametrizations.weight_norm keeps g and v under those names). Floating
    tensors are converted to float32 (released checkpoints are sometimes stored in fp16).
    """
    mapped: dict[str, torch.Tensor] = {}
    unmatched: list[str] = []
    for key, value in sd.items():
        if _IGNORED.search(key):
            continue
        if kind == "ctc":
            if key.startswith("w2v_encoder.proj."):
                new = "proj." + key[len("w2v_encoder.proj."):]
                mapped[new] = _float32(value)
                continue
            if not key.startswith("w2v_encoder.w2v_model."):
                unmatched.append(key)
                continue
            inner, rules = key[len("w2v_encoder.w2v_model."):], _W2V_RULES
        else:
            inner, rules = key, _W2V_RULES + _PRETRAIN_RULES
        for pattern, repl in rules:
            if pattern.match(inner):
                mapped[pattern.sub(repl, inner)] = _float32(value)
                break
        else:
            unmatched.append(key)
    return mapped, unmatched


def _float32(t: Any) -> Any:
    return t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t


# ---------------------------------------------------------------------------------------
# Configuration from tensor shapes (toolkit keys)

_STANDARD_STRIDES = {(10, 3, 3, 3, 3, 2, 2): (5, 2, 2, 2, 2, 2, 2)}
_HEADS_BY_DIM = {768: 12, 1024: 16, 1280: 16, 1920: 16}


def infer_fields_from_shapes(sd: dict, where: str, conv_known: bool = False) -> dict:
    """Wav2Vec2Config fields that the tensor shapes determine (toolkit key names).

    Strides, heads, `layer_norm_first` and `latent_groups` are not visible in shapes: standard
    values are used (strides of the 7-layer extractor, 64-dim heads / 16 heads from 1024 up,
    pre-LN with the layer-norm extractor as in every released LARGE/XLSR model, 2 groups) and
    the guess is logged. A configuration in the checkpoint always wins over these; with
    `conv_known` (it gives `conv_feature_layers`) non-standard kernels are not an error.
    """
    p = "wav2vec2."
    out: dict[str, Any] = {}
    convs = sorted(
        (int(m.group(1)), v.shape) for k, v in sd.items()
        if (m := re.match(rf"^{re.escape(p)}feature_extractor\.conv_layers\.(\d+)\.conv\.weight$", k))
    )
    if convs:
        kernels = tuple(int(s[2]) for _, s in convs)
        strides = _STANDARD_STRIDES.get(kernels)
        if strides is None and not conv_known:
            raise ToolkitError(
                f"{where}: non-standard conv kernels {kernels} and no configuration to read the strides "
                "from; pass the model configuration with --config-json"
            )
        if strides is not None:
            out["conv_feature_layers"] = [(int(s[0]), k, st) for (_, s), k, st in zip(convs, kernels, strides)]
        out["conv_bias"] = f"{p}feature_extractor.conv_layers.0.conv.bias" in sd
        out["extractor_mode"] = (
            "layer_norm" if f"{p}feature_extractor.conv_layers.1.norm.weight" in sd else "default"
        )
    proj = sd.get(f"{p}post_extract_proj.weight")
    if proj is not None:
        dim = int(proj.shape[0])
        out["encoder_embed_dim"] = dim
        out["encoder_attention_heads"] = _HEADS_BY_DIM.get(dim, max(1, dim // 64))
    layers = {int(m.group(1)) for k in sd if (m := re.match(rf"^{re.escape(p)}encoder\.layers\.(\d+)\.", k))}
    if layers:
        out["encoder_layers"] = max(layers) + 1
    fc1 = sd.get(f"{p}encoder.layers.0.fc1.weight")
    if fc1 is not None:
        out["encoder_ffn_embed_dim"] = int(fc1.shape[0])
    v = sd.get(f"{p}encoder.pos_conv.conv.parametrizations.weight.original1")
    if v is not None and proj is not None:
        out["conv_pos"] = int(v.shape[-1])
        out["conv_pos_groups"] = int(proj.shape[0]) // int(v.shape[1])
    if "final_proj.weight" in sd:
        out["final_dim"] = int(sd["final_proj.weight"].shape[0])
    if "quantizer.vars" in sd:
        groups = 2
        gv, per_group = int(sd["quantizer.vars"].shape[1]), int(sd["quantizer.vars"].shape[2])
        out.update(latent_groups=groups, latent_vars=gv // groups, latent_dim=per_group * groups)
    if "extractor_mode" in out:
        out["layer_norm_first"] = out["extractor_mode"] == "layer_norm"
    return out


# ---------------------------------------------------------------------------------------
# Whole conversion


def convert_fairseq(sd: dict, where: str,
                    config: Callable[[str], FairseqConfigParts]) -> tuple[Wav2Vec2Config, dict, str]:
    """(Wav2Vec2Config, toolkit state dict, kind) of a fairseq `model` state dict.

    `config(kind)` gives the configuration sections (`config_parts` of the loaded file); fields
    it lacks are inferred from the tensor shapes, with a warning naming them. One-line
    ToolkitError (naming `where`) for seq2seq models and for weights that map to no toolkit key.
    """
    if any(k.startswith("encoder.w2v_model.") for k in sd):
        raise ToolkitError(f"{where}: this is a fairseq wav2vec2 seq2seq model (encoder.w2v_model.*); "
                           "only pretraining and CTC (w2v_encoder.*) checkpoints can be imported")
    kind = detect_kind(list(sd))
    mapped, unmatched = map_fairseq_state_dict(sd, kind)
    if unmatched:
        more = f" (+{len(unmatched) - 5} more)" if len(unmatched) > 5 else ""
        raise ToolkitError(
            f"{where}: {len(unmatched)} of {len(sd)} weights have no counterpart in a wav2vec 2.0 model: "
            f"{', '.join(unmatched[:5])}{more}; is it a wav2vec 2.0 "
            f"{'CTC' if kind == 'ctc' else 'pretraining'} checkpoint?")
    names = {f.name for f in dataclasses.fields(Wav2Vec2Config)}
    from_cfg = model_fields_from_fairseq(config(kind), names)
    from_shapes = infer_fields_from_shapes(mapped, where, conv_known="conv_feature_layers" in from_cfg)
    guessed = sorted(k for k in from_shapes if k not in from_cfg)
    if guessed:
        log.warning("%s: configuration lacks %s; inferred from tensor shapes / standard values", where, ", ".join(guessed))
    fields = {**from_shapes, **from_cfg}
    cfg = Wav2Vec2Config.from_dict({k: v for k, v in fields.items() if k in names}, where=f"{where} configuration")
    return cfg, mapped, kind

"""`toolkit import-checkpoint`: fairseq / Hugging Face / torchaudio models give the same outputs
after import (random tiny models, parity within 1e-4 relative), unsafe or broken files fail
with one-line errors.

References: torchaudio's `Wav2Vec2Model` (fairseq and torchaudio sources; fairseq key names are
checked against torchaudio's own fairseq key map in helpers_import) and transformers'
`Wav2Vec2ForPreTraining` / `Wav2Vec2ForCTC` (HF sources).
"""
from __future__ import annotations

import re
import argparse
import os
import pickle
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import helpers_import as H  # noqa: E402

from toolkit.cli import main  # noqa: E402
from toolkit.model.checkpoint import build_model, config_of, load_checkpoint  # noqa: E402

torch.set_num_threads(1)


def _without_log_lines(text: str) -> str:
    """Command output minus logging records (`HH:MM:SS LEVEL [logger] ...`)."""
    return "\n".join(l for l in text.strip().splitlines() if not re.match(r"^\d\d:\d\d:\d\d [A-Z]+ \[", l))
TOL = 1e-4


def _import(capsys, source: str, src: Path, out: Path, *extra: str) -> tuple[int, str]:
    capsys.readouterr()  # drop earlier output (save_pretrained progress bars)
    rc = main(["import-checkpoint", "--from", source, str(src), str(out), *extra])
    cap = capsys.readouterr()
    return rc, _without_log_lines(cap.out + cap.err)


def _our_backbone(path: Path) -> tuple[torch.nn.Module, dict]:
    ckpt = load_checkpoint(path)
    return build_model(ckpt).eval(), ckpt


# ---------------------------------------------------------------------------------------
# fairseq


def _save_fairseq(path: Path, mode: str, kind: str, style: str, ta, monkeypatch) -> dict:
    """Write a fairseq checkpoint; "structured" configs pickle classes by fairseq module names,
    which exist (as empty fake modules) only while saving: the importer must not need fairseq."""
    if style in ("omegaconf", "structured"):
        pytest.importorskip("omegaconf")
    with monkeypatch.context() as m:
        for name, module in H.fake_fairseq_modules().items():
            m.setitem(sys.modules, name, module)
        ckpt = H.fairseq_checkpoint(mode, kind, style, ta)
        torch.save(ckpt, path)
    assert "fairseq" not in sys.modules
    return ckpt


@pytest.mark.parametrize("mode,style", [("default", "cfg"), ("layer_norm", "args"), ("layer_norm", "omegaconf"),
                                        ("default", "structured")])
def test_fairseq_pretraining_parity(tmp_path, capsys, monkeypatch, mode, style):
    ta = H.tiny_torchaudio(mode, seed=3)
    src = tmp_path / "fs.pt"
    ckpt = _save_fairseq(src, mode, "pretrain", style, ta, monkeypatch)
    rc, msg = _import(capsys, "fairseq", src, tmp_path / "ours.pt")
    assert rc == 0, msg
    assert "kind pretrain" in msg and "parameters" in msg and len(msg.splitlines()) == 1

    model, saved = _our_backbone(tmp_path / "ours.pt")
    cfg = config_of(saved)
    # configuration read from the fairseq cfg/args, not from defaults
    assert cfg.extractor_mode == mode and cfg.layer_norm_first == (mode == "layer_norm")
    assert cfg.conv_feature_layers == H.CONV and cfg.encoder_attention_heads == H.HEADS
    assert (cfg.final_dim, cfg.latent_vars, cfg.latent_groups) == (H.FINAL_DIM, H.LATENT_VARS, H.LATENT_GROUPS)
    assert cfg.latent_temp == (2.0, 0.5, 0.999995) and cfg.encoder_layerdrop == 0.05
    assert cfg.normalize == (mode == "layer_norm")
    assert cfg.loss_weights == (0.1, 0.0 if mode == "layer_norm" else 10.0)
    # pretraining-only weights come through unchanged
    fs = ckpt["model"]
    assert torch.equal(saved["model"]["quantizer.vars"], fs["quantizer.vars"])
    assert torch.equal(saved["model"]["final_proj.weight"], fs["final_proj.weight"])
    assert torch.equal(saved["model"]["wav2vec2.mask_emb"], fs["mask_emb"])

    wav = H.waveforms()
    with torch.no_grad():
        ref, _ = ta(wav)
        ours = model.wav2vec2(wav).x
        ref_layers, _ = ta.extract_features(wav)
        hidden = model.wav2vec2(wav, output_hidden_states=True).hidden_states
    assert ours.shape == ref.shape
    assert H.rel_err(ours, ref) < TOL
    for i, r in enumerate(ref_layers, 1):
        assert H.rel_err(hidden[i], r) < TOL, f"layer {i}"


@pytest.mark.parametrize("mode,style", [("default", "args"), ("layer_norm", "cfg"), ("layer_norm", "structured")])
def test_fairseq_ctc_parity(tmp_path, capsys, monkeypatch, mode, style):
    tokens = H.write_fairseq_dict(tmp_path / "dict.ltr.txt")
    ta = H.tiny_torchaudio(mode, seed=5, aux=len(tokens))
    src = tmp_path / "ft.pt"
    _save_fairseq(src, mode, "ctc", style, ta, monkeypatch)
    rc, msg = _import(capsys, "fairseq", src, tmp_path / "ctc.pt")
    assert rc == 1 and "--vocab" in msg and len(msg.splitlines()) == 1
    rc, msg = _import(capsys, "fairseq", src, tmp_path / "ctc.pt", "--vocab", str(tmp_path / "dict.ltr.txt"))
    assert rc == 0, msg
    model, saved = _our_backbone(tmp_path / "ctc.pt")
    assert saved["kind"] == "ctc"
    cfg = config_of(saved)
    # fine-tuning overrides (mask_prob 0.5, layerdrop 0.1) win over the pretraining config
    assert cfg.mask_prob == 0.5 and cfg.encoder_layerdrop == 0.1 and cfg.mask_channel_length == 64
    assert cfg.layer_norm_first == (mode == "layer_norm") and cfg.normalize == (mode == "layer_norm")
    vocab = saved["vocab"]
    assert vocab["tokens"][0] == "<blk>" and vocab["tokens"][3] == "<unk>" and vocab["tokens"][4:] == H.LETTERS
    wav = H.waveforms()
    with torch.no_grad():
        logits, _ = ta(wav)
        log_probs, _ = model(wav)
    assert H.rel_err(log_probs, logits.log_softmax(-1)) < TOL


def test_fairseq_fp16_and_shape_fallback(tmp_path, capsys):
    """No configuration at all (cfg and args None) and fp16 weights: shapes decide, float32 out."""
    mode = "layer_norm"
    ta = H.tiny_torchaudio(mode, seed=7)
    ckpt = H.fairseq_checkpoint(mode, "pretrain", "cfg", ta)
    ckpt["cfg"] = None
    ckpt["model"] = {k: v.half() for k, v in ckpt["model"].items()}
    torch.save(ckpt, tmp_path / "bare.pt")
    rc, msg = _import(capsys, "fairseq", tmp_path / "bare.pt", tmp_path / "bare_out.pt")
    assert rc == 0, msg  # heads guessed (logged); every shape-visible field inferred
    # 64-dim models have no standard head count: it must come from a config, so give the heads
    # through a fairseq-style args namespace holding only that field
    ckpt["args"] = argparse.Namespace(encoder_attention_heads=H.HEADS)
    torch.save(ckpt, tmp_path / "heads.pt")
    rc, msg = _import(capsys, "fairseq", tmp_path / "heads.pt", tmp_path / "ours.pt")
    assert rc == 0, msg
    model, saved = _our_backbone(tmp_path / "ours.pt")
    cfg = config_of(saved)
    assert cfg.layer_norm_first and cfg.conv_bias and cfg.conv_pos == H.POS_K and cfg.conv_pos_groups == H.POS_G
    assert all(v.dtype == torch.float32 for v in saved["model"].values() if v.is_floating_point())
    ta_half = ta.half().float()  # the same rounding as the stored weights
    wav = H.waveforms()
    with torch.no_grad():
        ref, _ = ta_half(wav)
        ours = model.wav2vec2(wav).x
    assert H.rel_err(ours, ref) < TOL


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_fairseq_refuses_code_in_pickle(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    ckpt = {"model": {"w": torch.zeros(2)}, "cfg": _Evil(marker)}
    torch.save(ckpt, tmp_path / "evil.pt")
    rc, msg = _import(capsys, "fairseq", tmp_path / "evil.pt", tmp_path / "out.pt")
    assert rc == 1 and len(msg.splitlines()) == 1
    assert "system" in msg and "evil.pt" in msg and "refusing" in msg
    assert not marker.exists() and not (tmp_path / "out.pt").exists()
    # also inside the tensor data structure, and with a protocol-0 pickle (GLOBAL/REDUCE opcodes)
    with open(tmp_path / "evil0.pt", "wb") as f:
        pickle.dump({"model": {}, "args": _Evil(marker)}, f, protocol=0)
    rc, msg = _import(capsys, "fairseq", tmp_path / "evil0.pt", tmp_path / "out.pt")
    assert rc == 1 and not marker.exists()


def test_fairseq_truncated_and_foreign(tmp_path, capsys):
    ta = H.tiny_torchaudio("default", seed=1)
    torch.save(H.fairseq_checkpoint("default", "pretrain", "cfg", ta), tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    rc, msg = _import(capsys, "fairseq", tmp_path / "cut.pt", tmp_path / "o.pt")
    assert rc == 1 and "cut.pt" in msg and "truncated" in msg and len(msg.splitlines()) == 1
    # a bare torchaudio state dict given as fairseq: error names the file and the right option
    torch.save(ta.state_dict(), tmp_path / "ta.pt")
    rc, msg = _import(capsys, "fairseq", tmp_path / "ta.pt", tmp_path / "o.pt")
    assert rc == 1 and "ta.pt" in msg and "--from torchaudio" in msg and len(msg.splitlines()) == 1
    # a fairseq checkpoint of another model: unexpected keys listed with counts
    other = {"model": {"encoder.sentence_encoder.embed_tokens.weight": torch.zeros(3, 2),
                       "decoder.lm_head.bias": torch.zeros(3)}, "cfg": None}
    torch.save(other, tmp_path / "roberta.pt")
    rc, msg = _import(capsys, "fairseq", tmp_path / "roberta.pt", tmp_path / "o.pt")
    assert rc == 1 and "2 of 2 weights" in msg and "embed_tokens" in msg and len(msg.splitlines()) == 1
    # truncated state dict (a layer missing): missing keys listed, file named
    ckpt = H.fairseq_checkpoint("default", "pretrain", "cfg", ta)
    dropped = [k for k in ckpt["model"] if k.startswith("encoder.layers.1.fc")]
    for k in dropped:
        del ckpt["model"][k]
    torch.save(ckpt, tmp_path / "partial.pt")
    rc, msg = _import(capsys, "fairseq", tmp_path / "partial.pt", tmp_path / "o.pt")
    assert rc == 1 and "partial.pt" in msg and f"missing {len(dropped)}" in msg and "fc1" in msg
    assert len(msg.splitlines()) == 1 and not (tmp_path / "o.pt").exists()
    rc, msg = _import(capsys, "fairseq", tmp_path / "nope.pt", tmp_path / "o.pt")
    assert rc == 1 and "nope.pt" in msg and "not found" in msg


# ---------------------------------------------------------------------------------------
# Hugging Face


def _hf_model(cls_name: str, stable: bool, seed: int, **kw):
    import transformers

    cfg = H.hf_tiny_config(feat_extract_norm="layer" if stable else "group", do_stable_layer_norm=stable,
                           conv_bias=stable, **kw)
    torch.manual_seed(seed)
    return H.randomize_(getattr(transformers, cls_name)(cfg), seed)


def _compare_hidden(ours_out, hf_out) -> None:
    """Our hidden_states vs HF's (transformers 5: input of layer 1, then each layer's raw output;
    the final layer norm of pre-LN models only in last_hidden_state)."""
    assert len(hf_out.hidden_states) == H.LAYERS + 1
    assert H.rel_err(ours_out.x, hf_out.last_hidden_state) < TOL
    for i, ref in enumerate(hf_out.hidden_states):
        assert H.rel_err(ours_out.hidden_states[i], ref) < TOL, f"hidden state {i}"


@pytest.mark.parametrize("stable", [False, True])
def test_hf_pretraining_parity(tmp_path, capsys, stable):
    from transformers import Wav2Vec2FeatureExtractor

    hf = _hf_model("Wav2Vec2ForPreTraining", stable, seed=11)
    hf.save_pretrained(tmp_path / "hf")
    # normalisation lives with HF's feature extractor (XLSR models: do_normalize=True)
    Wav2Vec2FeatureExtractor(do_normalize=stable).save_pretrained(tmp_path / "hf")
    rc, msg = _import(capsys, "hf", tmp_path / "hf", tmp_path / "ours.pt")
    assert rc == 0, msg
    model, saved = _our_backbone(tmp_path / "ours.pt")
    assert saved["kind"] == "pretrain"
    cfg = config_of(saved)
    assert cfg.layer_norm_first == stable and cfg.extractor_mode == ("layer_norm" if stable else "default")
    assert cfg.normalize == stable
    assert torch.equal(saved["model"]["quantizer.vars"], hf.quantizer.codevectors.detach())
    wav = H.waveforms()
    with torch.no_grad():
        ref = hf.wav2vec2(wav, output_hidden_states=True)
        ours = model.wav2vec2(wav, output_hidden_states=True)
    _compare_hidden(ours, ref)


def test_hf_ctc_parity_with_pad_last(tmp_path, capsys):
    """Community XLSR fine-tunes put [PAD] (the blank) and [UNK] last: the head is reordered."""
    letters = ["a", "b", "c", "d", "e", "|", "'"]
    vocab = {t: i for i, t in enumerate(letters + ["[UNK]", "[PAD]"])}
    hf = _hf_model("Wav2Vec2ForCTC", True, seed=13, vocab_size=len(vocab), pad_token_id=vocab["[PAD]"])
    hf.save_pretrained(tmp_path / "hf")
    rc, msg = _import(capsys, "hf", tmp_path / "hf", tmp_path / "ctc.pt")
    assert rc == 1 and "vocab" in msg and len(msg.splitlines()) == 1
    H.write_json(tmp_path / "hf" / "vocab.json", vocab)
    rc, msg = _import(capsys, "hf", tmp_path / "hf", tmp_path / "ctc.pt")
    assert rc == 0, msg
    model, saved = _our_backbone(tmp_path / "ctc.pt")
    tokens = saved["vocab"]["tokens"]
    assert tokens[0] == "<blk>" and tokens[1:] == letters + ["<unk>"]
    from toolkit.text.tokenizer import Tokenizer

    tok = Tokenizer.from_dict(saved["vocab"])
    assert tok.decode(tok.encode("bad cab")) == "bad cab"
    order = [vocab["[PAD]"]] + list(range(len(letters) + 1))
    wav = H.waveforms()
    with torch.no_grad():
        ref = hf(wav).logits.log_softmax(-1)[..., order]
        log_probs, lengths = model(wav)
    assert H.rel_err(log_probs, ref) < TOL
    assert (log_probs.argmax(-1) == ref.argmax(-1)).all()


def test_hf_folder_saved_by_a_transformers_5_processor(tmp_path, capsys):
    """transformers 5 saves the feature extractor's do_normalize only in processor_config.json,
    and a Hub fine-tune's <s> </s> in added_tokens.json with head rows for them: both are read,
    and the imported model gives HF's log-probs through HF's own processor."""
    import transformers

    letters = ["<pad>", "|", "a", "b", "c", "d", "e", "<unk>"]
    vocab = {t: i for i, t in enumerate(letters)}
    hf = _hf_model("Wav2Vec2ForCTC", True, seed=37, vocab_size=len(vocab) + 2, pad_token_id=0)
    d = tmp_path / "hf"
    hf.save_pretrained(d)
    H.write_json(tmp_path / "vocab.json", vocab)
    tok = transformers.Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json"), pad_token="<pad>", unk_token="<unk>")
    extractor = transformers.Wav2Vec2FeatureExtractor(do_normalize=True)
    transformers.Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tok).save_pretrained(d)
    assert not (d / "preprocessor_config.json").exists()  # the layout this test is about
    H.write_json(d / "added_tokens.json", {"<s>": len(vocab), "</s>": len(vocab) + 1})
    rc, msg = _import(capsys, "hf", d, tmp_path / "ctc.pt")
    assert rc == 0, msg
    model, saved = _our_backbone(tmp_path / "ctc.pt")
    assert config_of(saved).normalize is True
    tokens = saved["vocab"]["tokens"]
    assert tokens[:8] == ["<blk>", "|", "a", "b", "c", "d", "e", "<unk>"] and len(tokens) == 10
    wav = H.waveforms(n=1) * 0.1  # not unit variance: the result depends on normalising it
    proc = transformers.Wav2Vec2Processor.from_pretrained(d)
    x = proc(wav[0].numpy(), sampling_rate=16000, return_tensors="pt").input_values
    hf.eval()
    from toolkit.model.wav2vec2 import normalize_waveform  # what the toolkit does for normalize=True

    with torch.no_grad():
        ref = hf(x).logits.log_softmax(-1)
        log_probs, _ = model(normalize_waveform(wav))
    # HF's extractor normalises with eps 1e-7, the toolkit (fairseq) with 1e-5; without normalising: 1.7
    assert (log_probs - ref).abs().max() < 2e-2
    assert (log_probs.argmax(-1) == ref.argmax(-1)).all()


def test_an_import_never_writes_over_its_source_or_an_existing_file(tmp_path, capsys):
    hf = _hf_model("Wav2Vec2ForPreTraining", False, seed=41)
    d = tmp_path / "hf"
    hf.save_pretrained(d)
    weights = d / "model.safetensors"
    before = weights.read_bytes()
    rc, msg = _import(capsys, "hf", d, weights, "--force")
    assert rc == 1 and "model.safetensors" in msg and "SRC" in msg and len(msg.splitlines()) == 1, msg
    rc, msg = _import(capsys, "hf", d, d, "--force")
    assert rc == 1 and "SRC itself" in msg
    assert weights.read_bytes() == before
    ta = H.tiny_torchaudio("default", seed=43)
    torch.save(ta.state_dict(), tmp_path / "ta.pt")
    before = (tmp_path / "ta.pt").read_bytes()
    rc, msg = _import(capsys, "torchaudio", tmp_path / "ta.pt", tmp_path / "ta.pt", "--force",
                      "--config-json", '{"num_heads": %d}' % H.HEADS)
    assert rc == 1 and "SRC itself" in msg and len(msg.splitlines()) == 1
    assert (tmp_path / "ta.pt").read_bytes() == before
    # an existing OUT needs --force; the object can be given inline to --config-json
    (tmp_path / "out.pt").write_bytes(b"earlier")
    inline = ["--config-json", '{"num_heads": %d, "normalize": true}' % H.HEADS]
    rc, msg = _import(capsys, "torchaudio", tmp_path / "ta.pt", tmp_path / "out.pt", *inline)
    assert rc == 1 and "out.pt" in msg and "--force" in msg and len(msg.splitlines()) == 1
    assert (tmp_path / "out.pt").read_bytes() == b"earlier"
    rc, msg = _import(capsys, "torchaudio", tmp_path / "ta.pt", tmp_path / "out.pt", *inline, "--force")
    assert rc == 0, msg
    assert config_of(load_checkpoint(tmp_path / "out.pt")).normalize is True


def test_hf_bare_backbone_and_bad_folders(tmp_path, capsys):
    import transformers

    cfg = H.hf_tiny_config()
    torch.manual_seed(0)
    bare = H.randomize_(transformers.Wav2Vec2Model(cfg), 17)
    bare.save_pretrained(tmp_path / "bare")
    rc, msg = _import(capsys, "hf", tmp_path / "bare", tmp_path / "b.pt")
    assert rc == 0, msg
    model, saved = _our_backbone(tmp_path / "b.pt")
    wav = H.waveforms(n=1)
    with torch.no_grad():
        assert H.rel_err(model.wav2vec2(wav).x, bare(wav).last_hidden_state) < TOL
    # weights missing, truncated weights, not a folder
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text((tmp_path / "bare" / "config.json").read_text())
    rc, msg = _import(capsys, "hf", tmp_path / "empty", tmp_path / "x.pt")
    assert rc == 1 and "model.safetensors" in msg and len(msg.splitlines()) == 1
    weights = tmp_path / "bare" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    rc, msg = _import(capsys, "hf", tmp_path / "bare", tmp_path / "x.pt")
    assert rc == 1 and "model.safetensors" in msg and len(msg.splitlines()) == 1
    rc, msg = _import(capsys, "hf", weights, tmp_path / "x.pt")
    assert rc == 1 and "not a folder" in msg


def test_hf_wrong_architecture(tmp_path, capsys):
    """A checkpoint of another config (fewer layers in the weights than config.json says)."""
    hf = _hf_model("Wav2Vec2ForPreTraining", False, seed=19)
    hf.save_pretrained(tmp_path / "hf")
    import json

    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    H.write_json(tmp_path / "hf" / "config.json", cfg)
    rc, msg = _import(capsys, "hf", tmp_path / "hf", tmp_path / "x.pt")
    assert rc == 1 and "missing" in msg and "layers.2" in msg and len(msg.splitlines()) == 1


# ---------------------------------------------------------------------------------------
# torchaudio


@pytest.mark.parametrize("mode", ["default", "layer_norm"])
def test_torchaudio_parity(tmp_path, capsys, mode):
    ta = H.tiny_torchaudio(mode, seed=23)
    torch.save(ta.state_dict(), tmp_path / "ta.pt")
    # 64 dims / 4 heads is not a torchaudio factory size: the head count must be given
    H.write_json(tmp_path / "cfg.json", {"num_heads": H.HEADS, "normalize": True})
    rc, msg = _import(capsys, "torchaudio", tmp_path / "ta.pt", tmp_path / "ours.pt",
                      "--config-json", str(tmp_path / "cfg.json"))
    assert rc == 0, msg
    model, saved = _our_backbone(tmp_path / "ours.pt")
    cfg = config_of(saved)
    assert cfg.encoder_attention_heads == H.HEADS and cfg.normalize
    assert cfg.layer_norm_first == (mode == "layer_norm")
    wav = H.waveforms()
    with torch.no_grad():
        ref, _ = ta(wav)
        ref_layers, _ = ta.extract_features(wav)
        ours = model.wav2vec2(wav, output_hidden_states=True)
    assert H.rel_err(ours.x, ref) < TOL
    for i, r in enumerate(ref_layers, 1):
        assert H.rel_err(ours.hidden_states[i], r) < TOL, f"layer {i}"


def test_torchaudio_ctc_and_errors(tmp_path, capsys):
    tokens = ["<blk>", "|", "e", "t", "a", "<unk>"]
    ta = H.tiny_torchaudio("layer_norm", seed=29, aux=len(tokens))
    torch.save(ta.state_dict(), tmp_path / "ta.pt")
    H.write_json(tmp_path / "cfg.json", {"num_heads": H.HEADS})
    args = ["--config-json", str(tmp_path / "cfg.json")]
    rc, msg = _import(capsys, "torchaudio", tmp_path / "ta.pt", tmp_path / "ctc.pt", *args)
    assert rc == 1 and "--vocab" in msg
    (tmp_path / "tokens.txt").write_text("".join(f"{t} {i}\n" for i, t in enumerate(tokens)))
    rc, msg = _import(capsys, "torchaudio", tmp_path / "ta.pt", tmp_path / "ctc.pt", *args,
                      "--vocab", str(tmp_path / "tokens.txt"))
    assert rc == 0, msg
    model, saved = _our_backbone(tmp_path / "ctc.pt")
    assert saved["kind"] == "ctc" and saved["vocab"]["tokens"] == tokens
    wav = H.waveforms()
    with torch.no_grad():
        logits, _ = ta(wav)
        log_probs, _ = model(wav)
    assert H.rel_err(log_probs, logits.log_softmax(-1)) < TOL
    # a fairseq checkpoint given as torchaudio: the error names the file and the keys found
    torch.save(H.fairseq_checkpoint("default", "pretrain", "cfg", H.tiny_torchaudio("default")), tmp_path / "fs.pt")
    rc, msg = _import(capsys, "torchaudio", tmp_path / "fs.pt", tmp_path / "x.pt")
    assert rc == 1 and "fs.pt" in msg and "'model'" in msg and len(msg.splitlines()) == 1
    # an unknown --config-json key
    H.write_json(tmp_path / "bad.json", {"num_heads": 4, "heads_typo": 3})
    rc, msg = _import(capsys, "torchaudio", tmp_path / "ta.pt", tmp_path / "x.pt", "--config-json", str(tmp_path / "bad.json"))
    assert rc == 1 and "heads_typo" in msg and len(msg.splitlines()) == 1


def test_fairseq_legacy_serialization_and_safe_layer_spec(tmp_path, capsys):
    """Checkpoints from torch < 1.6 (non-zip format); conv specs are parsed, never evaluated."""
    from toolkit.model.fairseq_io import parse_conv_layers
    from toolkit.utils import ToolkitError

    ta = H.tiny_torchaudio("default", seed=41)
    torch.save(H.fairseq_checkpoint("default", "pretrain", "args", ta), tmp_path / "old.pt",
               _use_new_zipfile_serialization=False)
    rc, msg = _import(capsys, "fairseq", tmp_path / "old.pt", tmp_path / "ours.pt")
    assert rc == 0, msg
    model, _ = _our_backbone(tmp_path / "ours.pt")
    wav = H.waveforms(n=1)
    with torch.no_grad():
        assert H.rel_err(model.wav2vec2(wav).x, ta(wav)[0]) < TOL
    standard = [(512, 10, 5), (512, 3, 2), (512, 3, 2), (512, 3, 2), (512, 3, 2), (512, 2, 2), (512, 2, 2)]
    assert parse_conv_layers("[(512,10,5)] + [(512,3,2)]*4 + [(512,2,2)]*2") == standard
    with pytest.raises(ToolkitError, match="conv_feature_layers"):
        parse_conv_layers("[(512,10,5)] + __import__('os').system('true')")

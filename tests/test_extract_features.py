"""`toolkit extract-features`: layer outputs of an imported model equal the source library's
(transformers / torchaudio) on the same audio; resampling, downmixing, normalisation and
one-line errors for bad input."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

sys.path.insert(0, str(Path(__file__).parent))
import helpers_import as H  # noqa: E402

from toolkit.cli import main  # noqa: E402

torch.set_num_threads(1)


def _without_log_lines(text: str) -> str:
    """Command output minus logging records (`HH:MM:SS LEVEL [logger] ...`)."""
    return "\n".join(l for l in text.strip().splitlines() if not re.match(r"^\d\d:\d\d:\d\d [A-Z]+ \[", l))
TOL = 1e-4
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hf_ckpt(tmp_path_factory):
    """A random pre-LN (XLSR-like) HF model and its toolkit import."""
    import transformers

    d = tmp_path_factory.mktemp("hf")
    cfg = H.hf_tiny_config(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
    torch.manual_seed(0)
    hf = H.randomize_(transformers.Wav2Vec2Model(cfg), 31)
    hf.save_pretrained(d / "hf")
    assert main(["import-checkpoint", "--from", "hf", str(d / "hf"), str(d / "ckpt.pt")]) == 0
    return hf, d / "ckpt.pt"


def _extract(capsys, ckpt: Path, audio: Path, out: Path, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["extract-features", "--checkpoint", str(ckpt), *extra, str(audio), str(out)])
    cap = capsys.readouterr()
    return rc, _without_log_lines(cap.out + cap.err)


def _hf_layers(hf, wav: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    with torch.no_grad():
        out = hf(wav[None], output_hidden_states=True)
    return [h[0] for h in out.hidden_states], out.last_hidden_state[0]


def test_layers_equal_hf(tmp_path, capsys, hf_ckpt):
    hf, ckpt = hf_ckpt
    wav = H.waveforms(n=1, samples=16000, seed=2)[0]
    audio = H.write_wav(tmp_path / "a.wav", wav.numpy())
    ref_wav = torch.from_numpy(sf.read(str(audio), dtype="float32")[0])
    layers, final = _hf_layers(hf, ref_wav)
    rc, msg = _extract(capsys, ckpt, audio, tmp_path / "final.npy")
    assert rc == 0, msg
    got = np.load(tmp_path / "final.npy")
    assert got.dtype == np.float32 and got.shape == (49, H.DIM)  # 1 s -> 49 frames
    assert H.rel_err(torch.from_numpy(got), final) < TOL
    for layer in range(H.LAYERS + 1):
        out = tmp_path / f"l{layer}.feats"  # any output name; nothing appended
        rc, msg = _extract(capsys, ckpt, audio, out, "--layer", str(layer))
        assert rc == 0, msg
        assert H.rel_err(torch.from_numpy(np.load(out)), layers[layer]) < TOL, f"layer {layer}"
    # pre-LN: the last layer's raw output is not the final (layer-normed) output
    assert H.rel_err(torch.from_numpy(np.load(tmp_path / f"l{H.LAYERS}.feats")), final) > 1e-2


def test_resamples_and_downmixes(tmp_path, capsys, hf_ckpt):
    hf, ckpt = hf_ckpt
    g = torch.Generator().manual_seed(3)
    stereo = (0.3 * torch.randn(4000, 2, generator=g)).numpy()  # 0.5 s at 8 kHz
    audio = H.write_wav(tmp_path / "s8k.wav", stereo, rate=8000)
    rc, msg = _extract(capsys, ckpt, audio, tmp_path / "o.npy")
    assert rc == 0, msg
    mono = torch.from_numpy(sf.read(str(audio), dtype="float32")[0]).mean(dim=1)
    ref16 = AF.resample(mono, 8000, 16000)
    assert ref16.numel() == 8000
    _, final = _hf_layers(hf, ref16)
    got = torch.from_numpy(np.load(tmp_path / "o.npy"))
    assert got.shape == (24, H.DIM)  # 8000 samples at 16 kHz
    assert H.rel_err(got, final) < TOL


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_ffmpeg_fallback_for_other_formats(tmp_path, capsys, hf_ckpt):
    """AAC (.m4a) is not a libsndfile format: decoded by ffmpeg to 16 kHz mono."""
    _, ckpt = hf_ckpt
    audio = tmp_path / "a.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=0.5",
                    "-ar", "22050", "-c:a", "aac", str(audio)], check=True)
    rc, msg = _extract(capsys, ckpt, audio, tmp_path / "o.npy")
    assert rc == 0, msg
    frames = np.load(tmp_path / "o.npy").shape[0]
    assert abs(frames - 24) <= 2  # 0.5 s (the AAC encoder pads a few ms)


def test_normalize_from_config(tmp_path, capsys):
    """A model trained with normalize=True sees a zero-mean unit-variance waveform."""
    ta = H.tiny_torchaudio("layer_norm", seed=37)
    torch.save(ta.state_dict(), tmp_path / "ta.pt")
    H.write_json(tmp_path / "cfg.json", {"num_heads": H.HEADS, "normalize": True})
    assert main(["import-checkpoint", "--from", "torchaudio", str(tmp_path / "ta.pt"), str(tmp_path / "c.pt"),
                 "--config-json", str(tmp_path / "cfg.json")]) == 0
    wav = 0.05 + 0.2 * H.waveforms(n=1, samples=12000, seed=4)[0]  # offset and scale matter
    audio = H.write_wav(tmp_path / "a.wav", wav.numpy())
    rc, msg = _extract(capsys, tmp_path / "c.pt", audio, tmp_path / "o.npy", "--layer", "1")
    assert rc == 0, msg
    x = torch.from_numpy(sf.read(str(audio), dtype="float32")[0])[None]
    normed = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-5)
    with torch.no_grad():
        ref, _ = ta.extract_features(normed, num_layers=1)
        raw, _ = ta.extract_features(x, num_layers=1)
    got = torch.from_numpy(np.load(tmp_path / "o.npy"))
    assert H.rel_err(got, ref[-1][0]) < TOL
    assert H.rel_err(got, raw[-1][0]) > 1e-2


def test_bad_input_errors(tmp_path, capsys, hf_ckpt):
    _, ckpt = hf_ckpt
    short = H.write_wav(tmp_path / "short.wav", np.zeros(300, dtype=np.float32))
    rc, msg = _extract(capsys, ckpt, short, tmp_path / "o.npy")
    assert rc == 1 and "short.wav" in msg and "too short" in msg and "300" in msg and len(msg.splitlines()) == 1
    assert not (tmp_path / "o.npy").exists()
    rc, msg = _extract(capsys, ckpt, tmp_path / "missing.wav", tmp_path / "o.npy")
    assert rc == 1 and "missing.wav" in msg and "not found" in msg
    (tmp_path / "junk.wav").write_bytes(b"RIFF\x00\x00junk" + bytes(range(256)) * 4)
    rc, msg = _extract(capsys, ckpt, tmp_path / "junk.wav", tmp_path / "o.npy")
    assert rc == 1 and "junk.wav" in msg and "cannot decode" in msg and len(msg.splitlines()) == 1
    ok = H.write_wav(tmp_path / "ok.wav", np.zeros(4000, dtype=np.float32))
    rc, msg = _extract(capsys, ckpt, ok, tmp_path / "o.npy", "--layer", str(H.LAYERS + 1))
    assert rc == 1 and "--layer" in msg and f"0..{H.LAYERS}" in msg
    rc, msg = _extract(capsys, ckpt, ok, tmp_path / "o.npy", "--device", "bogus")
    assert rc == 1 and "--device" in msg and len(msg.splitlines()) == 1
    (tmp_path / "fake.pt").write_bytes(b"not a checkpoint")
    rc, msg = _extract(capsys, tmp_path / "fake.pt", ok, tmp_path / "o.npy")
    assert rc == 1 and "fake.pt" in msg and len(msg.splitlines()) == 1
    assert not (tmp_path / "o.npy").exists()


def test_an_output_over_an_input_or_a_foreign_file_is_refused_and_nothing_changes(tmp_path, capsys, hf_ckpt):
    """Swapped or repeated arguments: OUT naming the audio, the checkpoint (also through a link)
    or any file that is not an earlier .npy is refused, byte for byte untouched; an earlier .npy
    is replaced."""
    _, ckpt = hf_ckpt
    d = tmp_path / "d"
    d.mkdir()
    model = d / "model.pt"
    shutil.copy(ckpt, model)
    (d / "link.pt").symlink_to(model)
    ok = H.write_wav(d / "ok.wav", 0.1 * np.ones(8000, dtype=np.float32))
    (d / "notes.txt").write_text("my notes\n")
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    for out, words in ((ok, "the audio itself"), (model, "--checkpoint itself"),
                       (d / "link.pt", "--checkpoint itself"), (d / "notes.txt", "not a .npy")):
        rc, msg = _extract(capsys, model, ok, out)
        assert rc == 1 and str(out) in msg and words in msg and len(msg.splitlines()) == 1, msg
    rc, msg = _extract(capsys, d / "link.pt", ok, model)
    assert rc == 1 and "--checkpoint itself" in msg
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    np.save(d / "old.npy", np.zeros(3, dtype=np.float32))
    rc, msg = _extract(capsys, model, ok, d / "old.npy")
    assert rc == 0, msg
    assert np.load(d / "old.npy").shape == (24, H.DIM)


def test_cli_exit_codes_subprocess(tmp_path, hf_ckpt):
    """The installed entry point: exit 0 with a summary line, exit 1 with one error line."""
    _, ckpt = hf_ckpt
    exe = ROOT / ".venv" / "bin" / "toolkit"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "toolkit.cli"]
    ok = H.write_wav(tmp_path / "ok.wav", 0.1 * np.ones(8000, dtype=np.float32))
    p = subprocess.run([*cmd, "extract-features", "--checkpoint", str(ckpt), str(ok), str(tmp_path / "o.npy")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert np.load(tmp_path / "o.npy").shape == (24, H.DIM)
    short = H.write_wav(tmp_path / "short.wav", np.zeros(300, dtype=np.float32))
    p = subprocess.run([*cmd, "extract-features", "--checkpoint", str(ckpt), str(short), str(tmp_path / "x.npy")],
                       capture_output=True, text=True)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "too short" in p.stderr

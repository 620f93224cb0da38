"""`toolkit transcribe`: inputs of every kind, the block reader against whole-file loading, the
chunked inference's frame arithmetic, segments cut between words, forced-alignment times and
confidences, every output format read back by real tools, and the error cases.

Audio is tone "speech" (tests/tone_speech.py): sentences of the four words of graph_fixtures,
each letter a tone, word boundaries known to the sample. Transcript correctness and word times are
checked with its ToneDetector (an acoustic model of exact timing) through the transcriber; the
command, the exports and their runtimes are checked against each other and against the model run
directly, with a tiny-preset checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from graph_fixtures import FOUR_WORDS, ctc_frames, four_word_lang, spell_ids
from tone_speech import random_sentence, say
from toolkit.cli import main
from toolkit.utils import ToolkitError

SR = 16000


# ---------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def lang(tmp_path_factory):
    return four_word_lang(tmp_path_factory.mktemp("lang") / "lang")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory, lang):
    """(checkpoint path, model, tokenizer, cfg): a tiny-preset CTC model (random weights, Transformer
    layers, group-norm CNN) as fine-tuning writes it, language included. Its transcripts are
    arbitrary but fixed, so commands and runtimes are checked against each other and against the
    model run directly; transcript *correctness* and word times are checked with ToneDetector."""
    from toolkit.model.checkpoint import save_checkpoint
    from toolkit.model.presets import get_preset
    from toolkit.model.wav2vec2 import Wav2Vec2ForCTC
    from toolkit.text.tokenizer import Tokenizer

    torch.manual_seed(0)
    tok = Tokenizer.from_lang_dir(lang)
    cfg = get_preset("tiny")
    model = Wav2Vec2ForCTC(cfg, tok.vocab_size).eval()
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    save_checkpoint(path, model, cfg, "ctc", vocab={**tok.to_dict(), "language": "xx"})
    return path, model, tok, cfg


def greedy_of(model, tok, wav: np.ndarray) -> str:
    from toolkit.decode.greedy import greedy_decode

    with torch.inference_mode():
        lp, n = model(torch.from_numpy(wav)[None])
    return greedy_decode(lp, n, tok)[0]


def write_sentences(folder: Path, n: int, seed: int, rate: int = SR, channels: int = 1, suffix: str = ".wav"):
    """n tone sentences as files; {id: (words, [(word, start, end)])}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i in range(n):
        words = random_sentence(rng, FOUR_WORDS)
        wav, bounds = say(words, rng)
        if rate != SR:
            import torchaudio.functional as AF

            wav = AF.resample(torch.from_numpy(wav), SR, rate).numpy()
        if channels > 1:
            wav = np.stack([wav] * channels, axis=1)
        sf.write(folder / f"s{seed}_{i}{suffix}", wav, rate)
        truth[f"s{seed}_{i}"] = (words, bounds)
    return truth


def run_cli(args: list[str]) -> int:
    return main(["transcribe", "--no-progress", *map(str, args)])


def read_text(path: Path) -> dict[str, str]:
    from toolkit.score.cli import read_kaldi_text

    return read_kaldi_text(path, "--hyp")


def ffmpeg(*args) -> subprocess.CompletedProcess:
    from toolkit import external

    return subprocess.run([external.require("ffmpeg", "in the tests"), "-nostdin", "-v", "error", "-y", *map(str, args)],
                          capture_output=True, text=True)


# ---------------------------------------------------------------------------------------------- audio

def test_block_reader_equals_whole_file_loading(tmp_path):
    """Any rate/channel count/format, read in blocks, is what toolkit.model.extract.load_audio gives."""
    from toolkit.model.extract import load_audio
    from toolkit.transcribe.audio import AudioItem, AudioReader

    rng = np.random.default_rng(0)
    files = {}
    sf.write(tmp_path / "a.wav", 0.1 * rng.standard_normal(SR * 3).astype(np.float32), SR)
    sf.write(tmp_path / "b.flac", 0.1 * rng.standard_normal((44100 * 3 + 17, 2)).astype(np.float32), 44100)
    sf.write(tmp_path / "c.wav", 0.1 * rng.standard_normal((8000 * 2 + 3, 3)).astype(np.float32), 8000)
    files = ["a.wav", "b.flac", "c.wav"]
    r = ffmpeg("-i", tmp_path / "b.flac", "-c:a", "aac", tmp_path / "d.m4a")
    assert r.returncode == 0, r.stderr
    files.append("d.m4a")  # not a soundfile format: the ffmpeg path
    for name in files:
        whole = load_audio(tmp_path / name)
        with AudioReader(AudioItem(name, str(tmp_path / name), tmp_path / name)) as reader:
            assert reader.num_samples == whole.numel(), name
            blocks = torch.cat([reader.read(a, a + 7919) for a in range(0, reader.num_samples, 7919)])
            assert torch.allclose(blocks, whole, atol=2e-6), (name, float((blocks - whole).abs().max()))
            for a, b in [(0, 1), (12345, 23456), (reader.num_samples - 5, reader.num_samples + 100)]:
                assert torch.allclose(reader.read(a, b), whole[a:b], atol=2e-6), (name, a, b)
            tmpdir = reader._tmpdir.name if reader._tmpdir else None
        if name == "d.m4a":
            assert tmpdir and not Path(tmpdir).exists()  # the decoded copy is gone after close


def test_inputs_of_every_kind(tmp_path):
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    from toolkit.transcribe.audio import AudioReader, collect_inputs

    rng = np.random.default_rng(0)
    (tmp_path / "dir" / "spk1").mkdir(parents=True)
    for rel in ["dir/x.wav", "dir/spk1/y.flac", "dir/spk1/z one.wav", "single.wav", "stereo.wav"]:
        ch = 2 if "stereo" in rel else 1
        sf.write(tmp_path / rel, 0.1 * rng.standard_normal((SR, ch)).astype(np.float32), SR)
    (tmp_path / "dir" / "notes.txt").write_text("not audio")
    scp = tmp_path / "data" / "wav.scp"
    scp.parent.mkdir()
    scp.write_text(f"utt1 {tmp_path / 'single.wav'}\nutt2 ../dir/x.wav\nutt3 sox a.wav -t wav - |\nbroken\n")
    rec = Recording.from_file(tmp_path / "stereo.wav", recording_id="rec-st")
    RecordingSet.from_recordings([rec]).to_file(tmp_path / "recs.jsonl.gz")
    cut = rec.to_cut().truncate(offset=0.25, duration=0.5)
    cut = cut.with_channels(1) if hasattr(cut, "with_channels") else cut
    cut.supervisions = [SupervisionSegment("sup", "rec-st", 0.25, 0.5, channel=1, language="xx")]
    CutSet.from_cuts([cut]).to_file(tmp_path / "cuts.jsonl.gz")
    SupervisionSet.from_segments(cut.supervisions).to_file(tmp_path / "sups.jsonl.gz")

    items, failed = collect_inputs([str(tmp_path / "dir"), str(scp), str(tmp_path / "recs.jsonl.gz"),
                                    str(tmp_path / "cuts.jsonl.gz"), str(tmp_path / "missing.wav"),
                                    str(tmp_path / "sups.jsonl.gz"), str(tmp_path / "data")])
    assert [i.id for i in items] == ["spk1-y", "spk1-z_one", "x", "utt1", "utt2", "rec-st", cut.id]
    assert items[4].path.resolve() == (tmp_path / "dir" / "x.wav").resolve()  # relative to the scp's folder
    reasons = " | ".join(m for _, m in failed)
    assert "utt3: piped commands are not run" in reasons and "wav.scp:4: expected 'utt-id path'" in reasons
    assert "missing.wav: no such file or folder" in reasons
    assert "SupervisionSet has no audio" in reasons and "data: no audio files below this folder" in reasons
    # the cut: 0.5 s from 0.25 s of channel 1 only
    lcut = items[-1]
    assert lcut.language == "xx"
    with AudioReader(lcut) as r:
        got = r.read(0, r.num_samples)
    data, _ = sf.read(tmp_path / "stereo.wav", dtype="float32")
    assert torch.allclose(got, torch.from_numpy(data[4000:12000, 1]))
    with pytest.raises(ToolkitError, match="given twice"):
        collect_inputs([str(tmp_path / "single.wav"), str(tmp_path / "single.wav")])


# ---------------------------------------------------------------------------------------------- chunking

def local_model(vocab: int = 7):
    """A CTC model whose outputs depend on nearby audio only (layer-norm CNN, no Transformer layer):
    chunked inference must reproduce its whole-recording output wherever the context covers that."""
    from toolkit.model.presets import get_preset
    from toolkit.model.wav2vec2 import Wav2Vec2ForCTC

    torch.manual_seed(0)
    cfg = get_preset("tiny", extractor_mode="layer_norm", encoder_layers=0, conv_pos=16, conv_pos_groups=16)
    return Wav2Vec2ForCTC(cfg, vocab).eval()


@pytest.mark.parametrize("samples", [400, 719, 16000 * 7 + 123, 16000 * 23 + 320 * 5 + 80])
def test_chunked_log_probs_are_the_whole_recordings_frames(samples):
    from toolkit.decode.chunking import ChunkOptions, chunked_log_probs

    model = local_model()
    wav = 0.1 * torch.randn(samples, generator=torch.Generator().manual_seed(samples))
    with torch.inference_mode():
        whole = model(wav[None])[0][0]
    for opts in [ChunkOptions(2.0, 0.5), ChunkOptions(3.0, 0.3, batch_windows=3), ChunkOptions(30.0, 2.0)]:
        got = chunked_log_probs(model, wav, opts)
        assert got.shape == whole.shape, opts
        assert torch.allclose(got, whole, atol=1e-5), (opts, float((got - whole).abs().max()))


def test_one_window_is_exactly_one_forward_and_bad_options_are_refused():
    from toolkit.model.presets import get_preset
    from toolkit.model.wav2vec2 import Wav2Vec2ForCTC
    from toolkit.decode.chunking import ChunkOptions, chunked_log_probs

    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(get_preset("tiny"), 7).eval()
    wav = 0.1 * torch.randn(16000 * 4)
    with torch.inference_mode():
        whole = model(wav[None])[0][0]
    assert torch.equal(chunked_log_probs(model, wav, ChunkOptions(5.0, 1.0)), whole)
    long = chunked_log_probs(model, 0.1 * torch.randn(16000 * 9), ChunkOptions(2.0, 0.4))
    assert long.shape[0] == model.wav2vec2.output_lengths(torch.tensor([16000 * 9])).item()
    with pytest.raises(ToolkitError, match="less than half"):
        chunked_log_probs(model, wav, ChunkOptions(2.0, 1.0))


def test_segments_cut_between_words_leave_greedy_unchanged(lang):
    from toolkit.decode.greedy import greedy_decode
    from toolkit.text.tokenizer import Tokenizer
    from toolkit.decode.chunking import iter_segments

    tok = Tokenizer.from_lang_dir(lang)
    rng = np.random.default_rng(0)
    sentence = " ".join(random_sentence(rng, FOUR_WORDS, (60, 60)))
    lp = torch.from_numpy(ctc_frames(spell_ids(lang, sentence), tok.vocab_size, frames_per_token=3, seed=1))
    whole = greedy_decode(lp[None], None, tok)[0]
    assert whole == sentence
    blocks = [(a, lp[a: a + 37]) for a in range(0, lp.shape[0], 37)]
    segs = list(iter_segments(iter(blocks), tok, max_frames=50))
    assert len(segs) > 5 and all(s.shape[0] <= 100 for _, s in segs)
    assert [a for a, _ in segs] == list(np.cumsum([0] + [s.shape[0] for _, s in segs[:-1]]))
    texts = [greedy_decode(s[None], None, tok)[0] for _, s in segs]
    assert " ".join(texts) == whole  # no word was cut in two, nothing lost or doubled


# ---------------------------------------------------------------------------------------------- alignment

def test_forced_alignment_times_and_confidences_on_known_posteriors(lang):
    from toolkit.text.tokenizer import Tokenizer
    from toolkit.transcribe.align import align_words

    tok = Tokenizer.from_lang_dir(lang)
    ids = spell_ids(lang, "ab cob")  # a b | c o b |
    # ctc_frames: blank, then each token on 2 frames followed by a blank -> token k at frames 1+3k, 2+3k
    lp = ctc_frames(ids, tok.vocab_size, frames_per_token=2, peak=12.0, noise=0.0)
    words = align_words(torch.from_numpy(lp), "ab cob", tok, offset=10.0)
    assert [w.word for w in words] == ["ab", "cob"]
    # "ab": a at frames 1-2, b at 4-5 -> [0.02, 0.12); "cob": c at 10-11 ... b at 16-17 -> [0.20, 0.36)
    assert [(w.start, w.end) for w in words] == [(10.02, 10.12), (10.2, 10.36)]
    assert all(w.confidence > 0.99 for w in words)
    # the 'o' of "cob" half-way to 'a': the word's confidence is about that letter's posterior
    amb = ctc_frames(ids, tok.vocab_size, frames_per_token=2, peak=12.0, noise=0.0,
                     ambiguous={4: [tok.token_to_id["a"]]})
    words = align_words(torch.from_numpy(amb), "ab cob", tok)
    p_o = float(np.exp(amb[13, tok.token_to_id["o"]]))
    assert words[0].confidence > 0.99 and abs(words[1].confidence - p_o) < 0.01 and 0.4 < p_o < 0.6
    with pytest.raises(ToolkitError, match="does not fit"):
        align_words(torch.from_numpy(lp[:4]), "ab cob", tok)


# ---------------------------------------------------------------------------------------------- the command

def within_frames(got: float, want: float, frames: int = 2) -> bool:
    return abs(got - want) <= frames * 0.02 + 1e-6


def test_transcribe_folders_every_format(tmp_path, tiny):
    ckpt, model, tok, cfg = tiny
    truth = write_sentences(tmp_path / "in", 4, seed=1)
    sub = write_sentences(tmp_path / "in" / "sub", 2, seed=2, rate=44100, channels=2, suffix=".flac")
    truth.update({f"sub-{k}": v for k, v in sub.items()})
    out = tmp_path / "out"
    assert run_cli(["--checkpoint", ckpt, "--format", "text,jsonl,ctm,srt,vtt", "--out-dir", out, tmp_path / "in"]) == 0
    hyps = read_text(out / "text")
    assert set(hyps) == set(truth)
    # the 16 kHz files: what the model gives on the file read directly; the 44.1 kHz stereo ones go
    # through resampling and downmixing (checked against load_audio in test_block_reader...)
    from toolkit.model.extract import load_audio

    for k in truth:
        path = next((tmp_path / "in").rglob(f"{k.split('-')[-1]}.*"))
        assert hyps[k] == greedy_of(model, tok, load_audio(path).numpy()), k
    # a real scorer reads the Kaldi text
    (tmp_path / "ref").write_text("".join(f"{k} {' '.join(w)}\n" for k, (w, _) in truth.items()))
    assert main(["score", "--ref", str(tmp_path / "ref"), "--hyp", str(out / "text"), "--out-dir", str(tmp_path / "sc")]) == 0
    assert json.loads((tmp_path / "sc" / "results.json").read_text())["num_sentences"] == len(truth)

    rows = [json.loads(line) for line in (out / "transcripts.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == sorted(truth)  # folder order (sorted paths)
    for r in rows:
        assert r["text"] == hyps[r["id"]] and r["language"] == "xx" and r["duration"] > 0
        assert [w["word"] for w in r["words"]] == r["text"].split()
        assert all(0.0 <= w["confidence"] <= 1.0 and 0 <= w["start"] < w["end"] <= r["duration"] + 0.03
                   for w in r["words"])
        assert all(a["end"] <= b["start"] for a, b in zip(r["words"], r["words"][1:]))
    # CTM: the same words and times
    ctm = [line.split() for line in (out / "ctm").read_text().splitlines()]
    flat = [(r["id"], w) for r in rows for w in r["words"]]
    assert len(ctm) == len(flat) > 0
    for (uid, w), (cid, ch, start, dur, word, conf) in zip(flat, ctm):
        assert (cid, ch, word) == (uid, "1", w["word"])
        assert abs(float(start) - w["start"]) < 0.006 and abs(float(start) + float(dur) - w["end"]) < 0.011
        assert abs(float(conf) - w["confidence"]) < 1e-3
    # subtitles: ffmpeg reads both and converts each into the other
    for r in rows:
        srt, vtt = out / "srt" / f"{r['id']}.srt", out / "vtt" / f"{r['id']}.vtt"
        assert vtt.read_text().startswith("WEBVTT\n")
        back = ffmpeg("-i", srt, tmp_path / f"{r['id']}.vtt")
        assert back.returncode == 0, back.stderr
        cues = (tmp_path / f"{r['id']}.vtt").read_text().split("\n\n")
        assert ffmpeg("-i", vtt, tmp_path / f"{r['id']}.srt").returncode == 0
        import html

        assert (html.unescape(" ".join(" ".join(c.splitlines()[1:]) for c in cues if "-->" in c)).split()
                == r["text"].split())
        if r["words"]:
            first = next(c for c in cues if "-->" in c).splitlines()[0].split(" --> ")[0]
            seconds = sum(float(x) * 60 ** i for i, x in enumerate(reversed(first.split(":"))))
            assert abs(seconds - r["words"][0]["start"]) < 0.0015


def test_batching_and_chunking_do_not_change_transcripts(tmp_path, tiny):
    from toolkit.decode.greedy import greedy_decode
    from toolkit.decode.chunking import ChunkOptions, chunked_log_probs

    ckpt, model, tok, cfg = tiny
    write_sentences(tmp_path / "in", 5, seed=3)
    outs = {}
    for name, extra in {"batched": ["--max-duration", "1000"], "alone": ["--max-duration", "0.5"]}.items():
        assert run_cli(["--checkpoint", ckpt, "--format", "jsonl", "--out-dir", tmp_path / name, *extra,
                        tmp_path / "in"]) == 0
        outs[name] = (tmp_path / name / "transcripts.jsonl").read_text()
    assert outs["batched"] == outs["alone"]
    # a recording longer than one window: the command's text is the greedy text of the windowed
    # log-probs (segments: test_segments_cut... and the ToneDetector test)
    rng = np.random.default_rng(4)
    wav = np.concatenate([say(random_sentence(rng, FOUR_WORDS), rng)[0] for _ in range(40)])
    sf.write(tmp_path / "long.wav", wav, SR)
    assert wav.size > 6 * 8 * SR
    assert run_cli(["--checkpoint", ckpt, "--format", "jsonl", "--out-dir", tmp_path / "long", "--chunk-s", "8",
                    "--context-s", "1.5", "--max-segment-s", "100", tmp_path / "long.wav"]) == 0
    row = json.loads((tmp_path / "long" / "transcripts.jsonl").read_text())
    wav = sf.read(tmp_path / "long.wav", dtype="float32")[0]  # as stored (16-bit PCM)
    lp = chunked_log_probs(model, torch.from_numpy(wav), ChunkOptions(8.0, 1.5))
    assert row["text"] == greedy_decode(lp[None], None, tok)[0]
    assert row["duration"] == pytest.approx(wav.size / SR, abs=1e-3)
    assert all(a["end"] <= b["start"] for a, b in zip(row["words"], row["words"][1:]))


def test_wav_scp_manifests_and_hlg(tmp_path, tiny, lang):
    from lhotse import CutSet, Recording, SupervisionSegment

    ckpt, *_ = tiny
    truth = write_sentences(tmp_path / "w", 3, seed=5)
    (tmp_path / "wav.scp").write_text("".join(f"utt-{k} w/{k}.wav\n" for k in truth))
    cuts = []
    for k in truth:
        rec = Recording.from_file(tmp_path / "w" / f"{k}.wav", recording_id=k)
        cut = rec.to_cut()
        cut.supervisions = [SupervisionSegment(k, k, 0.0, rec.duration, language="xx")]
        cuts.append(cut)
    CutSet.from_cuts(cuts).to_file(tmp_path / "cuts.jsonl.gz")
    out = tmp_path / "out"
    from toolkit.lm.graph import compile_graphs

    compile_graphs(lang, lang / "lm.arpa")  # transcribe never builds graphs
    assert run_cli(["--checkpoint", ckpt, "--method", "hlg", "--lang-dir", lang,
                    "--out-dir", out, tmp_path / "wav.scp", tmp_path / "cuts.jsonl.gz"]) == 0
    hyps = read_text(out / "text")
    assert set(hyps) == {f"utt-{k}" for k in truth} | {c.id for c in cuts}
    for k, (words, _) in truth.items():
        assert set(hyps[f"utt-{k}"].split()) <= set(FOUR_WORDS)
        assert hyps[f"utt-{k}"] == hyps[cuts[list(truth).index(k)].id]


def test_bad_inputs_are_named_and_the_rest_transcribed(tmp_path, tiny, lang, capsys):
    from graph_fixtures import char_lang

    ckpt, *_ = tiny
    truth = write_sentences(tmp_path / "in", 2, seed=6)
    (tmp_path / "in" / "broken.wav").write_bytes(b"RIFF....not a wav")
    sf.write(tmp_path / "in" / "tiny.wav", np.zeros(100, np.float32), SR)
    out = tmp_path / "out"
    capsys.readouterr()
    assert run_cli(["--checkpoint", ckpt, "--out-dir", out, tmp_path / "in", tmp_path / "nothing.wav"]) == 1
    err = capsys.readouterr().err
    assert "3 input(s) failed" in err and "the other 2 were transcribed" in err
    assert set(read_text(out / "text")) == set(truth)
    failed = (out / "failed.txt").read_text().splitlines()
    assert len(failed) == 3 and any("broken.wav" in f and "cannot decode" in f for f in failed)
    assert any("tiny.wav" in f and "too short" in f for f in failed) and any("nothing.wav" in f for f in failed)
    # a clean rerun removes the stale failure list
    assert run_cli(["--checkpoint", ckpt, "--out-dir", out, *sorted((tmp_path / "in").glob("s*.wav"))]) == 0
    assert not (out / "failed.txt").exists()
    # a plain list of paths, as a .txt or as a .scp without ids: named, with the form to use
    waves = sorted((tmp_path / "in").glob("s*.wav"))
    (tmp_path / "list.txt").write_text("".join(f"{w}\n" for w in waves))
    (tmp_path / "list.scp").write_text(f"{waves[0].stem} {waves[0]}\n{waves[1].relative_to(tmp_path)}\n")
    capsys.readouterr()
    assert run_cli(["--checkpoint", ckpt, tmp_path / "list.txt", tmp_path / "list.scp"]) == 1
    err = capsys.readouterr().err
    assert "list.txt: a text file listing audio files, not audio; give the files" in err
    assert f"list.scp:2: expected 'utt-id path', got '{waves[1].relative_to(tmp_path)}' (a bare path: write " \
           f"'{waves[1].stem} {waves[1].relative_to(tmp_path)}')" in err
    assert "2 input(s) failed" in err and "the other 1 were transcribed" in err

    one = sorted((tmp_path / "in").glob("s*.wav"))[0]
    cases = [
        (["--format", "srt", one], "give --out-dir"),
        (["--format", "text,pdf", "--out-dir", out, one], "unknown ['pdf']"),
        (["--method", "hlg", one], "needs --lang-dir"),
        (["--method", "hlg", "--lang-dir", char_lang(tmp_path / "other", ["xyz"]), one],
         "does not match the checkpoint's vocabulary"),
        (["--chunk-s", "2", "--context-s", "1", one], "less than half"),
        # graph options under greedy: the LM was silently not used
        (["--lang-dir", lang, one], f"--lang-dir {lang}: --method greedy uses no graph and no LM; add --method hlg"),
        (["--lm-scale", "5", one], "--lm-scale 5.0: --method greedy uses no graph and no LM"),
        (["--max-segment-s", "0.001", one], "--max-segment-s 0.001: segments are cut between words"),  # hung
        (["--chunk-s", "nan", one], "--chunk-s nan: give a finite number of seconds"),  # a traceback
        (["--max-duration", "inf", one], "--max-duration inf: give a finite number of seconds"),
        (["--batch-windows", "0", one], "--batch-windows 0: give at least 1"),  # was the default
        (["--nj", "0", one], "--nj 0: give at least 1"),
        (["--channel", "-1", one], "--channel -1: channels count from 0"),
    ]
    for extra, message in cases:
        assert run_cli(["--checkpoint", ckpt, *extra]) == 1
        assert message in capsys.readouterr().err, message
    from toolkit.model.checkpoint import save_checkpoint
    from toolkit.model.presets import get_preset
    from toolkit.model.wav2vec2 import Wav2Vec2ForPretraining

    pre = tmp_path / "pre.pt"
    save_checkpoint(pre, Wav2Vec2ForPretraining(get_preset("tiny")), get_preset("tiny"), "pretrain")
    assert run_cli(["--checkpoint", pre, one]) == 1
    assert "no CTC head" in capsys.readouterr().err


def test_channels_spans_and_file_names_of_real_inputs(tmp_path, tiny, capsys):
    """What users' own recordings bring: a cut's channel of a file only ffmpeg decodes (it was the
    average of all channels, or an IndexError), a WAV shorter than its header, a cut reaching past
    the end of its file, ids that would name subtitle files elsewhere, a folder with other files."""
    from lhotse import CutSet, MonoCut, Recording

    from toolkit.transcribe.audio import AudioItem, AudioReader, collect_inputs

    ckpt, *_ = tiny
    rng = np.random.default_rng(3)
    left = (0.2 * rng.standard_normal(SR * 2)).astype(np.float32)
    right = (0.3 * np.sin(np.arange(SR * 2) * 0.05)).astype(np.float32)
    sf.write(tmp_path / "st.wav", np.stack([left, right], 1), SR, subtype="PCM_16")
    r = ffmpeg("-i", tmp_path / "st.wav", "-c:a", "alac", tmp_path / "st.m4a")  # lossless, not a soundfile format
    assert r.returncode == 0, r.stderr
    want = sf.read(tmp_path / "st.wav", dtype="float32")[0]
    for ch in (0, 1):
        with AudioReader(AudioItem("x", "st.m4a", tmp_path / "st.m4a", channel=[ch])) as reader:
            got = reader.read(0, reader.num_samples)
        assert torch.allclose(got, torch.from_numpy(want[:, ch]), atol=1e-6), ch
    with AudioReader(AudioItem("x", "st.m4a", tmp_path / "st.m4a")) as reader:  # no channel: the average
        assert torch.allclose(reader.read(0, reader.num_samples), torch.from_numpy(want.mean(1)), atol=1e-6)
    with pytest.raises(ToolkitError, match="channel index 2 of a 2-channel file; fix the manifest"):
        AudioReader(AudioItem("x", "st.m4a", tmp_path / "st.m4a", channel=[2]))
    with AudioReader(AudioItem("x", "st.wav", tmp_path / "st.wav", default_channel=1)) as reader:  # --channel 1
        assert torch.equal(reader.read(0, reader.num_samples), torch.from_numpy(want[:, 1]))
    sf.write(tmp_path / "mono.wav", want[:, 1], SR, subtype="PCM_16")
    with AudioReader(AudioItem("x", "mono.wav", tmp_path / "mono.wav", default_channel=1)) as reader:
        assert torch.equal(reader.read(0, reader.num_samples), torch.from_numpy(want[:, 1]))  # its only channel
    # opposite phase: the average is silence, and the transcript would be empty without a word
    sf.write(tmp_path / "phase.wav", np.stack([right, -right], 1), SR)
    capsys.readouterr()
    assert run_cli(["--checkpoint", ckpt, tmp_path / "phase.wav"]) == 0
    assert "phase.wav: its 2 channels cancel out when averaged" in capsys.readouterr().err
    assert run_cli(["--checkpoint", ckpt, "--channel", "3", tmp_path / "phase.wav"]) == 1
    assert "channel index 3 of a 2-channel file" in capsys.readouterr().err

    # a WAV cut short of its header; a cut past the file's end
    data = (tmp_path / "st.wav").read_bytes()
    (tmp_path / "cut_short.wav").write_bytes(data[: len(data) // 4])
    rec = Recording.from_file(tmp_path / "st.wav")
    CutSet.from_cuts([MonoCut("past", 1.5, 3.0, 0, recording=rec)]).to_file(tmp_path / "past.jsonl.gz")
    capsys.readouterr()
    assert run_cli(["--checkpoint", ckpt, "--format", "jsonl", "--out-dir", tmp_path / "o1",
                    tmp_path / "cut_short.wav", tmp_path / "past.jsonl.gz"]) == 0
    err = capsys.readouterr().err
    assert "cut_short.wav: the WAV header announces 2.00 s but the file holds 0.50 s" in err
    assert "asks for 3.00 s from 1.50 s, but the audio ends at 2.00 s; transcribing the 0.50 s there are" in err
    # a padded cut (a lhotse MixedCut: no single recording) beside a plain one: both transcribed
    padded = rec.to_cut().with_id("plain").pad(duration=3.0)
    CutSet.from_cuts([rec.to_cut().with_id("plain0"), padded.with_id("padded")]).to_file(tmp_path / "mixed.jsonl.gz")
    items, failed = collect_inputs([str(tmp_path / "mixed.jsonl.gz")])
    assert [it.id for it in items] == ["plain0", "padded"] and not failed
    with AudioReader(items[1]) as reader:
        got = reader.read(0, reader.num_samples)
    assert reader.num_samples == 3 * SR and torch.allclose(got[: 2 * SR], torch.from_numpy(want.mean(1)), atol=1e-4)
    CutSet.from_cuts([MonoCut("late", 2.5, 1.0, 0, recording=rec)]).to_file(tmp_path / "late.jsonl.gz")
    capsys.readouterr()
    assert run_cli(["--checkpoint", ckpt, "--out-dir", tmp_path / "o2", tmp_path / "late.jsonl.gz"]) == 1
    assert "starts at 2.50 s, past the end of the audio (2.00 s); fix the manifest" in capsys.readouterr().err

    # ids naming files elsewhere, with per-recording outputs
    (tmp_path / "wav.scp").write_text(f"../../escaped {tmp_path / 'st.wav'}\n", encoding="utf-8")
    assert run_cli(["--checkpoint", ckpt, "--format", "text,srt", "--out-dir", tmp_path / "o3",
                    tmp_path / "wav.scp"]) == 1
    assert "utterance id '../../escaped'" in capsys.readouterr().err and not (tmp_path / "escaped.srt").exists()
    assert run_cli(["--checkpoint", ckpt, "--format", "text", "--out-dir", tmp_path / "o4", tmp_path / "wav.scp"]) == 0
    # a later run into the same --out-dir with other formats and recordings: the earlier outputs are named
    assert run_cli(["--checkpoint", ckpt, "--format", "jsonl,srt", "--out-dir", tmp_path / "o4",
                    tmp_path / "mono.wav"]) == 0
    capsys.readouterr()
    assert run_cli(["--checkpoint", ckpt, "--format", "ctm,srt", "--out-dir", tmp_path / "o4", tmp_path / "st.wav"]) == 0
    assert ("o4: text, transcripts.jsonl, 1 file(s) in srt/ from an earlier run stay as they are"
            in capsys.readouterr().err)

    # a folder: what is not audio by its suffix is named, not silently passed over
    (tmp_path / "dir").mkdir()
    sf.write(tmp_path / "dir" / "a.wav", left, SR)
    (tmp_path / "dir" / "notes.txt").write_text("x", encoding="utf-8")
    items, failed = collect_inputs([str(tmp_path / "dir")])
    assert [it.id for it in items] == ["a"] and not failed
    assert run_cli(["--checkpoint", ckpt, "--out-dir", tmp_path / "o5", tmp_path / "dir"]) == 0
    assert "1 file(s) below this folder left out: not audio by their suffix (e.g. " in capsys.readouterr().err


def test_a_closed_standard_output_ends_the_run_quietly_with_141(tmp_path, tiny):
    """`toolkit transcribe DIR | head -1`: the reader goes away; the run stops with the shell's
    SIGPIPE status and no traceback (Python's own exit flush must not print one either)."""
    import os

    ckpt, *_ = tiny
    write_sentences(tmp_path / "in", 20, seed=13)
    proc = subprocess.Popen([sys.executable, "-m", "toolkit.cli", "transcribe", "--no-progress", "--checkpoint",
                             str(ckpt), str(tmp_path / "in")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    proc.stdout.close()  # the reader is gone before the first line (`| head -0`; `head -1` after one)
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err
    assert "20 recording(s)" in err  # it got as far as transcribing
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err


def interrupt_transcribe(tmp_path, ckpt, seed: int, extra: list, started: str, sig) -> None:
    """Transcribe 60 sentences into tmp_path/out, send `sig` once a file matching `started` is there,
    and check that the run says it was interrupted (exit 130)."""
    import time

    write_sentences(tmp_path / "in", 60, seed=seed)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "toolkit.cli", "transcribe", "--no-progress", "--checkpoint",
                             str(ckpt), "--max-duration", "3", *extra, "--out-dir", str(out), str(tmp_path / "in")],
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 120
    while not list(out.glob(started)) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert list(out.glob(started)), f"the run ended before {started} was written"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "toolkit transcribe: interrupted" in err, err[-2000:]


def test_sigterm_interrupts_like_ctrl_c_and_leaves_no_temporary_file(tmp_path, tiny):
    """`kill`/`timeout`/a scheduler stop a run with SIGTERM: the temporary file of the text output
    was left behind (SIGTERM ended Python without running its cleanups)."""
    import signal

    ckpt, *_ = tiny
    out = tmp_path / "out"
    interrupt_transcribe(tmp_path, ckpt, 12, [], ".text*", signal.SIGTERM)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")] and not (out / "text").exists()


def test_text_to_stdout_with_only_the_checkpoint(tmp_path, tiny, capsys):
    """`toolkit transcribe --checkpoint ft.pt a.wav`: nothing else needed, text on standard output."""
    ckpt, model, tok, cfg = tiny
    truth = write_sentences(tmp_path, 1, seed=7)
    (k, _), = truth.items()
    capsys.readouterr()
    assert run_cli(["--checkpoint", ckpt, tmp_path / f"{k}.wav"]) == 0
    want = greedy_of(model, tok, sf.read(tmp_path / f"{k}.wav", dtype="float32")[0])
    assert capsys.readouterr().out == f"{k} {want}".rstrip() + "\n"


@pytest.mark.parametrize("names", [["a.m4a"], ["a.m4a", "b.wav"], ["b.wav"]])
def test_the_progress_bar_with_and_without_lengths_known_before_decoding(tmp_path, tiny, capsys, names):
    """The default run shows a progress bar: an input whose length only decoding tells (m4a) used to
    crash it (a None total in the bar's format) on the first file."""
    from toolkit.cli import main

    ckpt, model, tok, cfg = tiny
    truth = write_sentences(tmp_path, 1, seed=8)
    (k, _), = truth.items()
    (tmp_path / f"{k}.wav").rename(tmp_path / "b.wav")
    r = ffmpeg("-i", tmp_path / "b.wav", "-c:a", "alac", tmp_path / "a.m4a")  # lossless: the same transcript
    assert r.returncode == 0, r.stderr
    want = greedy_of(model, tok, sf.read(tmp_path / "b.wav", dtype="float32")[0])
    capsys.readouterr()
    assert main(["transcribe", "--checkpoint", str(ckpt), *[str(tmp_path / n) for n in names]]) == 0
    captured = capsys.readouterr()
    assert captured.out == "".join(f"{Path(n).stem} {want}".rstrip() + "\n" for n in names)
    assert "transcribe: " in captured.err  # the bar (or count) was drawn


def test_finetuning_stores_the_training_language(tmp_path, lang):
    """Checkpoints written by fine-tuning carry the language of their text normalisation."""
    from lhotse import CutSet, Recording, SupervisionSegment

    from toolkit.train.config import load_config
    from toolkit.train.tasks import CTCTask

    sf.write(tmp_path / "a.wav", np.zeros(SR, np.float32), SR)
    rec = Recording.from_file(tmp_path / "a.wav", recording_id="a")

    def manifest(name, languages):
        cuts = []
        for i, language in enumerate(languages):
            cut = rec.to_cut().with_id(f"{name}{i}")
            cut.supervisions = [SupervisionSegment(f"{name}{i}", "a", 0.0, 1.0, text="ab", language=language)]
            cuts.append(cut)
        CutSet.from_cuts(cuts).to_file(tmp_path / f"{name}.jsonl.gz")
        return tmp_path / f"{name}.jsonl.gz"

    def task(path, extra=()):
        cfg = load_config(None, "finetune", [f"exp_dir={tmp_path / 'e'}", f"data.train_cuts=[{path}]",
                                             f"data.lang_dir={lang}", *extra])
        return CTCTask(cfg)

    it = task(manifest("it", ["it", "it"]))
    assert it.vocab()["language"] == "it" and it.vocab()["tokens"] == it.tokenizer.tokens
    assert task(manifest("mix", ["it", "fr"])).vocab()["language"] is None
    assert task(manifest("mix2", ["it", "fr"]), ["data.languages=[fr]"]).vocab()["language"] == "fr"


# ---------------------------------------------------------------------------------------------- export

def greedy_with(tokens: list[str], log_probs: np.ndarray) -> str:
    """Greedy CTC text from (T, V) scores using only a tokens.txt list (no toolkit code)."""
    import itertools

    ids = [k for k, _ in itertools.groupby(np.asarray(log_probs).argmax(-1).tolist()) if k != 0]
    return " ".join("".join(tokens[i] for i in ids).replace("|", " ").split())


def test_export_hf_loads_in_the_pipeline_with_the_same_transcripts(tmp_path, tiny):
    import transformers

    ckpt, model, tok, cfg = tiny
    truth = write_sentences(tmp_path / "in", 4, seed=8)
    assert run_cli(["--checkpoint", ckpt, "--out-dir", tmp_path / "out", tmp_path / "in"]) == 0
    ours = read_text(tmp_path / "out" / "text")
    hf_dir = tmp_path / "hf"
    assert main(["export", "--checkpoint", str(ckpt), "--to", "hf", str(hf_dir)]) == 0
    pipe = transformers.pipeline("automatic-speech-recognition", model=str(hf_dir), device="cpu")
    for k in truth:
        got = pipe(str(tmp_path / "in" / f"{k}.wav"))["text"]
        assert " ".join(got.split()) == ours[k], (k, got, ours[k])
    # and back: import-checkpoint reads the folder into the same weights and vocabulary
    assert main(["import-checkpoint", "--from", "hf", str(hf_dir), str(tmp_path / "back.pt")]) == 0
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    orig = torch.load(ckpt, weights_only=True)
    assert back["vocab"]["tokens"] == orig["vocab"]["tokens"]
    assert back["vocab"]["language"] == orig["vocab"]["language"] == "xx"
    for key, v in orig["model"].items():
        assert torch.equal(back["model"][key], v), key
    assert main(["export", "--checkpoint", str(ckpt), "--to", "hf", str(hf_dir)]) == 1  # exists: --force


@pytest.mark.slow  # the dynamo exporter takes about a minute on 2 cores
def test_export_onnx_runs_in_onnxruntime_with_dynamic_batch_and_length(tmp_path, lang, capsys):
    """A tiny-preset model (Transformer layers, attention masks) through onnxruntime: its greedy text
    from tokens.txt alone is toolkit transcribe's, for a padded batch of three lengths."""
    import onnxruntime as ort

    from toolkit.model.checkpoint import save_checkpoint
    from toolkit.model.presets import get_preset
    from toolkit.model.wav2vec2 import Wav2Vec2ForCTC
    from toolkit.text.tokenizer import Tokenizer

    torch.manual_seed(0)
    tok = Tokenizer.from_lang_dir(lang)
    cfg = get_preset("tiny")
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(ckpt, Wav2Vec2ForCTC(cfg, tok.vocab_size).eval(), cfg, "ctc", vocab={**tok.to_dict(), "language": "xx"})
    truth = write_sentences(tmp_path / "in", 3, seed=9)
    assert run_cli(["--checkpoint", ckpt, "--out-dir", tmp_path / "out", tmp_path / "in"]) == 0
    ours = read_text(tmp_path / "out" / "text")
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(ckpt), "--to", "onnx", str(tmp_path / "onnx")]) == 0
    printed = capsys.readouterr().out
    assert "max abs log-prob difference" in printed
    meta = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert meta["check_max_abs_diff"] <= 1e-3 and meta["sample_rate"] == SR and meta["language"] == "xx"
    tokens = [line.split()[0] for line in (tmp_path / "onnx" / "tokens.txt").read_text().splitlines()]
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"))
    waves = [sf.read(tmp_path / "in" / f"{k}.wav", dtype="float32")[0] for k in truth]
    batch = np.zeros((len(waves), max(w.size for w in waves)), np.float32)
    for i, w in enumerate(waves):
        batch[i, : w.size] = w
    log_probs, out_lengths = session.run(None, {"audio": batch, "lengths": np.array([w.size for w in waves])})
    for i, k in enumerate(truth):
        assert greedy_with(tokens, log_probs[i, : out_lengths[i]]) == ours[k]


def test_export_torchscript_and_the_accuracy_check(tmp_path, tiny):
    from toolkit.model.export import ExportModule, compare

    ckpt, model, tok, cfg = tiny
    assert main(["export", "--checkpoint", str(ckpt), "--to", "torchscript", str(tmp_path / "ts")]) == 0
    loaded = torch.jit.load(str(tmp_path / "ts" / "model.pt"))
    wav = torch.from_numpy(say(["cab", "ab"], np.random.default_rng(0))[0])[None]
    with torch.inference_mode():
        got, n = loaded(wav, torch.tensor([wav.shape[1]]))
        want, m = model(wav)
    assert torch.equal(n, m) and float((got - want).abs().max()) < 1e-4
    # a runtime that is off by more than the tolerance fails the export, naming the difference
    module = ExportModule(model, False)

    def off(a, n):
        lp, ln = module(a, n)
        return lp + 0.01, ln

    with pytest.raises(ToolkitError, match=r"max abs log-prob difference against PyTorch is 0\.01"):
        compare(module, off, 1e-3, "test")


def test_export_hf_check_runs_the_folders_own_feature_extractor(tmp_path, tiny, monkeypatch, capsys):
    """The HF check goes through the saved feature extractor, as Processor and pipeline do: a
    folder whose preprocessor config lost do_normalize fails the export (before, the check
    normalised by itself and passed it); the right folder passes and says where HF differs."""
    import transformers

    from toolkit.model.checkpoint import save_checkpoint

    _, model, tok, cfg = tiny
    ckpt = tmp_path / "norm.pt"
    save_checkpoint(ckpt, model, cfg.replace(normalize=True), "ctc", vocab=tok.to_dict())
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(ckpt), "--to", "hf", str(tmp_path / "ok")]) == 0
    assert "eps 1e-7" in capsys.readouterr().err
    real_init = transformers.Wav2Vec2FeatureExtractor.__init__

    def forgetful(self, *args, **kw):
        real_init(self, *args, **{**kw, "do_normalize": False})

    monkeypatch.setattr(transformers.Wav2Vec2FeatureExtractor, "__init__", forgetful)
    assert main(["export", "--checkpoint", str(ckpt), "--to", "hf", str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "bad (transformers Wav2Vec2ForCTC): max abs log-prob difference" in err, err
    assert not (tmp_path / "bad").exists()


def test_export_force_replaces_only_an_earlier_export(tmp_path, tiny, monkeypatch, capsys):
    """--force replaces an earlier export folder and nothing else: not the checkpoint's own
    experiment folder, a folder with other files, a link or the current folder. Whatever is
    refused is left byte for byte; nothing is left beside OUT; a failed check names OUT."""
    ckpt, *_ = tiny
    exp = tmp_path / "exp"
    exp.mkdir()
    shutil.copy(ckpt, exp / "best.pt")
    (exp / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.jsonl").write_text("mine\n")
    (tmp_path / "link").symlink_to(other)

    def snapshot() -> dict:
        return {str(p.relative_to(tmp_path)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
                for p in sorted(tmp_path.rglob("*"))}

    def export(out, *extra) -> tuple[int, str]:
        capsys.readouterr()
        rc = main(["export", "--checkpoint", str(exp / "best.pt"), "--to", "torchscript", str(out), "--force", *extra])
        return rc, capsys.readouterr().err.strip()

    before = snapshot()
    for out, words in ((exp, "holds --checkpoint"), (exp / "best.pt", "is --checkpoint itself"),
                       (other, "holds metrics.jsonl"), (tmp_path / "link", "is a link")):
        rc, err = export(out)
        assert rc == 1 and str(out) in err and words in err and len(err.splitlines()) == 1, err
    monkeypatch.chdir(other)
    rc, err = export(".")
    assert rc == 1 and "current folder" in err
    monkeypatch.chdir(tmp_path)
    assert snapshot() == before
    # an earlier export is replaced, with the mode a new folder gets, and no staging folder is left
    old_mask = os.umask(0o022)
    try:
        assert export(tmp_path / "ts")[0] == 0
        (tmp_path / "ts" / "model.pt").write_bytes(b"stale")
        assert export(tmp_path / "ts")[0] == 0
    finally:
        os.umask(old_mask)
    assert (tmp_path / "ts" / "model.pt").read_bytes() != b"stale"
    assert stat.S_IMODE((tmp_path / "ts").stat().st_mode) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp", "link", "other", "ts"]
    # a check that fails names OUT, not the hidden staging folder, and keeps nothing
    rc, err = export(tmp_path / "ts2", "--tolerance", "0")  # TorchScript differs from eager by ~1e-6
    assert rc == 1 and f"{tmp_path / 'ts2'}/model.pt (torch.jit.load)" in err and "/." not in err, err
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_export_whose_final_rename_fails_keeps_the_earlier_export_and_no_staging_folder(tmp_path, tiny, monkeypatch):
    import errno

    from toolkit.model import export

    def files() -> dict:
        return {str(p.relative_to(tmp_path)): p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}

    args = ["export", "--checkpoint", str(tiny[0]), "--to", "torchscript", str(tmp_path / "ts")]
    assert main(args) == 0
    before = files()
    real = os.replace

    def busy(src, dst):  # the staged folder cannot be renamed into place (after the old one moved aside)
        if Path(src).name.startswith(".ts.") and ".old." not in Path(src).name:
            raise OSError(errno.EBUSY, "Device or resource busy", str(dst))
        return real(src, dst)

    monkeypatch.setattr(export.os, "replace", busy)
    assert main([*args, "--force"]) == 1
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ts"] and files() == before


def test_export_pretraining_checkpoint_to_hf(tmp_path):
    import transformers

    from toolkit.model.checkpoint import save_checkpoint
    from toolkit.model.presets import get_preset
    from toolkit.model.wav2vec2 import Wav2Vec2ForPretraining

    torch.manual_seed(0)
    # settings HF's config has no field for, set away from their defaults
    cfg = get_preset("tiny").replace(latent_temp=(2.0, 0.5, 0.999), feature_grad_mult=0.1, loss_weights=(0.1, 5.0),
                                     cross_sample_negatives=3, require_same_masks=False)
    model = Wav2Vec2ForPretraining(cfg).eval()
    save_checkpoint(tmp_path / "pre.pt", model, cfg, "pretrain")
    assert main(["export", "--checkpoint", str(tmp_path / "pre.pt"), "--to", "onnx", str(tmp_path / "x")]) == 1
    assert main(["export", "--checkpoint", str(tmp_path / "pre.pt"), "--to", "hf", str(tmp_path / "hf")]) == 0
    hf = transformers.Wav2Vec2ForPreTraining.from_pretrained(tmp_path / "hf").eval()
    wav = 0.1 * torch.randn(1, 20000)
    with torch.inference_mode():
        assert torch.allclose(hf.wav2vec2(wav).last_hidden_state, model.wav2vec2(wav).x, atol=1e-4)
    assert json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())["sampling_rate"] == SR
    # continued pretraining elsewhere means the quantizer came along: a round trip keeps every weight
    assert main(["import-checkpoint", "--from", "hf", str(tmp_path / "hf"), str(tmp_path / "back.pt")]) == 0
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert back["kind"] == "pretrain"
    for key, v in model.state_dict().items():
        assert torch.equal(back["model"][key], v), key
    from toolkit.model.checkpoint import config_of

    got = config_of(back)
    for field in ("latent_temp", "feature_grad_mult", "loss_weights", "cross_sample_negatives", "require_same_masks",
                  "mask_prob", "logit_temp", "normalize"):
        assert getattr(got, field) == getattr(cfg, field), field


# ---------------------------------------------------------------------------------------------- one hour

PEAK = ("import resource, sys\nfrom toolkit.cli import main\nrc = main(sys.argv[1:])\n"
        "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(rc)\n")


def transcribe_peak_kb(args: list) -> int:
    proc = subprocess.run([sys.executable, "-c", PEAK, "transcribe", "--no-progress", *map(str, args)],
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stdout.split("PEAK_KB")[-1].split()[0])


@pytest.mark.slow
def test_one_hour_recording_is_transcribed_with_flat_memory(tmp_path, tiny):
    """60 minutes (six copies of a 10-minute recording of tone sentences) in the peak memory of 10."""
    ckpt, *_ = tiny
    rng = np.random.default_rng(10)
    ten = tmp_path / "ten.wav"
    with sf.SoundFile(ten, "w", samplerate=SR, channels=1, subtype="FLOAT") as f:
        total = 0
        while total < 600 * SR:
            sent = random_sentence(rng, FOUR_WORDS)
            wav, _ = say(sent, rng)
            f.write(wav)
            total += wav.size
    hour = tmp_path / "hour.wav"
    with sf.SoundFile(hour, "w", samplerate=SR, channels=1, subtype="FLOAT") as f:
        for _ in range(6):
            for block in sf.blocks(str(ten), blocksize=SR * 60, dtype="float32"):
                f.write(block)
    assert sf.info(str(hour)).duration >= 3600
    peak10 = transcribe_peak_kb(["--checkpoint", ckpt, "--format", "jsonl", "--out-dir", tmp_path / "o10", ten])
    peak60 = transcribe_peak_kb(["--checkpoint", ckpt, "--format", "jsonl", "--out-dir", tmp_path / "o60", hour])
    assert peak60 <= 1.2 * peak10, (peak10, peak60)
    row = json.loads((tmp_path / "o60" / "transcripts.jsonl").read_text())
    ten_row = json.loads((tmp_path / "o10" / "transcripts.jsonl").read_text())
    assert row["duration"] == pytest.approx(6 * ten_row["duration"], abs=0.01)
    assert row["words"][-1]["end"] > row["duration"] - 60  # words to the end, none lost
    # six copies of the same audio: about six times the words (windows fall differently per copy)
    assert abs(len(row["words"]) - 6 * len(ten_row["words"])) <= 0.02 * len(row["words"])


def test_word_times_through_windows_and_segments_are_within_two_frames(tmp_path, lang):
    """Word times against the known boundaries, with an acoustic model of exact timing (tone_speech.
    ToneDetector): short files batched, and a long recording through windows and segments."""
    import argparse

    from tone_speech import ToneDetector
    from toolkit.text.tokenizer import Tokenizer
    from toolkit.transcribe.audio import collect_inputs
    from toolkit.decode.chunking import ChunkOptions
    from toolkit.transcribe.formats import Outputs
    from toolkit.transcribe.search import add_search_arguments, open_search
    from toolkit.transcribe.transcriber import TranscribeOptions, Transcriber

    tok = Tokenizer.from_lang_dir(lang)
    truth = write_sentences(tmp_path / "in", 4, seed=11)
    rng = np.random.default_rng(12)
    parts, bounds, t = [], [], 0.0
    for _ in range(40):
        wav, b = say(random_sentence(rng, FOUR_WORDS), rng)
        parts.append(wav)
        bounds += [(w, s + t, e + t) for w, s, e in b]
        t += wav.size / SR
    sf.write(tmp_path / "in" / "long.wav", np.concatenate(parts), SR)
    truth["long"] = ([w for w, _, _ in bounds], bounds)
    parser = argparse.ArgumentParser()
    add_search_arguments(parser)
    args = parser.parse_args([])  # greedy, no lang dir
    device = torch.device("cpu")
    items, failed = collect_inputs([str(tmp_path / "in")])
    assert not failed
    opts = TranscribeOptions(chunk=ChunkOptions(8.0, 1.0), max_duration=20.0, max_segment_s=5.0)
    with open_search(args, tok, device) as search, Outputs(["jsonl"], tmp_path / "out") as out:
        stats = Transcriber(ToneDetector(tok), tok, search, device, False, opts).run(items, out)
    assert stats.done == 5 and not stats.failed
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "out" / "transcripts.jsonl").read_text().splitlines())}
    assert t > 3 * 8.0 and rows["long"]["duration"] == pytest.approx(t, abs=1e-3)
    for uid, (words, bnds) in truth.items():
        row = rows[uid]
        assert row["text"] == " ".join(words), uid
        for w, (word, s, e) in zip(row["words"], bnds):
            assert w["word"] == word
            assert within_frames(w["start"], s) and within_frames(w["end"], e), (uid, w, s, e)
            assert w["confidence"] > 0.99


_FAULTS = """
import resource, sys, torch
from toolkit.utils import tune_cpu_allocator
tuned = tune_cpu_allocator() if sys.argv[1] == "tune" else False
from toolkit.model.presets import get_preset
from toolkit.model.wav2vec2 import Wav2Vec2ForCTC
torch.set_num_threads(1)
m = Wav2Vec2ForCTC(get_preset("tiny"), 40).eval()
x = torch.randn(1, 20 * 16000)
faults = []
with torch.inference_mode():
    m(x); m(x)
    for _ in range(7):
        a = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        m(x)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - a)
print(tuned, sorted(faults)[3])  # the median forward
"""


@pytest.mark.parametrize("env", [{}, {"MALLOC_ARENA_MAX": "2"}], ids=["glibc", "user-configured"])
def test_allocator_tuning_stops_page_faults_in_repeated_forwards(env):
    """`toolkit` commands keep freed activations mapped (toolkit.utils.tune_cpu_allocator): without it,
    every forward of a 20 s window faults its ~60 MB of activations in again; with it, none. A user's
    own allocator settings are left alone."""
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    runs = {}
    for mode in ("plain", "tune"):
        r = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True,
                           env={**clean, **env}, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        tuned, faults = r.stdout.split()
        runs[mode] = (tuned == "True", float(faults))
    if env:
        # left alone: not tuned. Fault counts under a user's MALLOC_* are glibc's own business: the
        # dynamic mmap threshold makes them 8k or 16k a forward in most runs and 0 in some (2 of 5
        # measured on a 2-core VM, 2026-12-04; the untuned "plain" run too, in CI the next day), so
        # no count is asserted
        assert runs["tune"][0] is False, runs
    else:
        assert runs["tune"][0] and runs["tune"][1] <= 1000, runs  # tuned: at most 4 MB faulted in a forward
        # Untuned, a forward faults its activations in again (4k-24k pages measured), except when
        # glibc's dynamic mmap threshold has already grown past them (0 pages, seen in a CI run
        # beside another CI on 2026-12-04): then there is nothing for the tuning to remove.
        if runs["plain"][1] > 1000:
            assert runs["tune"][1] < 0.1 * runs["plain"][1], runs


# ---------------------------------------------------------------------------------------------- out dir safety

def test_outputs_over_inputs_are_refused_before_any_work(tmp_path, tiny, capsys):
    """`--out-dir` = a Kaldi data dir replaced its reference `text` (exit 0); an output that is an
    input file itself is refused too. Both before the checkpoint is even read. An out dir below the
    data dir, and reruns into it, are fine."""
    ckpt, *_ = tiny
    truth = write_sentences(tmp_path / "w", 2, seed=21)
    data = tmp_path / "data"
    data.mkdir()
    (data / "wav.scp").write_text("".join(f"{k} {tmp_path / 'w' / k}.wav\n" for k in truth))
    (data / "text").write_text("".join(f"{k} {' '.join(w)}\n" for k, (w, _) in truth.items()))
    (data / "ctm").write_text("a reference ctm\n")
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    capsys.readouterr()
    assert run_cli(["--checkpoint", ckpt, "--out-dir", data, data / "wav.scp"]) == 1  # was 0, `text` replaced
    assert f"{data / 'text'}: exists beside the input" in capsys.readouterr().err
    for fmt, name in [("text", "text"), ("jsonl,ctm", "ctm")]:
        assert run_cli(["--checkpoint", tmp_path / "no-checkpoint.pt", "--format", fmt, "--out-dir", data,
                        data / "wav.scp"]) == 1
        err = capsys.readouterr().err
        assert (f"{data / name}: exists beside the input {data / 'wav.scp'} (its reference?); transcribe would "
                f"overwrite it: give another --out-dir (e.g. {data / 'transcribe'})") in err, err
        assert err.count("\n") == 1 and "checkpoint" not in err  # one line, before the checkpoint is read
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before
    # a manifest's folder alike
    from lhotse import CutSet, Recording

    CutSet.from_cuts([Recording.from_file(tmp_path / "w" / f"{k}.wav").to_cut() for k in truth]).to_file(
        tmp_path / "w" / "cuts.jsonl.gz")
    (tmp_path / "w" / "transcripts.jsonl").write_text("{}\n")
    assert run_cli(["--checkpoint", ckpt, "--format", "jsonl", "--out-dir", tmp_path / "w",
                    tmp_path / "w" / "cuts.jsonl.gz"]) == 1
    assert "transcripts.jsonl: exists beside the input" in capsys.readouterr().err
    # an output that is an input: an audio file named like an output, given by name
    shutil.copy(tmp_path / "w" / f"{next(iter(truth))}.wav", tmp_path / "ctm")
    assert run_cli(["--checkpoint", ckpt, "--format", "ctm", "--out-dir", tmp_path, tmp_path / "ctm"]) == 1
    assert (f"{tmp_path / 'ctm'}: is the input {tmp_path / 'ctm'} itself; writing it would destroy the input: "
            "give another --out-dir") in capsys.readouterr().err
    assert sf.info(tmp_path / "ctm").frames > 0
    # an out dir of its own below the data dir: written, and written again
    for _ in range(2):
        assert run_cli(["--checkpoint", ckpt, "--format", "text,ctm", "--out-dir", data / "transcribe",
                        data / "wav.scp"]) == 0
        assert set(read_text(data / "transcribe" / "text")) == set(truth)
    assert {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()} == before


def test_a_rerun_whose_every_input_fails_keeps_the_earlier_outputs(tmp_path, tiny, capsys):
    """Every input of a rerun failing (too short, a cut that cannot load) replaced the earlier text
    and transcripts.jsonl with empty files."""
    from lhotse import CutSet, MonoCut, Recording

    ckpt, *_ = tiny
    truth = write_sentences(tmp_path / "in", 2, seed=22)
    out = tmp_path / "out"
    assert run_cli(["--checkpoint", ckpt, "--format", "text,jsonl,srt", "--out-dir", out, tmp_path / "in"]) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert len(read_text(out / "text")) == len(truth)
    sf.write(tmp_path / "short.wav", np.zeros(160, np.float32), SR)  # 10 ms
    rec = Recording.from_file(tmp_path / "short.wav")
    CutSet.from_cuts([MonoCut("late", 5.0, 1.0, 0, recording=rec)]).to_file(tmp_path / "late.jsonl.gz")
    for bad in [[tmp_path / "short.wav"], [tmp_path / "late.jsonl.gz"], [tmp_path / "short.wav", tmp_path / "x.wav"]]:
        capsys.readouterr()
        assert run_cli(["--checkpoint", ckpt, "--format", "text,jsonl,srt", "--out-dir", out, *bad]) == 1
        err = capsys.readouterr().err
        assert f"{len(bad)} input(s) failed" in err and "the other 0 were transcribed" in err, err
        after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        assert after.pop(Path("failed.txt")).decode().count("\n") == len(bad)
        assert after == before  # nothing replaced, no temporary file left
    # one input transcribed: the outputs are this run's
    assert run_cli(["--checkpoint", ckpt, "--format", "text,jsonl,srt", "--out-dir", out, tmp_path / "short.wav",
                    next((tmp_path / "in").glob("*.wav"))]) == 1
    assert len(read_text(out / "text")) == 1


def test_a_manifests_missing_audio_is_one_line_naming_the_path_and_the_folder_to_run_from(
        tmp_path, tiny, capsys, monkeypatch):
    """Relative paths in a Lhotse manifest run from another folder: lhotse's message took two lines
    per cut (and two lines of failed.txt), and a plain file's said only "audio file not found"."""
    from lhotse import CutSet, Recording

    ckpt, *_ = tiny
    truth = write_sentences(tmp_path / "rec" / "data" / "wav", 2, seed=23)
    k0, k1 = truth
    monkeypatch.chdir(tmp_path / "rec")
    plain = Recording.from_file(f"data/wav/{k0}.wav")  # a relative path, as lhotse recipes write them
    resampled = Recording.from_file(f"data/wav/{k1}.wav").resample(8000)  # a transform: loaded by lhotse
    CutSet.from_cuts([plain.to_cut(), resampled.to_cut(), plain.to_cut().pad(duration=5).with_id("padded")]).to_file(
        "data/cuts.jsonl.gz")
    assert run_cli(["--checkpoint", ckpt, "--out-dir", tmp_path / "ok", "data/cuts.jsonl.gz"]) == 0
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert run_cli(["--checkpoint", ckpt, "--out-dir", tmp_path / "out", "rec/data/cuts.jsonl.gz"]) == 1
    err = capsys.readouterr().err
    failed = (tmp_path / "out" / "failed.txt").read_text().splitlines()
    assert len(failed) == 3 and "Exception #0" not in err and "Details" not in err, err
    for line, (cut, name) in zip(failed, [(k0, k0), (k1, k1), ("padded", k0)]):
        assert line.endswith(f"rec/data/cuts.jsonl.gz: cut {cut}: audio file {tmp_path / 'data' / 'wav' / name}.wav "
                             f"not found; the manifest's paths are relative to the current directory: run from "
                             f"{tmp_path / 'rec'}, where data/wav/{name}.wav exists, or make them absolute"), line
    # a list's missing file: named with its path
    (tmp_path / "wav.scp").write_text(f"u1 {tmp_path / 'gone.wav'}\n")
    assert run_cli(["--checkpoint", ckpt, tmp_path / "wav.scp"]) == 1
    assert f"wav.scp:1 ({tmp_path / 'gone.wav'}): audio file {tmp_path / 'gone.wav'} not found; check the path" \
        in capsys.readouterr().err


def test_a_file_where_the_out_dir_or_its_subtitle_folder_goes_is_refused_before_any_work(tmp_path, tiny, capsys):
    """A plain file at --out-dir or at its srt/ failed only after the whole transcription ("File exists")."""
    ckpt, *_ = tiny
    write_sentences(tmp_path / "in", 1, seed=24)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "vtt").write_text("x")
    cases = [(["--out-dir", tmp_path / "afile"], f"--out-dir {tmp_path / 'afile'}: is a file, not a folder; "
                                                 "give another --out-dir"),
             (["--out-dir", tmp_path / "afile" / "sub"], f"{tmp_path / 'afile'} is a file, not a folder"),
             (["--format", "text,vtt", "--out-dir", tmp_path / "out"],
              f"{tmp_path / 'out' / 'vtt'}: is a file, not a folder; --format vtt writes one file per recording")]
    for extra, message in cases:
        capsys.readouterr()
        # the checkpoint is not read (nor any audio): the refusal comes first
        assert run_cli(["--checkpoint", tmp_path / "no-checkpoint.pt", *extra, tmp_path / "in"]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert run_cli(["--checkpoint", ckpt, "--format", "text,srt", "--out-dir", tmp_path / "out", tmp_path / "in"]) == 0


def test_subtitles_appear_when_the_run_ends_or_not_at_all(tmp_path):
    """srt/ and vtt/ filled file by file during the run: an interrupted run left some."""
    from toolkit.transcribe.formats import Outputs, Recording
    from toolkit.transcribe.align import WordTiming

    def one(out: Outputs, uid: str) -> None:
        out.begin(Recording(uid, uid, 1.0))
        out.segment("a", [WordTiming("a", 0.1, 0.3, 0.9)])
        out.end()

    d = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with Outputs(["text", "srt", "vtt"], d) as out:
            one(out, "r1")
            assert not (d / "srt").exists() and not (d / "vtt").exists()
            raise KeyboardInterrupt
    assert sorted(p.name for p in d.iterdir()) == []
    with Outputs(["text", "srt"], d) as out:
        one(out, "r1")
    assert sorted(p.name for p in (d / "srt").iterdir()) == ["r1.srt"]
    assert stat.S_IMODE((d / "srt").stat().st_mode) == 0o777 & ~_umask()
    with Outputs(["srt"], d) as out:  # into an existing folder: merged, the other recordings' files stay
        one(out, "r2")
        assert not (d / "srt" / "r2.srt").exists()
    assert sorted(p.name for p in (d / "srt").iterdir()) == ["r1.srt", "r2.srt"]
    with pytest.raises(KeyboardInterrupt):
        with Outputs(["srt"], d) as out:
            one(out, "r3")
            raise KeyboardInterrupt
    assert sorted(p.name for p in (d / "srt").iterdir()) == ["r1.srt", "r2.srt"]
    assert sorted(p.name for p in d.iterdir()) == ["srt", "text"]
    # a linked subtitle folder: filled where the link points
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "d2").mkdir()
    (tmp_path / "d2" / "srt").symlink_to(tmp_path / "elsewhere")
    with Outputs(["srt"], tmp_path / "d2") as out:
        one(out, "r4")
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == ["r4.srt"]


def _umask() -> int:
    from toolkit.utils import current_umask

    return current_umask()


def test_sigint_leaves_no_subtitle_files(tmp_path, tiny):
    """Ctrl-C half-way: srt/ held the files of the recordings done so far, while `text` was not written."""
    import signal

    ckpt, *_ = tiny
    out = tmp_path / "out"
    interrupt_transcribe(tmp_path, ckpt, 25, ["--format", "text,srt"], "*srt*/*.srt", signal.SIGINT)
    assert list(out.iterdir()) == []


def test_hidden_files_and_folders_are_left_out_and_counted(tmp_path, caplog):
    """A hidden file was skipped silently, a file in a hidden folder transcribed (as `.hid-b`, which
    then broke --format srt)."""
    import logging

    from toolkit.transcribe.audio import collect_inputs

    for rel in ["a.wav", ".b.wav", ".hid/c.wav", ".hid/d.wav", "sub/e.wav", "sub/.f.wav", "sub/.git/g.wav"]:
        (tmp_path / "in" / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(tmp_path / "in" / rel, np.zeros(SR, np.float32), SR)
    with caplog.at_level(logging.INFO, logger="toolkit.transcribe"):
        items, failed = collect_inputs([str(tmp_path / "in")])
    assert [it.id for it in items] == ["a", "sub-e"] and not failed
    lines = [r.getMessage() for r in caplog.records if "hidden" in r.getMessage()]
    assert lines == [f"{tmp_path / 'in'}: 4 hidden file(s)/folder(s) below this folder left out (names starting with "
                     f"'.', e.g. {tmp_path / 'in' / '.b.wav'}); give a hidden file by name to transcribe it"], lines
    items, _ = collect_inputs([str(tmp_path / "in" / ".b.wav")])  # by name: transcribed
    assert [it.id for it in items] == [".b"]


def test_a_checkpoint_folder_names_the_file_to_give(tmp_path, tiny, capsys):
    ckpt, *_ = tiny
    write_sentences(tmp_path / "in", 1, seed=26)
    (tmp_path / "exp").mkdir()
    shutil.copy(ckpt, tmp_path / "exp" / "best.pt")
    assert run_cli(["--checkpoint", tmp_path / "exp", tmp_path / "in"]) == 1
    assert (f"{tmp_path / 'exp'}: is a folder; give the .pt file inside (e.g. {tmp_path / 'exp' / 'best.pt'})"
            in capsys.readouterr().err)
    assert run_cli(["--checkpoint", tmp_path / "in", tmp_path / "in"]) == 1
    assert f"{tmp_path / 'in'}: is a folder, with no .pt file inside" in capsys.readouterr().err

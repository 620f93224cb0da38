"""Fine-tuning settings by labelled duration (toolkit/train/auto.py): the band chosen at several
durations, fairseq's published values for wide models, the scratch rule, explicit values winning
(config file and --set), the printed table, and that the labelled duration is read from the cuts."""
from __future__ import annotations

import logging

import pytest

from toolkit.train.auto import (FAIRSEQ, apply_data_size_defaults, band_for, explicit_keys, finetune_settings,
                                format_choices, labelled_hours)
from toolkit.train.config import load_config


@pytest.mark.parametrize("hours,band", [(0.05, "10m"), (10 / 60, "10m"), (0.4, "10m"), (0.42, "1h"), (1.18, "1h"),
                                        (3.1, "1h"), (3.2, "10h"), (30, "10h"), (32, "100h"), (300, "100h"),
                                        (310, "960h"), (5000, "960h")])
def test_band_is_the_nearest_fairseq_setting_on_a_log_scale(hours, band):
    assert band_for(hours) == band


def finetune_cfg(tmp_path, yaml_text="", sets=()):
    p = tmp_path / "c.yaml"
    p.write_text(yaml_text)
    return load_config(p, "finetune", list(sets)), p


@pytest.mark.parametrize("hours,lr,updates,channel,freeze", [
    (10 / 60, 5e-5, 13000, 0.25, 10000), (1.0, 5e-5, 13000, 0.25, 10000), (10.0, 5e-5, 20000, 0.5, 10000),
    (100.0, 3e-5, 80000, 0.5, 0), (960.0, 1e-4, 320000, 0.1, 0)])
def test_wide_models_get_fairseqs_published_settings(tmp_path, hours, lr, updates, channel, freeze):
    cfg, p = finetune_cfg(tmp_path, "model:\n  preset: base\ntrain:\n  init: x.pt\n")
    apply_data_size_defaults(cfg, explicit_keys(p, []), hours=hours, width=768)
    assert cfg.optim.lr == lr and cfg.train.max_updates == updates
    assert cfg.model.overrides["mask_channel_prob"] == channel and cfg.train.freeze_finetune_updates == freeze
    assert cfg.train.feature_grad_mult == 0.0  # fairseq never trains the CNN when fine-tuning
    assert cfg.train.valid_interval == 1000
    assert cfg.train.blank_warn_updates == freeze + (updates - freeze) // 4


def test_tiny_scales_updates_with_data_and_scratch_trains_the_cnn(tmp_path):
    budgets = []
    for hours in (10 / 60, 1.0, 10.0):
        cfg, p = finetune_cfg(tmp_path, "train:\n  init: none\n")
        apply_data_size_defaults(cfg, explicit_keys(p, []), hours=hours, width=128)
        assert cfg.train.feature_grad_mult == 1.0 and cfg.train.freeze_finetune_updates == 0
        assert cfg.data.channel_augment == 0.8  # a random channel for most cuts, from scratch only
        budgets.append(cfg.train.max_updates)
        assert 50 <= cfg.train.valid_interval <= cfg.train.max_updates // 5
    assert budgets == sorted(budgets) and budgets[0] < budgets[-1]


def test_tiny_from_a_checkpoint_trains_the_cnn_too(tmp_path):
    """The CPU table trains the CNN of a tiny pretrained model (fairseq's wide models keep it frozen)."""
    cfg, p = finetune_cfg(tmp_path, "model:\n  preset: tiny\ntrain:\n  init: x.pt\n")
    choices = apply_data_size_defaults(cfg, explicit_keys(p, []), hours=10 / 60, width=128)
    assert cfg.train.feature_grad_mult == 1.0 and cfg.train.freeze_finetune_updates == 0
    assert cfg.data.channel_augment == 0.0  # a pretrained encoder has heard many channels
    why = {c.key: c.source for c in choices}["train.feature_grad_mult"]
    assert "cpu table" in why and "scratch" not in why


def test_explicit_values_win_and_the_table_says_where_each_came_from(tmp_path, caplog):
    text = "optim:\n  lr: 7.0e-4\nmodel:\n  overrides:\n    mask_prob: 0.1\ntrain:\n  init: none\n"
    cfg, p = finetune_cfg(tmp_path, text, ["train.max_updates=123", "train.feature_grad_mult=0.0"])
    choices = apply_data_size_defaults(cfg, explicit_keys(p, ["train.max_updates=123", "train.feature_grad_mult=0.0"]),
                                       hours=1.0, width=128)
    assert cfg.optim.lr == 7e-4 and cfg.model.overrides["mask_prob"] == 0.1
    assert cfg.train.max_updates == 123 and cfg.train.feature_grad_mult == 0.0
    source = {c.key: c.source for c in choices}
    for key in ("optim.lr", "model.overrides.mask_prob", "train.max_updates", "train.feature_grad_mult"):
        assert source[key] == "config", key
    assert source["model.overrides.mask_channel_prob"].startswith("derived: 1.00 h labelled -> band 1h, cpu table")
    assert cfg.train.valid_interval == 50  # from the explicit budget: a tenth of it, at least 50
    text = format_choices(choices, 1.0)
    assert "optim.lr" in text and "0.0007" in text and "derived: from scratch" in text


def test_existing_recipe_configs_keep_every_value_they_set(tmp_path):
    """The commonvoice/librispeech tiny configs (and so the embedded default) set the band values;
    only the keys they leave unset are derived."""
    from pathlib import Path

    conf = Path(__file__).resolve().parents[1] / "recipes" / "shared" / "conf" / "finetune_tiny.yaml"
    sets = ["train.max_updates=1000", "train.init=none"]
    before = load_config(conf, "finetune", sets)
    after = load_config(conf, "finetune", sets)
    choices = apply_data_size_defaults(after, explicit_keys(conf, sets), hours=10 / 60, width=128)
    derived = {c.key for c in choices if c.source != "config"}
    assert derived == {"train.feature_grad_mult", "train.blank_warn_updates", "model.overrides.mask_min_masks",
                       "data.speed_perturb", "data.channel_augment", "data.normalize"}
    for section in ("optim", "schedule"):
        assert getattr(before, section) == getattr(after, section)
    for key, value in before.model.overrides.items():
        assert after.model.overrides[key] == value, key
    assert (before.data.max_duration, before.data.lang_dir) == (after.data.max_duration, after.data.lang_dir)
    assert (after.train.max_updates, after.train.valid_interval, after.train.freeze_finetune_updates) == (1000, 100, 0)


def cut_manifest(path, durations_langs):
    from lhotse import CutSet, Recording, SupervisionSegment
    from lhotse.audio import AudioSource

    cuts = []
    for i, (dur, lang) in enumerate(durations_langs):
        n = int(dur * 16000)
        rec = Recording(id=f"r{i}", sources=[AudioSource(type="file", channels=[0], source=f"r{i}.wav")],
                        sampling_rate=16000, num_samples=n, duration=n / 16000)
        cut = rec.to_cut()
        cut.supervisions = [SupervisionSegment(id=f"r{i}", recording_id=rec.id, start=0, duration=rec.duration,
                                               text="a", language=lang)]
        cuts.append(cut)
    CutSet.from_cuts(cuts).to_file(path)
    return str(path)


def test_labelled_hours_sums_the_training_cuts_of_the_chosen_languages(tmp_path, caplog):
    a = cut_manifest(tmp_path / "a.jsonl.gz", [(1800.0, "en"), (900.0, "de")])
    b = cut_manifest(tmp_path / "b.jsonl.gz", [(1800.0, "en")])
    cfg, p = finetune_cfg(tmp_path, f"data:\n  train_cuts: [{a}, {b}]\ntrain:\n  init: none\n")
    assert labelled_hours(cfg) == pytest.approx(1.25)
    cfg.data.languages = ["en"]
    assert labelled_hours(cfg) == pytest.approx(1.0)
    with caplog.at_level(logging.INFO, logger="toolkit.train"):
        finetune_settings(cfg, p, [])
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "fine-tuning settings for 1.00 h of labelled audio" in text and "band 1h" in text


def test_data_normalize_travels_into_the_model_config(tmp_path):
    """data.normalize=true must reach the checkpoint's model config: decoding normalises only when it says so."""
    from toolkit.train.tasks import resolve_model_config

    cfg, _ = finetune_cfg(tmp_path, "data:\n  normalize: true\n")
    assert resolve_model_config(cfg, None).normalize is True
    cfg, _ = finetune_cfg(tmp_path, "")
    assert resolve_model_config(cfg, None).normalize is False  # the tiny preset's own value


@pytest.mark.parametrize("freeze, updates, logged", [
    (0, [0, 1, 2], []),               # no frozen phase: nothing to announce
    (0, [5, 6], []),                  # ... nor when resuming a run without one
    (3, [0, 1, 2, 3, 4], [3]),        # the frozen phase ends in this run: said once
    (3, [7, 8], []),                  # a resume past the frozen phase: not said again
    (3, [2, 3], [3]),                 # a resume inside it: said when it ends
])
def test_the_end_of_the_frozen_phase_is_logged_once_and_only_when_it_happens(caplog, freeze, updates, logged):
    import torch

    from toolkit.train.config import TrainConfig
    from toolkit.train.tasks import CTCTask

    task = object.__new__(CTCTask)  # on_update needs only the config and the frozen state
    task.cfg = TrainConfig()
    task.cfg.train.freeze_finetune_updates = freeze
    task.model_cfg = type("M", (), {"feature_grad_mult": 1.0})()
    task._frozen = None
    model = torch.nn.Module()
    model.wav2vec2 = torch.nn.Linear(2, 2)
    caplog.set_level(logging.INFO, logger="toolkit.train")
    for u in updates:
        task.on_update(model, u)
        assert model.wav2vec2.weight.requires_grad == (u >= freeze)
    said = [r.getMessage() for r in caplog.records if "unfrozen" in r.getMessage()]
    assert said == [f"update {u}: the Transformer is unfrozen" for u in logged]


def labelled_manifest(path, rows):
    """Cuts (no audio is read) with (text, language) each: the fine-tuning task's checks only read the text."""
    from lhotse import CutSet, Recording, SupervisionSegment
    from lhotse.audio import AudioSource

    cuts = []
    for i, (text, lang) in enumerate(rows):
        rec = Recording(id=f"r{i}", sources=[AudioSource(type="file", channels=[0], source=f"r{i}.wav")],
                        sampling_rate=16000, num_samples=16000, duration=1.0)
        cut = rec.to_cut()
        cut.supervisions = [] if text is None else [SupervisionSegment(id=f"r{i}", recording_id=rec.id, start=0,
                                                                         duration=1.0, text=text, language=lang)]
        cuts.append(cut)
    CutSet.from_cuts(cuts).to_file(path)
    return str(path)


@pytest.mark.parametrize("texts", [[None, None], ["", "ab"], ["ab ba", None]], ids=["none", "one-empty", "one-bare"])
def test_finetuning_refuses_training_cuts_without_a_transcript(tmp_path, texts):
    """CTC takes an empty target: cuts without text trained blank-only output, exit 0 ("every training
    target is in the vocabulary (0 tokens)")."""
    from graph_fixtures import char_lang
    from toolkit.train.tasks import CTCTask
    from toolkit.utils import ToolkitError

    lang = char_lang(tmp_path / "lang", ["ab", "ba"])
    train = labelled_manifest(tmp_path / "t.jsonl.gz", [(t, "xx") for t in texts] + [("ab", "xx")])
    cfg, _ = finetune_cfg(tmp_path, "", [f"data.train_cuts=[{train}]", f"data.lang_dir={lang}", "train.init=none",
                                         f"exp_dir={tmp_path / 'e'}"])
    with pytest.raises(ToolkitError) as e:
        CTCTask(cfg)
    n = sum(1 for t in texts if not t)
    assert f"{n} of 3 training cuts have no transcript (e.g. r{texts.index(next(t for t in texts if not t))})" \
        in str(e.value) and "\n" not in str(e.value)


def test_data_languages_picks_the_dev_cuts_and_the_checked_text_too(tmp_path):
    """data.languages filtered the training cuts only: dev WER (and best.pt) came from other languages'
    cuts, and their letters failed the <unk> check of an Italian-only run."""
    from graph_fixtures import char_lang
    from toolkit.train.tasks import CTCTask, in_languages, load_cuts
    from toolkit.utils import ToolkitError

    lang = char_lang(tmp_path / "lang", ["ab", "ba"])
    train = labelled_manifest(tmp_path / "t.jsonl.gz", [("ab ba", "it"), ("ßüö ab", "de"), ("ba", "it")])
    dev = labelled_manifest(tmp_path / "d.jsonl.gz", [("ab", "it"), ("üß", "de"), ("ü", "de")])
    sets = [f"data.train_cuts=[{train}]", f"data.dev_cuts=[{dev}]", f"data.lang_dir={lang}", "train.init=none",
            f"exp_dir={tmp_path / 'e'}"]
    cfg, _ = finetune_cfg(tmp_path, "", sets + ["data.languages=[it]"])
    CTCTask(cfg)  # the German letters are outside the Italian run's data: no <unk> error
    assert [c.id for c in in_languages(cfg, load_cuts(cfg.data.dev_cuts, "data.dev_cuts"), "data.dev_cuts")] == ["r0"]
    with pytest.raises(ToolkitError, match="<unk>"):
        CTCTask(finetune_cfg(tmp_path, "", sets)[0])  # all languages: the German letters count
    cfg.data.languages = ["fr"]
    with pytest.raises(ToolkitError, match=r"data.languages: no cut of data.dev_cuts has language fr"):
        in_languages(cfg, load_cuts(cfg.data.dev_cuts, "data.dev_cuts"), "data.dev_cuts")


@pytest.mark.parametrize("which", ["train_cuts", "dev_cuts"])
def test_a_truncated_manifest_is_a_one_line_error_before_training(tmp_path, which):
    """A cut-off .jsonl.gz was an EOFError traceback: from the labelled-hours pass for training cuts,
    and for dev cuts only at the first validation, after training had run."""
    from graph_fixtures import char_lang
    from toolkit.train.tasks import CTCTask
    from toolkit.utils import ToolkitError

    lang = char_lang(tmp_path / "lang", ["ab", "ba"])
    good = labelled_manifest(tmp_path / "good.jsonl.gz", [("ab", "xx")] * 200)
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(open(good, "rb").read()[:-40])
    paths = {"train_cuts": good, "dev_cuts": good, which: str(cut)}
    cfg, _ = finetune_cfg(tmp_path, "", [f"data.train_cuts=[{paths['train_cuts']}]",
                                         f"data.dev_cuts=[{paths['dev_cuts']}]", f"data.lang_dir={lang}",
                                         "train.init=none", f"exp_dir={tmp_path / 'e'}"])
    with pytest.raises(ToolkitError) as e:
        from toolkit.train.auto import labelled_hours

        labelled_hours(cfg)
        CTCTask(cfg)  # the dev cuts too, before any training
    assert str(e.value).startswith(f"data.{which}: {cut}: truncated or corrupt") and "\n" not in str(e.value)

"""The two objectives of the engine: wav2vec 2.0 pretraining and CTC fine-tuning.

Each `Task` builds its model (from a preset, or from a checkpoint given as `train.init`), its
batches and its loss; `engine.Trainer` does the rest.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Optional

import torch

from toolkit.model.config import SAMPLE_RATE
from toolkit.train import ddp
from toolkit.train.config import TrainConfig
from toolkit.train.collapse import fingerprint
from toolkit.train.ctc import make_ctc_loss
from toolkit.train.engine import BatchStream, StepOutput, Task
from toolkit.utils import ToolkitError

logger = logging.getLogger("toolkit.train")


# ---------------------------------------------------------------------------------------
# Shared helpers

_INTACT: set[tuple[str, int, int]] = set()  # (path, size, mtime_ns) of manifests read to the end once


def _check_intact(path: str, key: str) -> None:
    """A gzipped manifest cut short (an interrupted copy) read as a traceback at the first pass over
    its cuts, for dev cuts only at the first validation: decompress it to the end once, up front."""
    import gzip

    st = Path(path).stat()
    stamp = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if stamp in _INTACT or not str(path).endswith(".gz"):
        return
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 20):
                pass
    except (EOFError, OSError) as e:
        raise ToolkitError(f"{key}: {path}: truncated or corrupt ({e}); re-create it (toolkit prepare)") from None
    _INTACT.add(stamp)


def load_cuts(paths: list[str], key: str):  # noqa: ANN201 - lhotse CutSet
    """Lazily open and concatenate cut manifests; one-line errors naming a missing or truncated file."""
    from lhotse import CutSet, combine

    if not paths:
        raise ToolkitError(f"{key}: no cut manifest given; set it in the config or with --set {key}=[path]")
    sets = []
    for p in paths:
        if not Path(p).is_file():
            raise ToolkitError(f"{key}: {p} not found; run the data preparation stage (toolkit prepare) first")
        _check_intact(str(p), key)
        sets.append(CutSet.from_jsonl_lazy(p) if str(p).endswith((".jsonl", ".jsonl.gz")) else CutSet.from_file(p))
    return sets[0] if len(sets) == 1 else combine(*sets)


def resolve_model_config(cfg: TrainConfig, init_ckpt: Optional[dict]):  # noqa: ANN201
    """Preset (or the init checkpoint's architecture) + model.overrides + train.feature_grad_mult
    + data.normalize (when set: the model config travels into the checkpoint, and decoding and
    feature extraction normalise the waveform exactly when training did)."""
    from toolkit.model.config import Wav2Vec2Config
    from toolkit.model.presets import get_preset

    if init_ckpt is not None:
        base = Wav2Vec2Config.from_dict(init_ckpt["model_config"], where=f"{cfg.train.init} model_config")
        if cfg.model.preset is not None:
            wanted = get_preset(cfg.model.preset).architecture()
            differ = [k for k, v in base.architecture().items() if wanted[k] != v]
            if differ:
                k = differ[0]
                raise ToolkitError(f"model.preset {cfg.model.preset} and train.init {cfg.train.init} are different "
                                   f"architectures ({k}: {wanted[k]} vs {base.architecture()[k]}); the model comes "
                                   "from train.init: remove model.preset or choose the matching one")
    else:
        base = get_preset(cfg.model.preset or "tiny")
    changes = dict(cfg.model.overrides)
    if cfg.train.feature_grad_mult is not None:
        changes["feature_grad_mult"] = cfg.train.feature_grad_mult
    if cfg.data.normalize is not None:
        changes["normalize"] = bool(cfg.data.normalize)
    merged = base.to_dict()
    unknown = sorted(set(changes) - set(merged))
    if unknown:
        raise ToolkitError(f"model.overrides: unknown key(s) {', '.join(unknown)}; valid keys: "
                           f"{', '.join(sorted(merged))}")
    merged.update(changes)
    cfg_out = Wav2Vec2Config.from_dict(merged, where="model.overrides")
    if init_ckpt is not None:  # the weights fit only the network they were trained as (a parameter-free
        # front-end's geometry, e.g. the fbank window, would otherwise change unnoticed)
        was, now = base.architecture(), cfg_out.architecture()
        differ = [k for k in was if was[k] != now[k]]
        if differ:
            k = differ[0]
            raise ToolkitError(f"model.overrides: {k}={now[k]} but train.init {cfg.train.init} was trained with "
                               f"{k}={was[k]}; its weights need its own architecture: remove that override")
    return cfg_out


def load_init(cfg: TrainConfig, resume: bool | str = True) -> Optional[dict]:
    """The `train.init` checkpoint, or None from scratch.

    A run that will resume (`resume`: True for the newest checkpoint-<step>.pt of exp_dir, or a
    checkpoint path) takes its weights from that checkpoint, not from train.init: when train.init
    has been deleted since the run started, the resumed checkpoint's architecture stands in for it
    (`"model": None`, `"init_missing": True`), and only a collapse restart, which needs the initial
    weights, is refused later (toolkit/train/collapse.py)."""
    if cfg.train.init in (None, "", "none"):
        return None
    from toolkit.model.checkpoint import load_checkpoint

    if not Path(cfg.train.init).exists() and resume is not False:
        from toolkit.train.expdir import list_checkpoints

        found = (list_checkpoints(cfg.exp_dir) if cfg.exp_dir else []) if resume is True else [(0, Path(resume))]
        if found and found[-1][1].is_file():
            ckpt = load_checkpoint(found[-1][1])
            logger.warning("train.init %s: not found; the run resumes from %s, which holds its weights (a collapse "
                           "restart, which starts from the initial weights, is refused)", cfg.train.init, found[-1][1])
            return {"kind": ckpt.get("kind"), "model_config": ckpt["model_config"], "model": None,
                    "init_missing": True}
    return load_checkpoint(cfg.train.init)


def seed_layerdrop(model: torch.nn.Module, seed: int) -> None:
    """Seed the model's LayerDrop generator identically on every rank (docs/DESIGN.md, "Traps"), if it has one."""
    for module in model.modules():
        if hasattr(module, "seed_layerdrop"):
            module.seed_layerdrop(seed)


def make_stream(cfg: TrainConfig, cuts, dataset, dist: ddp.DistInfo, seed: int, shuffle: bool = True) -> BatchStream:
    import itertools

    from toolkit.data.loader import make_loader

    # Duration buckets cannot outnumber the cuts (tiny dev sets); counting stops at num_buckets,
    # so a lazy or endless (mixed) cut set is only peeked at.
    buckets = max(1, min(cfg.data.num_buckets, sum(1 for _ in itertools.islice(cuts, cfg.data.num_buckets))))
    loader, sampler = make_loader(cuts, dataset, max_duration=cfg.data.max_duration, shuffle=shuffle, seed=seed,
                                  world_size=dist.world_size, rank=dist.rank, num_workers=cfg.data.num_workers,
                                  num_buckets=buckets)
    return BatchStream(loader, sampler, seed)


class HasLanguage:
    """Cut filter by supervision language, one of `languages` (a class, not a lambda: DataLoader
    workers pickle it)."""

    def __init__(self, *languages: str):
        self.languages = frozenset(languages)

    def __call__(self, cut) -> bool:  # noqa: ANN001
        return bool(cut.supervisions) and cut.supervisions[0].language in self.languages


def in_languages(cfg: TrainConfig, cuts, option: str):  # noqa: ANN001, ANN201
    """`cuts` of `data.languages` only (all of them when it is empty; lazy stays lazy); an error
    naming `option` when none is left. Training, the <unk> check and validation see the same cuts."""
    langs = [str(lang) for lang in cfg.data.languages]
    if not langs:
        return cuts
    kept = cuts.filter(HasLanguage(*langs))
    if next(iter(kept), None) is None:
        raise ToolkitError(f"data.languages: no cut of {option} has language {', '.join(langs)}; "
                           "check the list against the manifests' supervision languages")
    return kept


def check_dev_cuts(cfg: TrainConfig) -> None:
    """The dev manifests are first read at the first validation: check them before training instead
    (found, intact, holding cuts of data.languages)."""
    if cfg.data.dev_cuts:
        in_languages(cfg, load_cuts(cfg.data.dev_cuts, "data.dev_cuts"), "data.dev_cuts")


def _training_cuts(cfg: TrainConfig, seed: int):  # noqa: ANN201
    cuts = load_cuts(cfg.data.train_cuts, "data.train_cuts")
    langs = list(cfg.data.languages)
    if len(langs) <= 1:
        return in_languages(cfg, cuts, "data.train_cuts") if langs else cuts
    from toolkit.data.mix import mix_languages

    by_lang = {lang: cuts.filter(HasLanguage(lang)).to_eager()
               for lang in langs}
    empty = [lang for lang, cs in by_lang.items() if len(cs) == 0]
    if empty:
        raise ToolkitError(f"data.languages: no training cut has language {', '.join(empty)}; "
                           "check the list against the manifests' supervision languages")
    return mix_languages(by_lang, alpha=cfg.data.alpha, seed=seed)


# ---------------------------------------------------------------------------------------
# Pretraining

class PretrainTask(Task):
    """Contrastive + diversity + feature-penalty loss on unlabeled cuts (fairseq semantics)."""

    kind = "pretrain"

    def __init__(self, cfg: TrainConfig, resume: bool | str = True):
        self.cfg = cfg
        self.init_ckpt = load_init(cfg, resume)
        self.init_missing = bool(self.init_ckpt and self.init_ckpt.get("init_missing"))
        if self.init_ckpt is not None and self.init_ckpt["kind"] != "pretrain":
            raise ToolkitError(f"train.init: {cfg.train.init} is a {self.init_ckpt['kind']!r} checkpoint; "
                               "continued pretraining needs a pretraining checkpoint (with quantizer)")
        self.model_cfg = resolve_model_config(cfg, self.init_ckpt)
        self.num_codes = self.model_cfg.latent_vars * self.model_cfg.latent_groups
        self.normalize = self.model_cfg.normalize  # data.normalize, when set, is merged into it
        load_cuts(cfg.data.train_cuts, "data.train_cuts")  # found and intact, before the dev cuts
        check_dev_cuts(cfg)

    def model_config(self):  # noqa: ANN201
        return self.model_cfg

    def build_model(self) -> torch.nn.Module:
        from toolkit.model.checkpoint import load_state_dict_strict
        from toolkit.model.wav2vec2 import Wav2Vec2ForPretraining

        model = Wav2Vec2ForPretraining(self.model_cfg)
        if self.init_ckpt is not None and self.init_ckpt["model"] is not None:
            load_state_dict_strict(model, self.init_ckpt["model"], where=f"train.init {self.cfg.train.init}")
            self.init_fingerprint = fingerprint(self.init_ckpt["model"])
            logger.info("continued pretraining from %s", self.cfg.train.init)
        seed_layerdrop(model, self.cfg.train.seed)
        self.init_ckpt = None  # free the weights
        return model

    def _dataset(self, seed: int):  # noqa: ANN201
        from toolkit.data.dataset import AudioDataset

        return AudioDataset(normalize=self.normalize, crop_to_shortest=True,
                            max_sample_size=self.cfg.data.max_sample_size,
                            conv_layers=self.model_cfg.conv_feature_layers,
                            speed_perturb=self.cfg.data.speed_perturb, seed=seed,
                            speed_factors=tuple(self.cfg.data.speed_factors),
                            channel_augment=self.cfg.data.channel_augment)

    def train_batches(self, dist: ddp.DistInfo, seed: int) -> BatchStream:
        return make_stream(self.cfg, _training_cuts(self.cfg, seed), self._dataset(seed), dist, seed)

    def on_update(self, model: torch.nn.Module, num_updates: int) -> None:
        model.set_num_updates(num_updates)

    def step(self, model: torch.nn.Module, batch: dict, num_updates: int) -> StepOutput:
        if batch["audio"].shape[0] == 0:  # every cut of the batch was unloadable
            return StepOutput(loss=torch.zeros(()), sample_size=0.0, audio_seconds=0.0)
        out = model(batch["audio"], batch["lengths"])
        metrics = {k: float(v) for k, v in out.metrics.items() if k != "sample_size"}
        n = max(float(out.sample_size), 1.0)
        for key in ("contrastive_loss", "diversity_loss"):  # summed over masked frames -> per frame
            if key in metrics:
                metrics[key] /= n
        return StepOutput(loss=out.loss, sample_size=float(out.sample_size),
                          audio_seconds=float(batch["lengths"].sum()) / SAMPLE_RATE, metrics=metrics)

    def validate(self, model: torch.nn.Module, num_updates: int) -> dict[str, float]:
        if not self.cfg.data.dev_cuts:
            return {}
        from toolkit.data.dataset import AudioDataset

        cuts = in_languages(self.cfg, load_cuts(self.cfg.data.dev_cuts, "data.dev_cuts"), "data.dev_cuts")
        ds = AudioDataset(normalize=self.normalize, crop_to_shortest=True,
                          max_sample_size=self.cfg.data.max_sample_size, seed=0,
                          conv_layers=self.model_cfg.conv_feature_layers)
        stream = make_stream(self.cfg, cuts, ds, ddp.DistInfo(), seed=0, shuffle=False)
        device = next(model.parameters()).device
        loss = ss = acc = 0.0
        n = 0
        for batch in _one_epoch(stream, self.cfg.train.max_valid_batches):
            out = model(batch["audio"].to(device), batch["lengths"].to(device))
            loss += float(out.loss)
            ss += float(out.sample_size)
            acc += float(out.metrics["accuracy"]) * float(out.sample_size)
            n += 1
        if ss == 0:
            return {}
        return {"loss": loss / ss, "accuracy": acc / ss, "batches": float(n)}

    def best_metric(self) -> Optional[str]:
        return "loss"

    def check_health(self, row: dict, num_updates: int) -> None:
        """Codebook collapse: code perplexity far below the number of codes after warm-up."""
        t = self.cfg.train
        ppl = row.get("code_perplexity")
        if ppl is not None and num_updates >= t.collapse_after and ppl < t.collapse_threshold * self.num_codes:
            logger.warning("codebook collapse? code perplexity %.1f < %.3f x %d codes at update %d; "
                           "check the diversity loss weight and the Gumbel temperature",
                           ppl, t.collapse_threshold, self.num_codes, num_updates)


def _one_epoch(stream: BatchStream, limit: int = 0):  # noqa: ANN202
    it = iter(stream.loader)
    for i, batch in enumerate(it):
        if limit and i >= limit:
            break
        yield batch


# ---------------------------------------------------------------------------------------
# CTC fine-tuning

def training_language(cfg: TrainConfig, peek: int = 200) -> Optional[str]:
    """The one language of the fine-tuning data: `data.languages` when it names one, else the
    supervision language shared by the first `peek` training cuts; None when they differ or say none."""
    import itertools

    if len(cfg.data.languages) == 1:
        return str(cfg.data.languages[0])
    if cfg.data.languages:
        return None
    try:
        cuts = load_cuts(cfg.data.train_cuts, "data.train_cuts")
        langs = {c.supervisions[0].language for c in itertools.islice(cuts, peek) if c.supervisions}
    except ToolkitError:
        return None  # the training stream reports a missing manifest itself
    return langs.pop() if len(langs) == 1 and None not in langs else None


def check_unk_share(cuts, tokenizer, max_share: float, where: str) -> float:  # noqa: ANN001
    """Share of the training targets that the vocabulary turns into `<unk>` (characters or pieces
    it lacks: a lang dir built from other text, foreign script). Logged; above `max_share` a
    one-line error, since the model would learn to output <unk> for them."""
    from collections import Counter

    tokenizer.reset_oov()
    total = cuts_seen = 0
    unlabelled: list[str] = []
    unknown: Counter = Counter()
    for cut in cuts:
        cuts_seen += 1
        text = " ".join(s.text or "" for s in cut.supervisions)
        if not text.strip():
            unlabelled.append(cut.id)
            continue
        ids = tokenizer.encode(text)
        total += len(ids)
        if tokenizer.type == "char" and tokenizer.oov_count:
            unknown.update(c for c in text if not c.isspace() and c not in tokenizer.token_to_id)
    n = tokenizer.reset_oov()
    if unlabelled:  # CTC would learn blank-only output from them (an empty target is valid for CTC)
        raise ToolkitError(f"{where}: {len(unlabelled)} of {cuts_seen} training cuts have no transcript (e.g. "
                           f"{unlabelled[0]}); fine-tuning needs text for every cut: label them or leave them out "
                           "of the manifest (they can go into pretraining)")
    share = n / max(total, 1)
    if n:
        seen = ", ".join(f"{c!r} x{k}" for c, k in unknown.most_common(5))
        msg = (f"{where}: {n} of {total} training targets ({100 * share:.2f}%) are <unk> (outside the vocabulary"
               f"{': ' + seen if seen else ''})")
        if share > max_share:
            raise ToolkitError(f"{msg}; above data.max_unk_share={max_share}: build the lang dir from this training "
                               "text (toolkit lang-dir) or normalise the text, or raise data.max_unk_share")
        logger.warning("%s", msg)
    else:
        logger.info("%s: every training target is in the vocabulary (%d tokens)", where, total)
    return share


class CTCTask(Task):
    """CTC fine-tuning: pretrained (or random) wav2vec2 + a new linear head over the vocabulary."""

    kind = "ctc"

    def __init__(self, cfg: TrainConfig, resume: bool | str = True):
        from toolkit.text.tokenizer import Tokenizer

        self.cfg = cfg
        if not cfg.data.lang_dir:
            raise ToolkitError("data.lang_dir: fine-tuning needs a lang dir (tokens.txt); build one with "
                               "`toolkit lang-dir` and set data.lang_dir")
        self.tokenizer = Tokenizer.from_lang_dir(cfg.data.lang_dir)
        if cfg.train.freeze_finetune_updates >= cfg.train.max_updates:
            logger.warning("train.freeze_finetune_updates=%d >= train.max_updates=%d: only the CTC head will train",
                           cfg.train.freeze_finetune_updates, cfg.train.max_updates)
        self.init_ckpt = load_init(cfg, resume)
        self.init_missing = bool(self.init_ckpt and self.init_ckpt.get("init_missing"))
        self.model_cfg = resolve_model_config(cfg, self.init_ckpt)
        self.normalize = self.model_cfg.normalize  # data.normalize, when set, is merged into it
        self.language = training_language(cfg)
        self._frozen: Optional[bool] = None
        self.ctc_loss = make_ctc_loss(cfg.train.ctc_loss, cfg.train.ctc_topo)  # train.ctc_loss: torch | k2
        check_unk_share(in_languages(cfg, load_cuts(cfg.data.train_cuts, "data.train_cuts"), "data.train_cuts"),
                        self.tokenizer, cfg.data.max_unk_share,
                        f"data.train_cuts {' '.join(map(str, cfg.data.train_cuts))}")
        check_dev_cuts(cfg)

    def model_config(self):  # noqa: ANN201
        return self.model_cfg

    def vocab(self) -> dict:
        """The checkpoint's "vocab" entry: the tokenizer's, plus "language", the ISO code whose
        `normalize_text` rules the training text followed (None when several or unknown), so that
        `toolkit transcribe` / `toolkit export` know the form of the model's output."""
        return {**self.tokenizer.to_dict(), "language": self.language}

    def build_model(self) -> torch.nn.Module:
        from toolkit.model.wav2vec2 import Wav2Vec2ForCTC

        model = Wav2Vec2ForCTC(self.model_cfg, self.tokenizer.vocab_size)
        if self.init_ckpt is not None and self.init_ckpt["model"] is not None:
            self._init_from(model, self.init_ckpt)
            self.init_fingerprint = fingerprint(self.init_ckpt["model"])
        if self.model_cfg.feature_grad_mult == 0:
            model.freeze_feature_encoder()
        seed_layerdrop(model, self.cfg.train.seed)
        self.init_ckpt = None
        return model

    def _init_from(self, model: torch.nn.Module, ckpt: dict) -> None:
        """Copy the `wav2vec2.*` weights; the head too when the vocabulary is the same."""
        own = model.state_dict()
        src = {k: v for k, v in ckpt["model"].items() if k.startswith("wav2vec2.")}
        missing = sorted(k for k in own if k.startswith("wav2vec2.") and k not in src)
        bad = sorted(k for k in src if k not in own or own[k].shape != src[k].shape)
        if missing or bad:
            from toolkit.model.checkpoint import describe_mismatch

            raise ToolkitError(f"train.init {self.cfg.train.init}: encoder weights do not fit: "
                               f"{describe_mismatch(missing, bad, [])}")
        same_vocab = ckpt["kind"] == "ctc" and (ckpt.get("vocab") or {}).get("tokens") == self.tokenizer.tokens
        if same_vocab:
            src.update({k: v for k, v in ckpt["model"].items() if k.startswith("proj.")})
        model.load_state_dict(src, strict=False)
        logger.info("initialised the encoder from %s (%d tensors; %s head)", self.cfg.train.init, len(src),
                    "its" if same_vocab else "new")

    def _dataset(self, seed: int, train: bool = True):  # noqa: ANN201
        from toolkit.data.dataset import AudioDataset

        return AudioDataset(tokenizer=self.tokenizer, normalize=self.normalize,
                            conv_layers=self.model_cfg.conv_feature_layers,
                            speed_perturb=self.cfg.data.speed_perturb and train, seed=seed,
                            speed_factors=tuple(self.cfg.data.speed_factors),
                            channel_augment=self.cfg.data.channel_augment if train else 0.0)

    def train_batches(self, dist: ddp.DistInfo, seed: int) -> BatchStream:
        return make_stream(self.cfg, _training_cuts(self.cfg, seed), self._dataset(seed), dist, seed)

    def on_update(self, model: torch.nn.Module, num_updates: int) -> None:
        """Only the head trains for the first `freeze_finetune_updates` updates (fairseq)."""
        frozen = num_updates < self.cfg.train.freeze_finetune_updates
        if frozen == self._frozen:
            return
        cnn_frozen = self.model_cfg.feature_grad_mult == 0
        for name, p in model.named_parameters():
            if name.startswith("wav2vec2."):
                in_cnn = name.startswith("wav2vec2.feature_extractor.")
                p.requires_grad_(not frozen and not (in_cnn and cnn_frozen))
        was_frozen, self._frozen = self._frozen, frozen
        if was_frozen:  # the frozen phase ends in this run (not a resume past it, not a run without one)
            logger.info("update %d: the Transformer is unfrozen", num_updates)

    def step(self, model: torch.nn.Module, batch: dict, num_updates: int) -> StepOutput:
        pre_dropped = float(batch.get("num_dropped", 0))  # unloadable / too short, dropped by the dataset
        if batch["audio"].shape[0] == 0:
            return StepOutput(loss=torch.zeros(()), sample_size=0.0, audio_seconds=0.0,
                              metrics={"dropped_utterances": pre_dropped}, sums=("dropped_utterances",))
        log_probs, out_lengths = model(batch["audio"], batch["lengths"])
        loss, kept, dropped = self.ctc_loss(log_probs, out_lengths, batch["targets"], batch["target_lengths"])
        dropped += pre_dropped
        if dropped:
            logger.debug("dropped %d utterance(s) too short for their transcripts", dropped)
        return StepOutput(loss=loss, sample_size=float(kept), audio_seconds=float(batch["lengths"].sum()) / SAMPLE_RATE,
                          metrics={"dropped_utterances": float(dropped), "unk_targets": float(batch.get("num_oov", 0))},
                          sums=("dropped_utterances", "unk_targets"))

    def validate(self, model: torch.nn.Module, num_updates: int) -> dict[str, float]:
        """Dev CTC loss and greedy WER/CER, scored by `toolkit.score.score_pairs` (the same numbers
        `toolkit score` gives for these hypotheses)."""
        if not self.cfg.data.dev_cuts:
            return {}
        from toolkit.decode.greedy import greedy_ids
        from toolkit.score import score_pairs

        cuts = in_languages(self.cfg, load_cuts(self.cfg.data.dev_cuts, "data.dev_cuts"), "data.dev_cuts")
        stream = make_stream(self.cfg, cuts, self._dataset(0, train=False), ddp.DistInfo(), seed=0, shuffle=False)
        device = next(model.parameters()).device
        refs: dict[str, str] = {}
        hyps: dict[str, str] = {}
        loss = 0.0
        kept = blank_only = 0
        for batch in _one_epoch(stream, self.cfg.train.max_valid_batches):
            log_probs, out_lengths = model(batch["audio"].to(device), batch["lengths"].to(device))
            l, k, _ = self.ctc_loss(log_probs, out_lengths, batch["targets"].to(device),
                                    batch["target_lengths"].to(device))
            loss, kept = loss + float(l), kept + k
            for cid, ref, ids in zip(batch["cut_ids"], batch["texts"], greedy_ids(log_probs.float(), out_lengths)):
                blank_only += not ids
                if ref.strip():
                    refs[cid] = ref
                    hyps[cid] = self.tokenizer.decode(ids)
        if not refs:
            return {}
        if blank_only == len(hyps) and num_updates >= self.cfg.train.blank_warn_updates:
            logger.warning("greedy dev output is all blank after %d updates: check lr, the vocabulary's case "
                           "against the text, and train.freeze_finetune_updates", num_updates)
        report = score_pairs(refs, hyps, replications=0)
        return {"ctc_loss": loss / max(kept, 1), "wer": report.wer.rate, "cer": report.cer.rate,
                "blank_only": blank_only / len(hyps), "utterances": float(len(refs))}

    def best_metric(self) -> Optional[str]:
        return "wer"

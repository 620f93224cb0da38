"""The wav2vec 2.0 / XLSR model core: configs, presets, model, checkpoints and converters.

Imports are lazy-free but light: importing `toolkit.model` pulls in torch only.
"""
from toolkit.model.config import Wav2Vec2Config
from toolkit.model.presets import PRESETS, get_preset
from toolkit.model.wav2vec2 import (
    PretrainingOutput,
    Wav2Vec2ForCTC,
    Wav2Vec2ForPretraining,
    Wav2Vec2Model,
    Wav2Vec2Output,
    CTCLoss,
    ctc_loss,
    ctc_min_frames,
)

__all__ = ["Wav2Vec2Config", "PRESETS", "get_preset", "Wav2Vec2Model", "Wav2Vec2Output",
           "Wav2Vec2ForPretraining", "PretrainingOutput", "Wav2Vec2ForCTC", "CTCLoss", "ctc_loss", "ctc_min_frames"]

"""LM-scale sweeps (toolkit.decode.lm_scales): the file a dev set writes and the test set reads back.

The k2 side (every scale from one lattice, equal to one decoding per scale) is in tests/test_k2.py.
"""
from __future__ import annotations

import json

import pytest

from toolkit.decode.lm_scales import best_lm_scale, parse_scales, write_sweep
from toolkit.score import score_pairs
from toolkit.utils import ToolkitError

REFS = {"a": "the cat sat", "b": "on the mat"}


def report(hyps):
    return score_pairs(REFS, hyps)


def test_the_lowest_wer_wins_then_cer_then_the_smaller_scale(tmp_path):
    reports = {
        0.3: report({"a": "the cat sat", "b": "on a mat"}),     # 1 word wrong
        0.7: report({"a": "the cat sat", "b": "on the mat"}),   # all right
        1.5: report({"a": "the cat sat", "b": "on the mat"}),   # all right too: the smaller scale wins
        3.0: report({"a": "the sat", "b": "on the mat"}),       # 1 deletion
    }
    assert write_sweep(tmp_path, reports) == 0.7
    data = json.loads((tmp_path / "lm-scales.json").read_text())
    assert data["best"] == 0.7 and data["metric"] == "wer"
    assert data["scales"]["0.3"] == {"wer": pytest.approx(100 / 6), "cer": reports[0.3].cer.rate, "dir": "lm_scale_0.3"}
    assert best_lm_scale(tmp_path) == 0.7
    # the same WER: the lower CER decides ("on tha mat" misses one letter, "on a mat" three)
    close = {0.5: report({"a": "the cat sat", "b": "on a mat"}), 2.0: report({"a": "the cat sat", "b": "on tha mat"})}
    assert close[0.5].wer.rate == close[2.0].wer.rate and close[2.0].cer.rate < close[0.5].cer.rate
    assert write_sweep(tmp_path / "x", close) == 2.0


def test_bad_sweeps_and_scales_are_one_line_errors(tmp_path):
    with pytest.raises(ToolkitError, match=r"lm-scales.json: not found; decode the dev set with --lm-scales"):
        best_lm_scale(tmp_path)
    (tmp_path / "lm-scales.json").write_text("{\"scales\": {}}")
    with pytest.raises(ToolkitError, match="not an LM-scale sweep written by toolkit decode"):
        best_lm_scale(tmp_path)
    assert parse_scales("0.3, 0.5,1,0.5") == (0.3, 0.5, 1.0)
    assert parse_scales(None) == ()
    for bad in ("0.3,x", "0,1", "-1", ","):
        with pytest.raises(ToolkitError, match="comma-separated positive numbers"):
            parse_scales(bad)

"""WER/CER scoring: `score_pairs` (numbers), `write_reports` (icefall-style files + results.json).

See `toolkit.score.compute` for the units and counting conventions, `toolkit.score.report` for
the file layouts, and `toolkit.score.results` for RESULTS.md.
"""
from toolkit.score.compute import ErrorStats, Report, UttAlignment, score_pairs
from toolkit.score.report import write_reports

__all__ = ["ErrorStats", "Report", "UttAlignment", "score_pairs", "write_reports"]

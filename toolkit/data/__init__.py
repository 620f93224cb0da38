"""Data: synthetic corpora, Lhotse preparation, datasets, samplers, language mixing."""
from __future__ import annotations

import os
from pathlib import Path

from toolkit.utils import ToolkitError


def read_cuts(path: str | os.PathLike, option: str = "--cuts"):  # noqa: ANN201 - lhotse CutSet
    """An eager, non-empty Lhotse CutSet from the manifest given by `option`; one-line errors."""
    from lhotse import CutSet

    if not Path(path).is_file():
        raise ToolkitError(f"{option} {path}: file not found; run `toolkit prepare` first")
    try:
        cuts = CutSet.from_file(path).to_eager()
    except Exception as e:  # noqa: BLE001 - lhotse raises many kinds for a bad manifest
        raise ToolkitError(f"{option} {path}: cannot read the manifest ({type(e).__name__}: {e}); re-create it") from None
    if len(cuts) == 0:
        raise ToolkitError(f"{option} {path}: the manifest is empty")
    return cuts

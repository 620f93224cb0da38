"""The yesno corpus layout (lhotse's `prepare_yesno`: 60 files named by their 8 yes/no digits),
spoken by espeak-ng: a real lhotse recipe's input that needs no download."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf


def make_yesno_tree(out: Path, short_index: int | None = None) -> list[str]:
    """Writes the 60 wavs into `out`; the one at `short_index` (sorted) is 20 ms of silence,
    shorter than the model's receptive field. Returns the sorted file stems."""
    rng = np.random.default_rng(0)
    names: set[str] = set()
    while len(names) < 60:
        names.add("_".join(str(d) for d in rng.integers(0, 2, 8)))
    stems = sorted(names)
    out.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(stems):
        path = out / f"{name}.wav"
        if i == short_index:
            sf.write(path, np.zeros(320, dtype=np.float32), 16000)
            continue
        text = " ".join("yes" if d == "1" else "no" for d in name.split("_"))
        subprocess.run(["espeak-ng", "-v", "en", "-s", "220", "-w", str(path), text], check=True)
    return stems

"""Libri-light's limited-supervision subsets of LibriSpeech: the one fold table.

Libri-light's `librispeech_finetuning/` holds six 10-minute folds `1h/0` .. `1h/5` and the
folds of `9h`; the subsets are nested unions of them: 10m = 1h/0, 1h = 1h/{0..5},
10h = 1h + 9h. `toolkit synth-corpus` writes the folds, `toolkit prepare` reads them as the
splits `train-10m`, `train-1h` and `train-10h`; both take them from here.
"""
from __future__ import annotations

FOLD_MINUTES = 10.0
# Folder -> its duration in units of FOLD_MINUTES, in the order they are filled.
FOLDS: dict[str, int] = {**{f"1h/{i}": 1 for i in range(6)}, "9h": 54}
SUBSETS: dict[str, tuple[str, ...]] = {
    "10m": ("1h/0",),
    "1h": tuple(f"1h/{i}" for i in range(6)),
    "10h": tuple(f"1h/{i}" for i in range(6)) + ("9h",),
}
# Subset duration in units of FOLD_MINUTES: 10m = 1, 1h = 6, 10h = 60.
SUBSET_FOLDS: dict[str, int] = {name: sum(FOLDS[f] for f in folds) for name, folds in SUBSETS.items()}


def split_name(subset: str) -> str:
    """The manifest split of a subset: `10m` -> `train-10m`."""
    return f"train-{subset}"


# The subsets as `toolkit prepare` names its splits.
SPLITS: dict[str, tuple[str, ...]] = {split_name(name): folds for name, folds in SUBSETS.items()}

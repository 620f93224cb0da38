"""The experiment directory: one run owns it at a time, and it only ever holds one run's lineage.

- `ExperimentLock`: `exp_dir/.lock`, held (an OS file lock, released when the process dies, so a
  killed run never leaves a stale lock behind) by the run that trains there; a second run in the
  same directory is a one-line error naming the holder (pid and host, from the lock file).
- `set_aside`: moves files of another lineage into `exp_dir/previous/<time>/` (or a folder of its
  own, never one that exists), never deleting:
  everything on a fresh start (checkpoints, last.pt, best.pt, averaged models, metrics, TensorBoard
  events, decode/, collapsed-<k>/, plots/), and on
  a resume the checkpoints of a branch that went further than the resumed step. So pruning to
  the newest `keep_last` checkpoints, `average-checkpoints --last N` and the next default resume
  only ever see the current run's checkpoints.
- `truncate_metrics`: on resume, metrics.jsonl keeps the rows up to the resumed step (rows
  written after that checkpoint would be written again) and drops a torn last line.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Iterator

from toolkit.utils import ToolkitError, atomic_write_text

log = logging.getLogger("toolkit.train")

CKPT_RE = re.compile(r"^checkpoint-(\d+)\.pt$")
LOCK = ".lock"
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "tensorboard")  # besides checkpoint-<step>.pt


def list_checkpoints(exp_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of `checkpoint-<step>.pt` in exp_dir, oldest first."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in exp_dir.iterdir() if (m := CKPT_RE.match(p.name))]
    return sorted(found)


class ExperimentLock:
    """Exclusive ownership of an experiment directory for the lifetime of a run (`with` block)."""

    def __init__(self, exp_dir: str | os.PathLike):
        self.path = Path(exp_dir) / LOCK
        self._fd: int | None = None

    def __enter__(self) -> "ExperimentLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_holder(fd)
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise ToolkitError(f"{self.path.parent}: in use by another run ({holder}; lock file {self.path}); "
                                   "wait for it to finish or give this run another exp_dir") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing releases the lock
            self._fd = None


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode() or "{}")
        return f"pid {info['pid']} on {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"


def _previous_dir(exp_dir: Path) -> Path:
    return _unused(exp_dir / "previous" / time.strftime("%Y%m%d-%H%M%S"))


def _unused(base: Path) -> Path:
    """`base`, or `base-1`, `base-2`, ... : the first that does not exist."""
    out, n = base, 1
    while out.exists() or out.is_symlink():
        out, n = base.with_name(f"{base.name}-{n}"), n + 1
    return out


def set_aside(exp_dir: str | os.PathLike, paths: list[Path], why: str, dest: Path | None = None) -> Path | None:
    """Move `paths` (files or folders of exp_dir) into `dest` (default exp_dir/previous/<time>/);
    returns that folder, or None when none of them exists."""
    exp_dir = Path(exp_dir)
    existing = [p for p in paths if p.exists() or p.is_symlink()]
    if not existing:
        return None
    # never onto files set aside before (a collapsed-1/ of an earlier run): a folder of its own
    dest = _previous_dir(exp_dir) if dest is None else _unused(Path(dest))
    dest.mkdir(parents=True)
    for p in existing:
        shutil.move(str(p), str(dest / p.name))
    log.warning("%s: %s; moved %s to %s", exp_dir, why, ", ".join(p.name for p in existing), dest)
    return dest


def set_aside_for_fresh_start(exp_dir: str | os.PathLike) -> Path | None:
    """A fresh run in a used directory: every file of the earlier run goes to previous/<time>/."""
    exp_dir = Path(exp_dir)
    paths = [p for _, p in list_checkpoints(exp_dir)] + [exp_dir / name for name in RUN_FILES]
    # what was made from that run: averaged models (any other *.pt) and its decodes, which
    # `toolkit results` would otherwise report as the new run's
    paths += [p for p in sorted(exp_dir.glob("*.pt")) if p not in paths] + [exp_dir / "decode"]
    # its collapsed attempts and its plots
    paths += sorted(p for p in exp_dir.glob("collapsed-*") if p.is_dir()) + [exp_dir / "plots"]
    return set_aside(exp_dir, paths, "a fresh run starts here")


def set_aside_other_branch(exp_dir: str | os.PathLike, step: int, resumed: Path) -> Path | None:
    """Resuming at `step` from `resumed`: checkpoints of a branch past it (an abandoned longer run)
    and, when `resumed` lies outside exp_dir, every checkpoint, best.pt, metrics and decodes of
    exp_dir, go to previous/<time>/."""
    exp_dir = Path(exp_dir)
    inside = resumed.resolve().parent == exp_dir.resolve()
    other = [p for s, p in list_checkpoints(exp_dir) if s > step or not inside]
    best = exp_dir / "best.pt"
    if best.is_file() and (_step_of(best) > step or not inside):
        other.append(best)
    if not inside:  # another experiment's checkpoint: this directory's metrics are of another lineage
        other += [exp_dir / "metrics.jsonl", exp_dir / "decode"]
    return set_aside(exp_dir, other, f"resuming at update {step} from {resumed}: these belong to another branch")


def _step_of(path: Path) -> int:
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("step", -1))
    except Exception:  # noqa: BLE001 - an unreadable best.pt is not this lineage's
        return 1 << 62


def truncate_metrics(exp_dir: str | os.PathLike, step: int) -> int:
    """Keep the metrics.jsonl rows with step <= `step` (and no torn line); returns the rows dropped."""
    path = Path(exp_dir) / "metrics.jsonl"
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
            ok = int(row["step"]) <= step
        except (ValueError, KeyError, TypeError):
            ok = False
        if ok:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        atomic_write_text(path, "".join(line + "\n" for line in kept))
        log.info("%s: dropped %d row(s) logged after update %d (they are logged again)", path, dropped, step)
    return dropped


@contextlib.contextmanager
def owned(exp_dir: str | os.PathLike, main: bool = True) -> Iterator[None]:
    """The lock for the main process; other ranks of a distributed run share its ownership."""
    if not main:
        yield
        return
    with ExperimentLock(exp_dir):
        yield

"""Small shared helpers: one-line user errors, atomic file writes, logging, YAML configs."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
import typing
from pathlib import Path
from typing import Any, Iterator

import yaml


class ToolkitError(Exception):
    """An error the user can fix; the CLI prints its message on one line and exits 1.

    Messages name the file or option at fault and what to do about it.
    """


# ---------------------------------------------------------------------------------------
# Atomic writes: a killed job never leaves a half-written file that a later stage trusts.

@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only on success.

    The temporary name keeps the final suffix (so writers that look at the suffix,
    like lhotse's `.jsonl.gz`, behave the same).
    """
    path = Path(path)
    if path.is_dir():
        raise ToolkitError(f"{path}: is a directory; give a file name for this output")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + "".join(path.suffixes), dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); the result gets the mode any new file gets here
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(e, OSError) and e.filename is None and e.errno is not None:
            # a failed write names no file: name the output it was for
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise


def refuse_output_over_inputs(out: str | os.PathLike, inputs: dict[str, str | os.PathLike]) -> None:
    """One-line ToolkitError when writing `out` would destroy one of the command's inputs.

    `inputs` maps how the user named each input ("the audio", "--checkpoint") to its path.
    Refused: `out` is an input (also through a link), is an existing file inside an input folder
    (a Hugging Face model folder's weights), or is a folder that holds an input (an output folder
    is replaced as a whole). A slip or swapped arguments must not turn a recording or a model into the output.
    """
    o = Path(os.path.abspath(out))
    for what, path in inputs.items():
        p = Path(os.path.abspath(path))
        if o == p or o.resolve() == p.resolve() or (o.exists() and p.exists() and os.path.samefile(o, p)):
            raise ToolkitError(f"{out}: is {what} itself; writing it would destroy the input: "
                               "choose another OUT (are the arguments swapped?)")
        for a, b in ((o, p), (o.resolve(), p.resolve())):
            if b in a.parents and o.exists():
                raise ToolkitError(f"{out}: is a file of {what} {path}; replacing it would damage the "
                                   "input: choose an OUT outside it")
            if a in b.parents:
                raise ToolkitError(f"{out}: holds {what} {path}, which writing OUT would destroy; "
                                   "choose another OUT")


def current_umask() -> int:
    """The process umask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 `text` to `path` through `atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` through `atomic_path`. torch reports a full disk as an obscure RuntimeError
    ("unexpected pos ..."): that becomes the OSError it is (ENOSPC, naming the file)."""
    import errno
    import shutil

    import torch

    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:
            written = tmp.stat().st_size if tmp.exists() else 0
            if shutil.disk_usage(tmp.parent).free < max(written, 1 << 20):
                raise OSError(errno.ENOSPC, "No space left on device", str(path)) from None
            raise ToolkitError(f"{path}: cannot write ({str(e).splitlines()[0][:120]}); check the disk") from None


# ---------------------------------------------------------------------------------------
# CPU memory allocator

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value (64-bit)
TRIM_THRESHOLD = 256 << 20


def tune_cpu_allocator() -> bool:
    """Let glibc keep freed blocks of up to 32 MiB in the heap instead of unmapping them.

    A model forward on a CPU allocates and frees the same large activations (a 30 s window through
    the feature encoder: 25 MB per layer output) again and again; glibc serves blocks above its
    (adaptive) mmap threshold with fresh mappings, so every forward faults all of those pages in
    again, which cost a quarter of the forward on the 2-core development VM (bench/RESULTS.md,
    "bench/transcribe.py"). Raising the mmap threshold to its maximum and the trim threshold to
    256 MiB keeps them mapped; at most 256 MiB of freed memory stays with the process. Applied once
    per process by `toolkit` commands; skipped (False) when the user configured the allocator
    (MALLOC_*_ / GLIBC_TUNABLES / LD_PRELOAD) or the C library is not glibc.
    """
    if any(k.startswith("MALLOC_") or k in ("GLIBC_TUNABLES", "LD_PRELOAD") for k in os.environ):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
            return False
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except OSError:
        return False


# ---------------------------------------------------------------------------------------
# Logging

def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s [%(name)s] %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )


# ---------------------------------------------------------------------------------------
# YAML configs into dataclasses, with `--set a.b=c` overrides

class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (SafeLoader keeps the last one,
    so a second `train:` section silently replaced the first, its train.init included)."""

    def construct_mapping(self, node, deep=False):  # noqa: ANN001, ANN201
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (first on line {seen[key] + 1}); merge the two",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def load_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"{path}: config file not found; check the path given with --config")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ToolkitError(f"{path}: invalid YAML{where}: {getattr(e, 'problem', e)}; fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ToolkitError(f"{path}: a config must be a YAML mapping (key: value), got {type(data).__name__}")
    return data


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply `a.b=c` overrides (values parsed as YAML scalars) to a nested dict."""
    for item in overrides or []:
        if "=" not in item:
            raise ToolkitError(f"--set {item!r}: expected KEY=VALUE, e.g. --set optim.lr=1e-4")
        key, value = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ToolkitError(f"--set {item!r}: {p!r} is not a section")
        node[parts[-1]] = yaml.safe_load(value) if value != "" else None
    return data


def dataclass_from_dict(cls: type, data: dict | None, where: str = "config") -> Any:
    """Build dataclass `cls` from a nested dict; unknown keys are errors naming the key."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ToolkitError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        hint = hints.get(f.name)
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = dataclass_from_dict(hint, value, f"{where}.{f.name}")
        elif hint is tuple or typing.get_origin(hint) is tuple:
            value = tuple(value) if isinstance(value, list) else value
        kwargs[f.name] = value
    return cls(**kwargs)


def dataclass_to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


# ---------------------------------------------------------------------------------------
# Command-line inputs shared by several commands

def resolve_device(name: str | None, option: str = "--device") -> Any:
    """`name` as a `torch.device`: "auto" or None picks cuda when available, else cpu.

    One-line ToolkitError naming `option` for a malformed name or for cuda without a visible GPU.
    """
    import torch

    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ToolkitError(f"{option} {name!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ToolkitError(f"{option} {name}: CUDA is not available here (no GPU visible); use cpu")
    return device


def split_text_lines(text: str) -> list[str]:
    """The lines of a text file's contents as line-oriented formats (Kaldi text, TSV, trans.txt)
    mean them: a leading byte-order mark dropped, lines ended by "\n" or "\r\n" only.
    `str.splitlines` also breaks at U+2028, U+0085, form feeds and the like, which may sit
    inside a sentence; a line cut there loses words or shifts every line number after it."""
    lines = text.removeprefix("\ufeff").split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def read_utf8_lines(path: str | os.PathLike, option: str, what: str) -> list[str]:
    """Lines of the UTF-8 text file given by `option` (`split_text_lines`: a byte-order mark is
    dropped); one-line ToolkitError when it is missing (the message asks for `what`) or not UTF-8,
    naming the line of the first bad byte."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"{option} {path}: file not found; give {what}")
    data = path.read_bytes()
    try:
        return split_text_lines(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ToolkitError(f"{option} {path}:{line}: not UTF-8 (byte {e.start}); convert the file to UTF-8 "
                           "(e.g. iconv -t UTF-8)") from None


def open_text_lines(path: str | os.PathLike, option: str, what: str) -> Iterator[str]:
    """Stream the lines (without line ends) of a UTF-8 text file, gunzipped when its magic bytes
    say gzip (`lm-norm.txt.gz`); for files too large for `read_utf8_lines`. One-line ToolkitError
    naming `option`, the file and the line for a missing, non-UTF-8 or truncated file."""
    import gzip
    import io

    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"{option} {path}: file not found; give {what}")
    raw = path.open("rb")
    gz = raw.read(2) == b"\x1f\x8b"
    raw.seek(0)
    n = 0
    # utf-8-sig: a byte-order mark is dropped; the wrapper ends lines at "\n", "\r\n" and "\r"
    # only (not at U+2028 and the like: see split_text_lines)
    with io.TextIOWrapper(gzip.open(raw) if gz else raw, encoding="utf-8-sig", errors="strict") as f:
        try:
            for n, line in enumerate(f, start=1):
                yield line.rstrip("\r\n")
        except UnicodeDecodeError:
            raise ToolkitError(f"{option} {path}:{n + 1}: not UTF-8; convert the file to UTF-8") from None
        except (EOFError, OSError) as e:
            raise ToolkitError(f"{option} {path}:{n + 1}: unreadable ({e}); the file is truncated or corrupt") from None

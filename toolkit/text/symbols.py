"""Symbol tables (`tokens.txt`, `words.txt`): the one reader every part of the toolkit uses.

Format (icefall / OpenFst): one `symbol id` pair a line, ids unique non-negative integers.
Graph builders append disambiguation symbols `#0`, `#1`, ... to tokens.txt; they are graph
symbols, not model outputs, and `token_list` leaves them out.
"""
from __future__ import annotations

import os
from pathlib import Path

from toolkit.utils import ToolkitError

__all__ = ["read_symbol_table", "is_disambig", "token_list", "read_token_list"]


def is_disambig(symbol: str) -> bool:
    """True for a disambiguation symbol `#k` (k a number)."""
    return symbol.startswith("#") and symbol[1:].isdigit()


def read_symbol_table(path: str | os.PathLike, fix: str = "build the lang dir with `toolkit lang-dir`") -> dict[str, int]:
    """`symbol -> id` of a `symbol id` file; one-line ToolkitError naming the file, the line and `fix`.

    Errors: missing file, a line that is not two fields with an integer id, a duplicate symbol
    or id, no line at all, a file that is not UTF-8.
    """
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"{path}: not found; {fix}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ToolkitError(f"{path}: not UTF-8 (byte {e.start}); {fix}") from None
    table: dict[str, int] = {}
    seen: set[int] = set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise ToolkitError(f"{path}:{n}: expected 'symbol id', got {line!r}; {fix}")
        sym, idx = parts[0], int(parts[1])
        if sym in table or idx in seen:
            raise ToolkitError(f"{path}:{n}: duplicate symbol or id in {line!r}; {fix}")
        table[sym] = idx
        seen.add(idx)
    if not table:
        raise ToolkitError(f"{path}: empty symbol table; {fix}")
    return table


def token_list(table: dict[str, int], where: str | os.PathLike = "tokens.txt",
               fix: str = "build the lang dir with `toolkit lang-dir`") -> list[str]:
    """Model output tokens in id order (disambiguation symbols left out); ids must be 0..N-1."""
    pairs = sorted((i, s) for s, i in table.items() if not is_disambig(s))
    if [i for i, _ in pairs] != list(range(len(pairs))):
        raise ToolkitError(f"{where}: token ids must be 0..N-1 without gaps; {fix}")
    return [s for _, s in pairs]


def read_token_list(path: str | os.PathLike, fix: str = "build the lang dir with `toolkit lang-dir`") -> list[str]:
    """`token_list(read_symbol_table(path))`: the tokens of a tokens.txt in id order."""
    return token_list(read_symbol_table(path, fix), path, fix)

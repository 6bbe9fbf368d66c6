"""Numbers for people: counts (1.23 M), bytes (4.00 MiB) and buffer sizes ('256KB' <-> 262144).
The lowest layer beside the IR, so every layer formats numbers the same way."""

from __future__ import annotations

import math
import re

from fuser.ir import FuserError


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23 M'."""
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f} {suffix}{unit}"
    return f"{n:g} {unit}".rstrip()


def human_bytes(n: float) -> str:
    for div, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if abs(n) >= div:
            return f"{n / div:.2f} {suffix}"
    return f"{int(n)} B"


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kb": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mb": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gb": 1 << 30,
    "gib": 1 << 30,
}


def parse_size(text: str) -> int:
    """'256KB' -> 262144 (KB = KiB = 1024 bytes, MB = 1024², plain numbers are bytes)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise FuserError(
            f"buffer size '{text}': write a number with an optional unit, e.g. 256KB, 1MB, 65536"
        )
    size = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if size < 1 or not math.isfinite(size):
        raise FuserError(f"buffer size '{text}' must be at least 1 byte")
    return int(size)


def format_size(n: int) -> str:
    """262144 -> '256KB' (the inverse of parse_size for whole KB/MB)."""
    for unit, size in (("MB", 1 << 20), ("KB", 1 << 10)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return f"{n}B"

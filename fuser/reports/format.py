"""Number formats of the report tables (the units in column headers say which).

``fuser.units`` holds the ones every layer shares (``human``, ``human_bytes``); these are
the fixed-unit columns the tables print: KB (1024 B) for buffers, MB (10^6 B) for DRAM.
"""

from __future__ import annotations

from fuser.units import human_bytes


def kb(n: float) -> str:
    """Bytes in KB (1024 B), one decimal: 262144 -> '256.0'."""
    return f"{n / 1024:.1f}"


def mb(n: float) -> str:
    """Bytes in MB (10^6 B), two decimals: 37550836 -> '37.55'."""
    return f"{n / 1e6:.2f}"


def ms(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def us(seconds: float | None) -> str:
    """Seconds in µs: three significant digits below 100 µs, whole µs above
    (1.234e-5 -> '12.3', 0.0026195 -> '2,620')."""
    if seconds is None:
        return "-"
    value = seconds * 1e6
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def short(n: float) -> str:
    """1234567 -> '1.23M' (three significant digits, no space)."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:g}"


def percent(part: float, whole: float, digits: int = 0) -> str:
    return f"{100 * part / whole:.{digits}f}" if whole else "-"


def change(before: float, after: float) -> str:
    """'-49%' / '+3%' / '0%': after relative to before."""
    if not before:
        return "-"
    return f"{100 * (after - before) / before:+.0f}%".replace("+0%", "0%").replace("-0%", "0%")


def bytes_pair(before: int, after: int) -> str:
    """'368→232 KiB ÷1.6': both in the larger one's unit, and the ratio."""
    unit, div = next(
        (
            (u, d)
            for u, d in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))
            if max(before, after) >= d
        ),
        ("B", 1),
    )
    return (
        f"{before / div:.3g}→{after / div:.3g} {unit} ÷{before / after:.1f}" if after else human_bytes(before)
    )

"""Values as `mfu-agent top` prints them; None (unknown) is always a dash, never 0."""

from __future__ import annotations

DASH = "-"
GIB = 1024**3


def percent(ratio: float | None) -> str:
    return DASH if ratio is None else f"{ratio * 100:.1f}%"


def of_limit(value: float | None, limit: float | None, scale: float = 1.0, unit: str = "") -> str:
    """ "544/700W": the value over its limit; either alone when the other is unknown."""
    if value is None and limit is None:
        return DASH
    shown = DASH if value is None else f"{value / scale:.0f}"
    return shown + (f"/{limit / scale:.0f}" if limit is not None else "") + unit


def memory(used: float | None, total: float | None) -> str:
    if used is None and total is None:
        return DASH
    shown = DASH if used is None else f"{used / GIB:.1f}"
    return shown + (f"/{total / GIB:.0f}" if total is not None else "") + "G"


def celsius(value: float | None) -> str:
    return DASH if value is None else f"{value:.0f}C"


def count(value: float | None) -> str:
    """12, 65.8k, 1.23M: a rate such as tokens/s."""
    if value is None:
        return DASH
    for limit, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


def steps(low: int | None, high: int | None) -> str:
    if low is None or high is None:
        return DASH
    return str(low) if low == high else f"{low}-{high}"


def ranks(reporting: int, world_size: int | None) -> str:
    return str(reporting) if world_size is None else f"{reporting}/{world_size}"


def age(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"

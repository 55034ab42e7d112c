"""Text of a progress bar line, as Lightning's tqdm bar prints it (pure functions)."""

import math
import re
from typing import Any, Dict, Optional, Union

_PAD_SIZE = 5  # floats are padded with zeros to this many characters so the line does not flicker


def format_interval(seconds: float) -> str:
    """`75` -> `'01:15'`, `3725` -> `'1:02:05'` (tqdm's format)."""
    minutes, s = divmod(int(seconds), 60)
    h, m = divmod(minutes, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _short(value: Union[int, float]) -> str:
    """`.3g` with the exponent's leading zeros dropped (`1e-05` -> `1e-5`)."""
    return re.sub(r"e([+-])0+(\d)", r"e\1\2", f"{value:.3g}")


def format_num(value: Union[int, float, str]) -> str:
    """A metric value as Lightning's bar shows it: tqdm's short number format, floats padded with
    zeros to 5 characters so the line does not flicker (`0.1` -> `'0.100'`, `1e-05` stays)."""
    if isinstance(value, int):  # tqdm's rule: the shorter of `.3g` and `str`, no padding
        short = _short(value)
        return short if len(short) < len(str(value)) else str(value)
    if isinstance(value, float):
        short = _short(value)
        text = short if len(short) < len(str(value)) else str(value)
    else:
        text = str(value)
        try:
            float(text)
        except ValueError:
            return text
    if "e" in text or "inf" in text or "nan" in text:
        return text
    if "." not in text and len(text) < _PAD_SIZE:
        text += "."
    return text + "0" * (_PAD_SIZE - len(text))


def format_postfix(metrics: Dict[str, Any]) -> str:
    """`{'v_num': 0, 'loss': 0.123}` -> `'v_num=0, loss=0.123'`."""
    parts = []
    for key, value in metrics.items():
        if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
            value = value.item()  # a 0-d tensor or numpy scalar
        text = format_num(value) if isinstance(value, (int, float)) else str(value)
        parts.append(f"{key}={text}")
    return ", ".join(parts)


_ASCII_BAR = " #"
_UNICODE_BAR = " " + "".join(map(chr, range(0x258F, 0x2587, -1)))  # ' ▏▎▍▌▋▊▉█'


def _bar_text(fraction: float, width: int, charset: str) -> str:
    nsyms = len(charset) - 1
    full, part = divmod(int(fraction * width * nsyms), nsyms)
    text = charset[-1] * full
    if full < width:
        text += charset[part] + charset[0] * (width - full - 1)
    return text


def format_meter(
    desc: str,
    n: int,
    total: Optional[Union[int, float]],
    elapsed: float,
    postfix: str = "",
    ncols: Optional[int] = None,
    unicode: bool = False,
) -> str:
    """One bar line, in the layout of Lightning's tqdm bar:
    `{desc}: {pct}%|{bar}| {n}/{total} [{elapsed}<{remaining}, {rate}it/s, {postfix}]`.

    `total` of None or inf means unknown (no percentage, `?` for the total and the time left).
    `ncols` is the width to fill (the bar takes what the text leaves, and the line is cut to it);
    None gives a 10-character bar.
    """
    if total is not None and (math.isinf(total) or math.isnan(total)):
        total = None
    rate = n / elapsed if elapsed > 0 else None
    rate_fmt = f"{rate:5.2f}it/s" if rate else "?it/s"
    remaining = format_interval((total - n) / rate) if rate and total is not None else "?"
    tail = f", {postfix}" if postfix else ""
    total_fmt = str(int(total)) if total is not None else "?"
    r_bar = f"| {n}/{total_fmt} [{format_interval(elapsed)}<{remaining}, {rate_fmt}{tail}]"
    prefix = f"{desc}: " if desc else ""
    if total:
        fraction = min(max(n / total, 0.0), 1.0)
        l_bar = f"{prefix}{fraction * 100:3.0f}%|"
    else:
        fraction = 0.0
        l_bar = prefix + "|"
    width = max(1, ncols - len(l_bar) - len(r_bar)) if ncols else 10
    charset = _UNICODE_BAR if unicode else _ASCII_BAR
    bar = _bar_text(fraction, width, charset) if total else " " * width
    line = l_bar + bar + r_bar
    return line[:ncols] if ncols else line

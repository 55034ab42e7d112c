"""Progress bars: the `ProgressBar` base class (Lightning's hooks and totals) and `TQDMProgressBar`,
Lightning's default bar, drawn here by a small writer of our own so that `tqdm` is not needed.

What it shows matches Lightning's tqdm bar::

    Epoch 3:  37%|███▋      | 47/128 [00:01<00:02, 41.20it/s, v_num=0, train_loss=0.123]

On a terminal the line is redrawn in place (carriage return; the validation bar sits on the line
below the training bar during `fit`). When stdout is not a terminal (a log file, CI) it prints whole
lines instead: one at every 10% of an epoch (but not more than one a second: a log of short epochs
gets their end lines only) or every 30 s, whichever comes first, and one at each epoch's end.

Cost per step. The Trainer calls `on_train_batch_end` every step, and the whole loop has a budget of
a few percent over raw PyTorch, so a step that does not redraw costs one integer comparison: the bar
precomputes the next batch index worth looking at (a multiple of `refresh_rate`, or the last batch).
At that index it reads the clock and redraws only if 0.1 s passed (10 redraws a second at most);
metrics are read and text is formatted only when it redraws.

It owns the text on stdout; what the metrics are is the Trainer's business (`progress_bar_metrics`).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
import time
from typing import Any, Dict, Optional, TextIO, Tuple, Union

from ferrotrain.callbacks.callback import Callback
from ferrotrain.utilities.rank_zero import rank_zero_warn

_monotonic = time.monotonic
_NEVER = sys.maxsize  # a "next batch to look at" that is never reached: the bar is off
_REDRAW_INTERVAL_S = 0.1  # terminal: at most 10 redraws a second
_LINE_INTERVAL_S = 30.0  # not a terminal: at least one line every 30 s while a bar runs
_LINE_EVERY_FRACTION = 0.1  # not a terminal: a line at every 10% of the total...
_LINE_MIN_INTERVAL_S = 1.0  # ... at most one a second
_PAD_SIZE = 5


# --- text formatting (pure functions) ---------------------------------------------------------------


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


# --- the writer -------------------------------------------------------------------------------------


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class _Bar:
    """One bar's state and its output. It never decides when to draw; the callback does."""

    __slots__ = (
        "desc", "total", "n", "file", "tty", "unicode", "position", "leave", "start", "due", "milestone",
        "quiet_until", "_last_len", "postfix",
    )

    def __init__(self, desc: str, file: TextIO, position: int, leave: bool) -> None:
        self.desc = desc
        self.file = file
        self.tty = _is_tty(file)
        encoding = (getattr(file, "encoding", None) or "").lower().replace("-", "")
        self.unicode = self.tty and encoding.startswith("utf")
        self.position = position
        self.leave = leave
        self.total: Optional[Union[int, float]] = None
        self.n = 0
        self.start = _monotonic()
        self.due = 0.0
        self.milestone: float = _NEVER
        self.quiet_until = 0.0  # not a terminal: no 10% line before this time
        self._last_len = 0
        self.postfix = ""

    def reset(self, total: Optional[Union[int, float]], desc: Optional[str] = None) -> None:
        if desc is not None:
            self.desc = desc
        if total is not None and (math.isinf(total) or math.isnan(total)):
            total = None
        self.total = total
        self.n = 0
        self.start = _monotonic()
        self.quiet_until = self.start + _LINE_MIN_INTERVAL_S
        # A terminal bar shows at the first stop; log lines wait for 10% or 30 s. Bars that vanish
        # when done (sanity check, validation inside fit) print no 10% lines.
        self.due = self.start if self.tty else self.start + _LINE_INTERVAL_S
        every = max(1, math.ceil(total * _LINE_EVERY_FRACTION)) if total else 0
        self.milestone = every if every and self.leave else _NEVER

    @property
    def force(self) -> float:
        """The batch number at which the bar must be looked at whatever the clock says: the last
        batch, or (log lines) the next 10% milestone."""
        last = self.total if self.total is not None else _NEVER
        return last if self.tty else min(last, self.milestone)

    def text(self) -> str:
        ncols = shutil.get_terminal_size((100, 20)).columns if self.tty else None
        return format_meter(
            self.desc, self.n, self.total, _monotonic() - self.start, self.postfix, ncols, self.unicode
        )

    def draw(self) -> None:
        """Terminal: redraw in place. Otherwise: print one line."""
        if self.tty:
            self._write_in_place(self.text())
        else:
            self.file.write(self.text() + "\n")
            self.file.flush()

    def clear(self) -> None:
        if self.tty and self._last_len:
            self._write_in_place("")
            self._last_len = 0

    def close(self) -> None:
        """Leave the final line (`leave`) or wipe it."""
        if self.tty:
            if self.leave:
                self._write_in_place(self.text())
                if self.position == 0:
                    self.file.write("\n")
                    self.file.flush()
            else:
                self.clear()
        elif self.leave:
            self.draw()

    def _write_in_place(self, line: str) -> None:
        padded = line + " " * max(0, self._last_len - len(line))
        self._last_len = len(line)
        down = "\n" * self.position
        up = "\x1b[A" * self.position
        self.file.write(f"{down}\r{padded}{up}\r" if self.position else f"\r{padded}")
        self.file.flush()


# --- callbacks --------------------------------------------------------------------------------------


class ProgressBar(Callback):
    """Base class of progress bars (Lightning's `ProgressBar`): descriptions, the number of batches
    each bar counts to, `get_metrics`, and `enable()`/`disable()` which subclasses implement."""

    def __init__(self) -> None:
        self._trainer: Any = None
        self._current_eval_dataloader_idx: Optional[int] = None

    @property
    def trainer(self) -> Any:
        if self._trainer is None:
            raise TypeError(f"The `{self.__class__.__name__}._trainer` reference has not been set yet.")
        return self._trainer

    @property
    def sanity_check_description(self) -> str:
        return "Sanity Checking"

    @property
    def train_description(self) -> str:
        return "Training"

    @property
    def validation_description(self) -> str:
        return "Validation"

    @property
    def test_description(self) -> str:
        return "Testing"

    @property
    def predict_description(self) -> str:
        return "Predicting"

    @property
    def total_train_batches(self) -> Union[int, float]:
        """Batches in this training epoch (`inf` when unknown); capped by the steps left when the
        run is bounded by `max_steps` only."""
        trainer = self.trainer
        max_steps = getattr(trainer, "max_steps", -1)
        if trainer.max_epochs == -1 and max_steps is not None and max_steps > 0:
            return min(trainer.num_training_batches, max_steps - trainer.global_step)
        return trainer.num_training_batches

    @property
    def total_val_batches_current_dataloader(self) -> Union[int, float]:
        trainer = self.trainer
        batches = trainer.num_sanity_val_batches if trainer.sanity_checking else trainer.num_val_batches
        if isinstance(batches, list):
            return batches[self._current_eval_dataloader_idx or 0] if batches else 0
        return batches

    @property
    def total_test_batches_current_dataloader(self) -> Union[int, float]:
        batches = self.trainer.num_test_batches
        if isinstance(batches, list):
            return batches[self._current_eval_dataloader_idx or 0] if batches else 0
        return batches

    @property
    def total_predict_batches_current_dataloader(self) -> Union[int, float]:
        batches = self.trainer.num_predict_batches
        if isinstance(batches, list):
            return batches[self._current_eval_dataloader_idx or 0] if batches else 0
        return batches

    @property
    def total_val_batches(self) -> Union[int, float]:
        """Validation batches over all validation dataloaders."""
        batches = self.trainer.num_val_batches
        return sum(batches) if isinstance(batches, list) else batches

    def has_dataloader_changed(self, dataloader_idx: int) -> bool:
        old = self._current_eval_dataloader_idx
        self._current_eval_dataloader_idx = dataloader_idx
        return old != dataloader_idx

    def reset_dataloader_idx_tracker(self) -> None:
        self._current_eval_dataloader_idx = None

    def disable(self) -> None:
        """Turn the bar off (subclasses implement it)."""
        raise NotImplementedError

    def enable(self) -> None:
        """Turn the bar back on (subclasses implement it)."""
        raise NotImplementedError

    def print(self, *args: Any, **kwargs: Any) -> None:
        """Print without breaking the bar."""
        print(*args, **kwargs)

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._trainer = trainer
        if not getattr(trainer, "is_global_zero", True):
            self.disable()

    def get_metrics(self, trainer: Any, pl_module: Any) -> Dict[str, Union[int, str, float, Dict[str, float]]]:
        """What the bar shows after the timing: `v_num` (the loggers' version) then
        `trainer.progress_bar_metrics`. Override it to change the items."""
        standard = get_standard_metrics(trainer)
        pbar_metrics = trainer.progress_bar_metrics
        duplicates = [k for k in standard if k in pbar_metrics]
        if duplicates:
            rank_zero_warn(
                f"The progress bar already tracks a metric with the name(s) '{', '.join(duplicates)}' and"
                f" `self.log('{duplicates[0]}', ..., prog_bar=True)` will overwrite this value."
                " If this is undesired, change the name or override `get_metrics()` in the progress bar callback."
            )
        return {**standard, **pbar_metrics}


def get_standard_metrics(trainer: Any) -> Dict[str, Union[int, str]]:
    """`{'v_num': version}` when the trainer has loggers (a string version shows its last 4
    characters), else `{}`."""
    items: Dict[str, Union[int, str]] = {}
    loggers = getattr(trainer, "loggers", None)
    if loggers:
        from ferrotrain.loggers.utilities import _version

        version = _version(loggers)
        if version not in ("", None):
            if isinstance(version, str):
                version = version[-4:]
            items["v_num"] = version
    return items


class TQDMProgressBar(ProgressBar):
    """Lightning's default progress bar, without the `tqdm` dependency (see the module docstring
    for what it prints and what it costs).

    Args:
        refresh_rate: redraw at most every this many batches (and at most 10 times a second);
            `0` turns the bar off.
        process_position: offset the bars by `2 * process_position` lines (to stack several).
        leave: keep one finished bar per epoch on screen instead of redrawing a single line.
    """

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False) -> None:
        super().__init__()
        if not isinstance(refresh_rate, int) or refresh_rate < 0:
            from ferrotrain.errors import MisconfigurationException

            raise MisconfigurationException(
                f"TQDMProgressBar(refresh_rate={refresh_rate!r}): give an int >= 0 (0 turns the bar off)."
            )
        self._refresh_rate = self._resolve_refresh_rate(refresh_rate)
        self._process_position = process_position
        self._leave = leave
        self._enabled = True
        self._train_bar: Optional[_Bar] = None
        self._eval_bar: Optional[_Bar] = None
        # The last bar of each kind, kept after its loop ends for Lightning's
        # `train_progress_bar` / `val_progress_bar` / ... properties (set only when a bar is made).
        self._shown: Dict[str, _Bar] = {}
        # The gate of each bar, read by the batch-end hooks: `next` is the next batch number
        # (batch_idx + 1) worth looking at (a multiple of refresh_rate); there the clock is read,
        # and the bar is drawn only when `due` (a monotonic time) passed or `force` was reached.
        self._train_next, self._train_force, self._train_due = _NEVER, _NEVER, 0.0
        self._eval_next, self._eval_force, self._eval_due = _NEVER, _NEVER, 0.0
        # The last stop passed without drawing, so end-of-epoch text shows the right count.
        self._train_seen = self._eval_seen = 0

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        state["_train_bar"] = state["_eval_bar"] = None
        state["_shown"] = {}
        return state

    @staticmethod
    def _resolve_refresh_rate(refresh_rate: int) -> int:
        # tqdm's own `TQDM_MINITERS` variable raises the refresh rate, as in Lightning.
        if "TQDM_MINITERS" in os.environ:
            return max(int(os.environ["TQDM_MINITERS"]), refresh_rate)
        return refresh_rate

    # -- Lightning's bar references: the last bar of each loop, also after it ended --

    def _shown_bar(self, kind: str) -> _Bar:
        bar = self._shown.get(kind)
        if bar is None:
            raise TypeError(f"The `{type(self).__name__}._{kind}_progress_bar` reference has not been set yet.")
        return bar

    @property
    def train_progress_bar(self) -> _Bar:
        return self._shown_bar("train")

    @train_progress_bar.setter
    def train_progress_bar(self, bar: _Bar) -> None:
        self._shown["train"] = bar

    @property
    def val_progress_bar(self) -> _Bar:
        return self._shown_bar("val")

    @val_progress_bar.setter
    def val_progress_bar(self, bar: _Bar) -> None:
        self._shown["val"] = bar

    @property
    def test_progress_bar(self) -> _Bar:
        return self._shown_bar("test")

    @test_progress_bar.setter
    def test_progress_bar(self, bar: _Bar) -> None:
        self._shown["test"] = bar

    @property
    def predict_progress_bar(self) -> _Bar:
        return self._shown_bar("predict")

    @predict_progress_bar.setter
    def predict_progress_bar(self, bar: _Bar) -> None:
        self._shown["predict"] = bar

    # -- switches --

    @property
    def refresh_rate(self) -> int:
        return self._refresh_rate

    @property
    def process_position(self) -> int:
        return self._process_position

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self._refresh_rate > 0

    @property
    def is_disabled(self) -> bool:
        return not self.is_enabled

    def disable(self) -> None:
        self._enabled = False
        self._train_next = self._eval_next = _NEVER

    def enable(self) -> None:
        self._enabled = True

    # -- bar construction (override these to customise) --

    def _new_bar(self, desc: str, offset: int, leave: bool) -> Optional[_Bar]:
        if not self.is_enabled:
            return None
        return _Bar(desc, sys.stdout, 2 * self._process_position + offset, leave)

    def init_sanity_bar(self) -> Optional[_Bar]:
        return self._new_bar(self.sanity_check_description, 0, leave=False)

    def init_train_bar(self) -> Optional[_Bar]:
        return self._new_bar(self.train_description, 0, leave=True)

    def init_validation_bar(self) -> Optional[_Bar]:
        has_main_bar = self.trainer.state.fn != "validate"
        return self._new_bar(self.validation_description, int(has_main_bar), leave=not has_main_bar)

    def init_test_bar(self) -> Optional[_Bar]:
        return self._new_bar(self.test_description, 0, leave=True)

    def init_predict_bar(self) -> Optional[_Bar]:
        return self._new_bar(self.predict_description, 0, leave=True)

    # Lightning's names for the constructors; the hooks call these, so overriding either works.

    def init_sanity_tqdm(self) -> Optional[_Bar]:
        return self._remember("val", self.init_sanity_bar())

    def init_train_tqdm(self) -> Optional[_Bar]:
        return self._remember("train", self.init_train_bar())

    def init_validation_tqdm(self) -> Optional[_Bar]:
        return self._remember("val", self.init_validation_bar())

    def init_test_tqdm(self) -> Optional[_Bar]:
        return self._remember("test", self.init_test_bar())

    def init_predict_tqdm(self) -> Optional[_Bar]:
        return self._remember("predict", self.init_predict_bar())

    def _remember(self, kind: str, bar: Optional[_Bar]) -> Optional[_Bar]:
        if bar is not None:
            self._shown[kind] = bar
        return bar

    # -- the shared slow path --

    def _first_gate(self, bar: _Bar) -> Tuple[float, float, float]:
        """(next, force, due) for a bar that was just reset."""
        if not self.is_enabled:
            return _NEVER, _NEVER, 0.0
        force = bar.force
        return min(self._refresh_rate, force), force, bar.due

    def _advance(self, bar: _Bar, n: int, trainer: Any, pl_module: Any, with_metrics: bool) -> Tuple[float, float, float]:
        """The slow path, at batch number `n` when `force` was reached or `due` passed: draw (or
        print a line), then return the new (next, force, due)."""
        now = _monotonic()
        total = bar.total
        last = total is not None and n >= total
        bar.n = n
        if bar.tty:
            # The last batch's text is drawn by the end hook (or the bar is wiped there).
            draw = not last and now >= bar.due
            if draw:
                bar.due = now + _REDRAW_INTERVAL_S
        else:
            # The last line comes from the end hook; in between, every 10% (at most one a second)
            # or every 30 s.
            at_milestone = n >= bar.milestone
            draw = not last and ((at_milestone and now >= bar.quiet_until) or now >= bar.due)
            if draw:
                bar.due = now + _LINE_INTERVAL_S
                bar.quiet_until = now + _LINE_MIN_INTERVAL_S
            if (draw or at_milestone) and total and bar.leave:
                every = max(1, math.ceil(total * _LINE_EVERY_FRACTION))
                bar.milestone = (n // every + 1) * every
        if draw:
            if with_metrics:
                bar.postfix = format_postfix(self.get_metrics(trainer, pl_module))
            bar.draw()
        if last:
            return _NEVER, _NEVER, 0.0
        force = bar.force
        nxt = (n // self._refresh_rate + 1) * self._refresh_rate
        return min(nxt, force), force, bar.due

    def _refresh_train_postfix(self, trainer: Any, pl_module: Any) -> None:
        bar = self._train_bar
        if bar is not None:
            bar.postfix = format_postfix(self.get_metrics(trainer, pl_module))

    # -- sanity check --

    def on_sanity_check_start(self, trainer: Any, pl_module: Any) -> None:
        self._eval_bar = self.init_sanity_tqdm()

    def on_sanity_check_end(self, trainer: Any, pl_module: Any) -> None:
        if self._eval_bar is not None:
            self._eval_bar.close()
        self._eval_bar = None
        self._eval_seen = 0
        self._eval_next = _NEVER

    # -- training --

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._train_bar = self.init_train_tqdm()

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self._leave:
            # One finished bar per epoch (Lightning makes a new one each epoch).
            self._train_bar = self.init_train_tqdm()
        bar = self._train_bar
        if bar is None:
            self._train_next = _NEVER
            return
        bar.reset(self.total_train_batches, f"Epoch {trainer.current_epoch}")
        self._train_seen = 0
        self._train_next, self._train_force, self._train_due = self._first_gate(bar)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        n = batch_idx + 1
        if n < self._train_next:  # between refresh_rate stops: one comparison, nothing else
            return
        if n < self._train_force and _monotonic() < self._train_due:  # a stop, but drawn < 0.1 s ago
            self._train_seen = n
            nxt = n + self._refresh_rate
            self._train_next = nxt if nxt < self._train_force else self._train_force
            return
        bar = self._train_bar
        if bar is None:
            self._train_next = _NEVER
            return
        self._train_next, self._train_force, self._train_due = self._advance(bar, n, trainer, pl_module, True)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        bar = self._train_bar
        self._train_next = _NEVER
        if bar is None:
            return
        bar.n = max(bar.n, self._train_seen)
        self._refresh_train_postfix(trainer, pl_module)
        if self._leave:
            bar.close()
            self._train_bar = None
        else:
            bar.draw()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        bar = self._train_bar
        self._train_bar = None
        self._train_next = _NEVER
        if bar is not None:
            if bar.tty:
                bar.close()
            # Not a terminal: the epoch-end line already said everything.

    # -- validation --

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._eval_bar = self.init_validation_tqdm()

    def on_validation_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self.has_dataloader_changed(dataloader_idx):
            desc = self.sanity_check_description if trainer.sanity_checking else self.validation_description
            self._reset_eval_bar(self.total_val_batches_current_dataloader, desc, dataloader_idx)

    def on_validation_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        n = batch_idx + 1
        if n >= self._eval_next:
            self._eval_step(n, trainer, pl_module)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        bar = self._eval_bar
        if bar is not None and not trainer.sanity_checking:
            bar.n = max(bar.n, self._eval_seen)
            bar.close()
            self._eval_bar = None
        self._eval_next = _NEVER
        self._eval_seen = 0  # a stale count would show on the next loop's first bar
        self.reset_dataloader_idx_tracker()
        train_bar = self._train_bar
        if train_bar is not None and trainer.state.fn == "fit" and train_bar.tty:
            self._refresh_train_postfix(trainer, pl_module)
            train_bar.draw()

    # -- test / predict --

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self._eval_bar = self.init_test_tqdm()

    def on_test_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self.has_dataloader_changed(dataloader_idx):
            self._reset_eval_bar(self.total_test_batches_current_dataloader, self.test_description, dataloader_idx)

    def on_test_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        n = batch_idx + 1
        if n >= self._eval_next:
            self._eval_step(n, trainer, pl_module)

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        self._close_eval_bar()

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        self._eval_bar = self.init_predict_tqdm()

    def on_predict_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self.has_dataloader_changed(dataloader_idx):
            self._reset_eval_bar(
                self.total_predict_batches_current_dataloader, self.predict_description, dataloader_idx
            )

    def on_predict_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        n = batch_idx + 1
        if n >= self._eval_next:
            self._eval_step(n, trainer, pl_module)

    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        self._close_eval_bar()

    def _eval_step(self, n: int, trainer: Any, pl_module: Any) -> None:
        if n < self._eval_force and _monotonic() < self._eval_due:
            self._eval_seen = n
            nxt = n + self._refresh_rate
            self._eval_next = nxt if nxt < self._eval_force else self._eval_force
            return
        bar = self._eval_bar
        if bar is None:
            self._eval_next = _NEVER
            return
        self._eval_next, self._eval_force, self._eval_due = self._advance(bar, n, trainer, pl_module, False)

    def _reset_eval_bar(self, total: Union[int, float], desc: str, dataloader_idx: int) -> None:
        bar = self._eval_bar
        if bar is None:
            self._eval_next = _NEVER
            return
        bar.n = max(bar.n, self._eval_seen)
        if bar.n:
            bar.close()  # finish the previous dataloader's bar
        bar.reset(total, f"{desc} DataLoader {dataloader_idx}")
        self._eval_seen = 0
        self._eval_next, self._eval_force, self._eval_due = self._first_gate(bar)

    def _close_eval_bar(self) -> None:
        if self._eval_bar is not None:
            self._eval_bar.n = max(self._eval_bar.n, self._eval_seen)
            self._eval_bar.close()
        self._eval_bar = None
        self._eval_next = _NEVER
        self._eval_seen = 0  # a stale count would show on the next loop's first bar
        self.reset_dataloader_idx_tracker()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        # Move past a half-drawn line so the traceback starts on its own line.
        for bar in (self._eval_bar, self._train_bar):
            if bar is not None and bar.tty and bar._last_len:
                bar.file.write("\n" * (bar.position + 1))
                bar.file.flush()
                break
        self._train_bar = self._eval_bar = None
        self._train_next = self._eval_next = _NEVER

    def print(self, *args: Any, sep: str = " ", end: str = "\n", **kwargs: Any) -> None:
        """Print a message above the bars without breaking them."""
        bars = [b for b in (self._train_bar, self._eval_bar) if b is not None and b.tty]
        if not bars:
            print(*args, sep=sep, end=end, **kwargs)
            return
        for bar in bars:
            bar.clear()
        out = bars[0].file
        out.write("\r" + sep.join(map(str, args)) + end)
        for bar in bars:
            bar.draw()


class RichProgressBar(TQDMProgressBar):
    """Accepted for compatibility with Lightning's `RichProgressBar`: it needs the `rich` package
    (a clear error names it if missing) and then draws ferrotrain's plain bar. The theme and console
    arguments are accepted and not used."""

    def __init__(
        self,
        refresh_rate: int = 100,
        leave: bool = False,
        theme: Any = None,
        console_kwargs: Optional[Dict[str, Any]] = None,
    ) -> None:
        import importlib.util

        if importlib.util.find_spec("rich") is None:
            raise ModuleNotFoundError(
                "RichProgressBar needs the `rich` package, which is not installed: `pip install rich`,"
                " or use the default TQDMProgressBar.",
                name="rich",
            )
        super().__init__(refresh_rate=refresh_rate, leave=leave)

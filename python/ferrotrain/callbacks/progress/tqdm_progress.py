"""`TQDMProgressBar`, Lightning's default bar, drawn by a small writer of our own (`terminal`) so
that `tqdm` is not needed.

What it shows matches Lightning's tqdm bar::

    Epoch 3:  37%|███▋      | 47/128 [00:01<00:02, 41.20it/s, v_num=0, train_loss=0.123]

On a terminal the line is redrawn in place (carriage return; the validation bar sits on the line
below the training bar during `fit`). When stdout is not a terminal (a log file, CI) it prints whole
lines instead: one at every 10% of an epoch (but not more than one a second: a log of short epochs
gets their end lines only) or every 30 s, whichever comes first, and one at each epoch's end.

Cost per step. The Trainer calls `on_train_batch_end` every step, and the whole loop has a budget of
a few percent over raw PyTorch, so a step between stops costs one integer comparison, whatever the
batches and metrics: the bar precomputes the next batch number worth looking at (a stop). Stops are
multiples of `refresh_rate` spaced by the recent pace so that about one falls in each redraw
interval (0.1 s on a terminal; at most 1 s apart in a log), as tqdm's dynamic `miniters` does, and
the last batch (and, in a log, every 10% mark) is always one. At a stop the bar reads the clock and
redraws only if the interval passed; metrics are read and text is formatted only when it redraws.
A bar of unknown length stops at every multiple of `refresh_rate`, so its final count is exact.

It owns the text on stdout; what the metrics are is the Trainer's business (`progress_bar_metrics`).
"""

import math
import os
import sys
from typing import Any, Dict, Optional, Tuple, Union

from ferrotrain.callbacks.progress import clock
from ferrotrain.callbacks.progress.formatting import format_num, format_postfix
from ferrotrain.callbacks.progress.progress_bar import ProgressBar
from ferrotrain.callbacks.progress.terminal import (
    LINE_EVERY_FRACTION,
    LINE_INTERVAL_S,
    LINE_MIN_INTERVAL_S,
    NEVER,
    REDRAW_INTERVAL_S,
    Bar,
)

# Stops are placed at most this far ahead at the recent pace: a loop that slows down is looked at
# again within a second (log lines come on time even when the 30 s line is far).
_MAX_LOOKAHEAD_S = 1.0


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
        self._train_bar: Optional[Bar] = None
        self._eval_bar: Optional[Bar] = None
        # The last bar of each kind, kept after its loop ends for Lightning's
        # `train_progress_bar` / `val_progress_bar` / ... properties (set only when a bar is made).
        self._shown: Dict[str, Bar] = {}
        # The gate of each bar, read by the batch-end hooks: `next` is the next batch number
        # (batch_idx + 1) worth looking at (a multiple of refresh_rate); there the clock is read,
        # and the bar is drawn only when `due` (a monotonic time) passed or `force` was reached.
        self._train_next, self._train_force, self._train_due = NEVER, NEVER, 0.0
        self._eval_next, self._eval_force, self._eval_due = NEVER, NEVER, 0.0
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

    def _shown_bar(self, kind: str) -> Bar:
        bar = self._shown.get(kind)
        if bar is None:
            raise TypeError(f"The `{type(self).__name__}._{kind}_progress_bar` reference has not been set yet.")
        return bar

    @property
    def train_progress_bar(self) -> Bar:
        return self._shown_bar("train")

    @train_progress_bar.setter
    def train_progress_bar(self, bar: Bar) -> None:
        self._shown["train"] = bar

    @property
    def val_progress_bar(self) -> Bar:
        return self._shown_bar("val")

    @val_progress_bar.setter
    def val_progress_bar(self, bar: Bar) -> None:
        self._shown["val"] = bar

    @property
    def test_progress_bar(self) -> Bar:
        return self._shown_bar("test")

    @test_progress_bar.setter
    def test_progress_bar(self, bar: Bar) -> None:
        self._shown["test"] = bar

    @property
    def predict_progress_bar(self) -> Bar:
        return self._shown_bar("predict")

    @predict_progress_bar.setter
    def predict_progress_bar(self, bar: Bar) -> None:
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
        self._train_next = self._eval_next = NEVER

    def enable(self) -> None:
        self._enabled = True

    # -- bar construction (override these to customise) --

    def _new_bar(self, desc: str, offset: int, leave: bool) -> Optional[Bar]:
        # A turned-off bar is still made (disabled, as Lightning's): its references and totals are
        # there to read; the batch hooks never look at it (its gate is closed).
        return Bar(desc, sys.stdout, 2 * self._process_position + offset, leave, disable=not self.is_enabled)

    def init_sanity_bar(self) -> Optional[Bar]:
        return self._new_bar(self.sanity_check_description, 0, leave=False)

    def init_train_bar(self) -> Optional[Bar]:
        return self._new_bar(self.train_description, 0, leave=True)

    def init_validation_bar(self) -> Optional[Bar]:
        has_main_bar = self.trainer.state.fn != "validate"
        return self._new_bar(self.validation_description, int(has_main_bar), leave=not has_main_bar)

    def init_test_bar(self) -> Optional[Bar]:
        return self._new_bar(self.test_description, 0, leave=True)

    def init_predict_bar(self) -> Optional[Bar]:
        return self._new_bar(self.predict_description, 0, leave=True)

    # Lightning's names for the constructors; the hooks call these, so overriding either works.

    def init_sanity_tqdm(self) -> Optional[Bar]:
        return self._remember("val", self.init_sanity_bar())

    def init_train_tqdm(self) -> Optional[Bar]:
        return self._remember("train", self.init_train_bar())

    def init_validation_tqdm(self) -> Optional[Bar]:
        return self._remember("val", self.init_validation_bar())

    def init_test_tqdm(self) -> Optional[Bar]:
        return self._remember("test", self.init_test_bar())

    def init_predict_tqdm(self) -> Optional[Bar]:
        return self._remember("predict", self.init_predict_bar())

    def _remember(self, kind: str, bar: Optional[Bar]) -> Optional[Bar]:
        if bar is not None:
            self._shown[kind] = bar
        return bar

    # -- the shared slow path --

    def _first_gate(self, bar: Bar) -> Tuple[float, float, float]:
        """(next, force, due) for a bar that was just reset."""
        if not self.is_enabled or bar.disable:
            return NEVER, NEVER, 0.0
        force = bar.force
        return min(self._refresh_rate, force), force, bar.due

    def _advance(
        self, bar: Bar, n: int, trainer: Any, pl_module: Any, with_metrics: bool, now: Optional[float] = None
    ) -> Tuple[float, float, float]:
        """The slow path, at batch number `n` when `force` was reached or `due` passed: draw (or
        print a line), then return the new (next, force, due). `now`: the clock, when just read."""
        if now is None:
            now = clock.monotonic()
        total = bar.total
        last = total is not None and n >= total
        bar.n = n
        if bar.tty:
            # The last batch's text is drawn by the end hook (or the bar is wiped there).
            draw = not last and now >= bar.due
            if draw:
                bar.due = now + REDRAW_INTERVAL_S
        else:
            # The last line comes from the end hook; in between, every 10% (at most one a second)
            # or every 30 s.
            at_milestone = n >= bar.milestone
            draw = not last and ((at_milestone and now >= bar.quiet_until) or now >= bar.due)
            if draw:
                bar.due = now + LINE_INTERVAL_S
                bar.quiet_until = now + LINE_MIN_INTERVAL_S
            if (draw or at_milestone) and total and bar.leave:
                every = max(1, math.ceil(total * LINE_EVERY_FRACTION))
                bar.milestone = (n // every + 1) * every
        if draw:
            if with_metrics:
                bar.postfix = format_postfix(self.get_metrics(trainer, pl_module))
            bar.draw()
        if last:
            return NEVER, NEVER, 0.0
        force = bar.force
        return self._next_stop(bar, n, now, force), force, bar.due

    def _next_stop(self, bar: Bar, n: int, now: float, force: float) -> float:
        """The next batch number to look at after a stop at `n`: the next multiple of
        `refresh_rate` that the recent pace reaches when the bar is due (at most 1 s ahead),
        never past `force`."""
        rate = self._refresh_rate
        stride = rate
        if bar.total is not None and now > bar.mark_t and n > bar.mark_n:
            ahead = min(max(bar.due - now, REDRAW_INTERVAL_S if bar.tty else 0.0), _MAX_LOOKAHEAD_S)
            expected = (n - bar.mark_n) * ahead / (now - bar.mark_t)
            if expected > rate:
                stride = math.ceil(expected / rate) * rate
        bar.mark_n, bar.mark_t = n, now
        nxt = (n // rate) * rate + stride
        return nxt if nxt < force else force

    def _refresh_train_postfix(self, trainer: Any, pl_module: Any) -> None:
        bar = self._train_bar
        if bar is not None and not bar.disable:
            bar.postfix = format_postfix(self.get_metrics(trainer, pl_module))

    # -- sanity check --

    def on_sanity_check_start(self, trainer: Any, pl_module: Any) -> None:
        self._eval_bar = self.init_sanity_tqdm()

    def on_sanity_check_end(self, trainer: Any, pl_module: Any) -> None:
        if self._eval_bar is not None:
            self._eval_bar.close()
        self._eval_bar = None
        self._eval_seen = 0
        self._eval_next = NEVER

    # -- training --

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._train_bar = self.init_train_tqdm()

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self._leave:
            # One finished bar per epoch (Lightning makes a new one each epoch).
            self._train_bar = self.init_train_tqdm()
        bar = self._train_bar
        if bar is None:
            self._train_next = NEVER
            return
        bar.reset(self.total_train_batches, f"Epoch {trainer.current_epoch}")
        self._train_seen = 0
        self._train_next, self._train_force, self._train_due = self._first_gate(bar)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        n = batch_idx + 1
        if n < self._train_next:  # between stops: one comparison, nothing else
            return
        bar = self._train_bar
        if bar is None:
            self._train_next = NEVER
            return
        if n < self._train_force:
            now = clock.monotonic()
            if now < self._train_due:  # a stop, but drawn less than an interval ago
                self._train_seen = n
                self._train_next = self._next_stop(bar, n, now, self._train_force)
                return
        else:
            now = None
        self._train_next, self._train_force, self._train_due = self._advance(bar, n, trainer, pl_module, True, now)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        bar = self._train_bar
        self._train_next = NEVER
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
        self._train_next = NEVER
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
        # A new dataloader (or the first batch): one comparison on every other batch.
        if dataloader_idx != self._current_eval_dataloader_idx and self.has_dataloader_changed(dataloader_idx):
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
        self._eval_next = NEVER
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
        # A new dataloader (or the first batch): one comparison on every other batch.
        if dataloader_idx != self._current_eval_dataloader_idx and self.has_dataloader_changed(dataloader_idx):
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
        # A new dataloader (or the first batch): one comparison on every other batch.
        if dataloader_idx != self._current_eval_dataloader_idx and self.has_dataloader_changed(dataloader_idx):
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
        bar = self._eval_bar
        if bar is None:
            self._eval_next = NEVER
            return
        if n < self._eval_force:
            now = clock.monotonic()
            if now < self._eval_due:
                self._eval_seen = n
                self._eval_next = self._next_stop(bar, n, now, self._eval_force)
                return
        else:
            now = None
        self._eval_next, self._eval_force, self._eval_due = self._advance(bar, n, trainer, pl_module, False, now)

    def _reset_eval_bar(self, total: Union[int, float], desc: str, dataloader_idx: int) -> None:
        bar = self._eval_bar
        if bar is None:
            self._eval_next = NEVER
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
        self._eval_next = NEVER
        self._eval_seen = 0  # a stale count would show on the next loop's first bar
        self.reset_dataloader_idx_tracker()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        # Move past a half-drawn line so the traceback starts on its own line.
        for bar in (self._eval_bar, self._train_bar):
            if bar is not None and bar.tty and bar._last_len and not bar.disable:
                bar.file.write("\n" * (bar.position + 1))
                bar.file.flush()
                break
        self._train_bar = self._eval_bar = None
        self._train_next = self._eval_next = NEVER

    def print(self, *args: Any, sep: str = " ", end: str = "\n", **kwargs: Any) -> None:
        """Print a message above the bars without breaking them."""
        bars = [b for b in (self._train_bar, self._eval_bar) if b is not None and b.tty and not b.disable]
        if not bars:
            print(*args, sep=sep, end=end, **kwargs)
            return
        for bar in bars:
            bar.clear()
        out = bars[0].file
        out.write("\r" + sep.join(map(str, args)) + end)
        for bar in bars:
            bar.draw()


def _make_tqdm_class() -> type:
    try:
        from tqdm.auto import tqdm  # optional: Lightning's class is a tqdm subclass
    except ImportError:
        class Tqdm:  # without tqdm the number format still works; a bar cannot be built
            """Lightning's `Tqdm`, whose bars need the `tqdm` package."""

            format_num = staticmethod(format_num)

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                raise ModuleNotFoundError("`Tqdm` is a `tqdm.tqdm` and needs the `tqdm` package: pip install tqdm "
                                          "(ferrotrain's TQDMProgressBar draws without it)", name="tqdm")
    else:
        class Tqdm(tqdm):  # type: ignore[no-redef, misc, valid-type]
            """Lightning's `Tqdm`: tqdm with the bar's metric format (floats padded to 5 characters)."""

            format_num = staticmethod(format_num)

    Tqdm.__module__ = __name__
    Tqdm.__qualname__ = "Tqdm"
    return Tqdm


def __getattr__(name: str) -> Any:
    # Built on first use: importing tqdm when the module loads would cost every `import ferrotrain`.
    if name == "Tqdm":
        cls = _make_tqdm_class()
        globals()["Tqdm"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

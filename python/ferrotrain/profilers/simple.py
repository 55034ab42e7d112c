"""`SimpleProfiler`: where each training step's time goes, timed by the native `PhaseTimer`.

How it is wired (all at plan time, and only when this profiler is on):

- the batch runner (`_core.run_train_epoch(..., timer=...)`) stamps each step, from the fetch of
  its batch to the end of its logging/validation, and the wait for data;
- `instrument_hooks` replaces each bound hook in the Trainer's hook table with a timing wrapper,
  named as Lightning names them (`[Callback]EarlyStopping.on_train_epoch_end`,
  `[LightningModule]Model.on_train_batch_end`);
- `wrap` is what the fit loop and its step time their own parts with (`FitLoop.__init__`,
  `AutomaticStep.time_with`): batch transfer, `training_step`, zero_grad, backward, clipping (with
  the before-step hooks nested inside), the optimizer step, scheduler steps, logging and validation.

Time is exclusive (a hook inside the closure inside `optimizer.step` is not counted in the
optimizer step), so the phases of a step plus the loop's own overhead add up to the step exactly.
With profiling off none of this exists: hook tables hold the plain bound methods.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from ferrotrain import _core
from ferrotrain.profilers.profiler import Profiler

DATA_WAIT = _core.PHASE_DATA_WAIT
OVERHEAD = "[loop] own overhead"


class SimpleProfiler(Profiler):
    """Times each phase of each training step and prints a table at the end of fit.

    Args:
        dirpath: folder of the report file (default: `trainer.log_dir`), used with `filename`.
        filename: write the report to `{dirpath}/fit-{filename}.txt` instead of printing it.
        extended: accepted for Lightning compatibility (the report always has every column).

    User code can time its own sections: `with self.trainer.profiler.profile("my_part"): ...`.
    """

    _times_loop = True

    def __init__(self, dirpath: Optional[Union[str, os.PathLike]] = None, filename: Optional[str] = None,
                 extended: bool = True) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        self.extended = extended
        self.timer = _core.PhaseTimer()

    # ------------------------------------------------------------------ Profiler API
    def start(self, action_name: str) -> None:
        self.timer.enter(self.timer.phase(action_name))

    def stop(self, action_name: str) -> None:
        self.timer.exit()

    def setup(self, stage: str, local_rank: Optional[int] = None, log_dir: Optional[str] = None) -> None:
        super().setup(stage, local_rank, log_dir)
        if stage == "fit":
            self.timer.reset()

    # ------------------------------------------------------------------ results
    @property
    def steps(self) -> int:
        """Training steps timed."""
        return self.timer.steps

    @property
    def step_time(self) -> float:
        """Seconds spent in training steps, in all."""
        return self.timer.step_ns / 1e9

    @property
    def overhead(self) -> float:
        """Seconds of step time not spent in any timed phase: the loop's own cost."""
        return self.timer.overhead_ns / 1e9

    def phase_times(self) -> Dict[str, Dict[str, float]]:
        """Per phase: `calls`, `in_step` and `outside` seconds (exclusive time)."""
        return {
            name: {"calls": calls, "in_step": in_step / 1e9, "outside": outside / 1e9}
            for name, calls, in_step, outside in self.timer.stats()
            if calls
        }

    def summary(self) -> str:
        stats = [s for s in self.timer.stats() if s[1]]
        steps, step_ns, overhead_ns = self.timer.steps, self.timer.step_ns, self.timer.overhead_ns
        if not stats and not steps:
            return ""
        rows: List[Tuple[str, str, str, str, str]] = []
        for name, calls, in_step, outside in sorted(stats, key=lambda s: -(s[2] + s[3])):
            total = in_step + outside
            share = f"{100.0 * in_step / step_ns:.2f}" if step_ns and in_step else "-"
            rows.append((name, str(calls), f"{total / 1e6:.3f}", f"{total / calls / 1e3:.1f}", share))
        if steps:
            share = f"{100.0 * overhead_ns / step_ns:.2f}" if step_ns else "-"
            rows.append((OVERHEAD, str(steps), f"{overhead_ns / 1e6:.3f}", f"{overhead_ns / steps / 1e3:.1f}", share))
            rows.append(("training step (all phases)", str(steps), f"{step_ns / 1e6:.3f}",
                         f"{step_ns / steps / 1e3:.1f}", "100.00"))
        head = ("Phase", "Calls", "Total (ms)", "Mean (us)", "% of step")
        widths = [max(len(r[i]) for r in rows + [head]) for i in range(5)]

        def line(r: Tuple[str, ...]) -> str:
            return "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))

        rule = "-" * len(line(head))
        out = ["Profiler report (exclusive time per phase; % of the time inside training steps)", rule,
               line(head), rule, *(line(r) for r in rows[:-1]), rule, *(line(r) for r in rows[-1:]), rule]
        if steps:
            pct = 100.0 * overhead_ns / step_ns if step_ns else 0.0
            out.append(f"Loop overhead: {overhead_ns / steps / 1e3:.1f} us per step ({pct:.2f}% of the step) "
                       f"over {steps} steps; mean step {step_ns / steps / 1e3:.1f} us")
        return "\n".join(out)

    # ------------------------------------------------------------------ plan-time instrumentation
    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn` timed as phase `name` (exclusive of phases timed inside it)."""
        phase = self.timer.phase(name)
        enter, leave = self.timer.enter, self.timer.exit

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            enter(phase)
            try:
                return fn(*args, **kwargs)
            finally:
                leave()

        return timed

    def instrument_hooks(self, hooks: Any) -> None:
        """Replace every bound hook in a `HookTable` with a timed one."""
        wrap = self._wrap

        def cb_name(f: Any, hook: str) -> str:
            return f"[Callback]{type(f.__self__).__name__}.{hook}"

        for hook, fns in hooks.cb.items():
            hooks.cb[hook] = tuple(wrap(cb_name(f, hook), f) for f in fns)
        hooks.cb_train_epoch_end_first = tuple(
            wrap(cb_name(f, "on_train_epoch_end"), f) for f in hooks.cb_train_epoch_end_first)
        hooks.cb_train_epoch_end_last = tuple(
            wrap(cb_name(f, "on_train_epoch_end"), f) for f in hooks.cb_train_epoch_end_last)
        for table in (hooks.mod, hooks.transfer):
            for hook, f in table.items():
                if f is not None:
                    owner = "LightningDataModule" if f.__self__ is not hooks.module else "LightningModule"
                    table[hook] = wrap(f"[{owner}]{type(f.__self__).__name__}.{hook}", f)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn` timed as phase `name`: what the loops time their parts with."""
        return self._wrap(name, fn)

"""`PyTorchProfiler`: `torch.profiler` around the fit, with each loop phase marked in its trace.

It does everything `SimpleProfiler` does (the phase table and the loop's overhead) and, in
addition, runs `torch.profiler.profile` from the start of fit to its end; every timed phase is
also a `torch.profiler.record_function` range, so the operator table and the Chrome trace show
which hook or step part each operator ran in. The operator table and the trace are saved under
`dirpath` (default: `trainer.log_dir`) as `fit-{filename}.txt` and `fit-{filename}.pt.trace.json`.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Dict, Optional, Union

from ferrotrain.profilers.simple import SimpleProfiler
from ferrotrain.utilities.rank_zero import rank_zero_info


class PyTorchProfiler(SimpleProfiler):
    """Lightning's `PyTorchProfiler`, built on the loop profiler.

    Args:
        dirpath: where the operator table and the trace go (default: `trainer.log_dir`).
        filename: stem of the saved files (default: `"pytorch"`).
        export_to_chrome: also save the Chrome trace (`chrome://tracing`, Perfetto).
        row_limit: rows of the operator table (-1: all).
        sort_by_key: the operator table's sort key (default: `cpu_time_total`, or
            `cuda_time_total` when CUDA activity is recorded).
        record_module_names: accepted for Lightning compatibility.
        **profiler_kwargs: passed to `torch.profiler.profile` (`activities`, `record_shapes`,
            `profile_memory`, `with_stack`, ...).
    """

    def __init__(self, dirpath: Optional[Union[str, os.PathLike]] = None, filename: Optional[str] = None,
                 group_by_input_shapes: bool = False, emit_nvtx: bool = False, export_to_chrome: bool = True,
                 row_limit: int = 20, sort_by_key: Optional[str] = None, record_module_names: bool = True,
                 **profiler_kwargs: Any) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        self.group_by_input_shapes = group_by_input_shapes
        self.export_to_chrome = export_to_chrome
        self.row_limit = row_limit
        self.sort_by_key = sort_by_key
        self.profiler_kwargs: Dict[str, Any] = dict(profiler_kwargs)
        if group_by_input_shapes:
            self.profiler_kwargs.setdefault("record_shapes", True)
        self._torch_profiler: Any = None
        self.trace_path: Optional[str] = None
        self.table_path: Optional[str] = None

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        from torch.profiler import record_function

        timed = super()._wrap(name, fn)

        @functools.wraps(fn)
        def marked(*args: Any, **kwargs: Any) -> Any:
            with record_function(name):
                return timed(*args, **kwargs)

        return marked

    def setup(self, stage: str, local_rank: Optional[int] = None, log_dir: Optional[str] = None) -> None:
        super().setup(stage, local_rank, log_dir)
        if stage == "fit" and self._torch_profiler is None:
            import torch
            from torch.profiler import ProfilerActivity, profile

            kwargs = dict(self.profiler_kwargs)
            if "activities" not in kwargs:
                activities = [ProfilerActivity.CPU]
                if torch.cuda.is_available():
                    activities.append(ProfilerActivity.CUDA)
                kwargs["activities"] = activities
            self._torch_profiler = profile(**kwargs)
            self._torch_profiler.__enter__()

    def _stop_torch_profiler(self) -> Any:
        prof, self._torch_profiler = self._torch_profiler, None
        if prof is not None:
            prof.__exit__(None, None, None)
        return prof

    def describe(self) -> None:
        prof = self._stop_torch_profiler()
        if prof is not None:
            from torch.profiler import ProfilerActivity

            stem = os.path.join(self._report_dir(), f"{self._stage or 'fit'}-{self.filename or 'pytorch'}")
            os.makedirs(os.path.dirname(stem), exist_ok=True)
            sort = self.sort_by_key or (
                "cuda_time_total" if ProfilerActivity.CUDA in (prof.activities or ()) else "cpu_time_total")
            table = prof.key_averages(group_by_input_shape=self.group_by_input_shapes).table(
                sort_by=sort, row_limit=self.row_limit)
            self.table_path = stem + ".txt"
            with open(self.table_path, "w", encoding="utf-8") as f:
                f.write(table + "\n")
            if self.export_to_chrome:
                self.trace_path = stem + ".pt.trace.json"
                prof.export_chrome_trace(self.trace_path)
        text = self.summary()
        if text:
            if self.table_path:
                text += f"\ntorch.profiler operator table: {self.table_path}"
            if self.trace_path:
                text += f"\ntorch.profiler trace: {self.trace_path}"
            rank_zero_info(text)

    def teardown(self, stage: Optional[str]) -> None:
        # Fit raised: stop recording, keep nothing half-written.
        self._stop_torch_profiler()

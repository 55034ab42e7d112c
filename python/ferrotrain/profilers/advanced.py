"""`AdvancedProfiler`: Lightning's cProfile-based profiler. Each action name gets its own
`cProfile.Profile`, enabled between `start` and `stop`; the summary is pstats' table per action."""

from __future__ import annotations

import cProfile
import io
import os
import pstats
from typing import Dict, Optional, Union

from ferrotrain.profilers.profiler import Profiler

__all__ = ["AdvancedProfiler"]


class AdvancedProfiler(Profiler):
    """Args: dirpath, filename as for every profiler; `line_count_restriction`: how many rows of
    each action's table to print (an int, or a float in (0, 1] for a fraction, as pstats takes)."""

    def __init__(self, dirpath: Optional[Union[str, os.PathLike]] = None, filename: Optional[str] = None,
                 line_count_restriction: Union[int, float] = 1.0, dump_stats: bool = False) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        if isinstance(line_count_restriction, bool) or not isinstance(line_count_restriction, (int, float)) \
                or line_count_restriction <= 0:
            raise ValueError("line_count_restriction must be an int > 0 (rows) or a float in (0, 1] (fraction), "
                             f"got {line_count_restriction!r}")
        self.line_count_restriction = line_count_restriction
        self.dump_stats = dump_stats
        self.profiled_actions: Dict[str, cProfile.Profile] = {}

    def start(self, action_name: str) -> None:
        profiler = self.profiled_actions.get(action_name)
        if profiler is None:
            profiler = self.profiled_actions[action_name] = cProfile.Profile()
        profiler.enable()

    def stop(self, action_name: str) -> None:
        profiler = self.profiled_actions.get(action_name)
        if profiler is None:
            raise ValueError(f"Attempting to stop recording an action ({action_name}) which was never started.")
        profiler.disable()
        if self.dump_stats and self.filename:
            path = os.path.join(self._report_dir(), f"{self._stage or 'fit'}-{self.filename}-{action_name}.prof")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            profiler.dump_stats(path)

    def summary(self) -> str:
        parts = []
        for action_name, profiler in self.profiled_actions.items():
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("cumulative").print_stats(
                self.line_count_restriction)
            parts.append(f"Profile stats for: {action_name}\n{out.getvalue()}")
        return "\n".join(parts)

    def teardown(self, stage: Optional[str]) -> None:
        self.profiled_actions = {}

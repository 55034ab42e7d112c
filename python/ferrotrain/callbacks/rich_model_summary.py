"""`RichModelSummary`: `ModelSummary`'s table drawn with `rich`. Like Lightning, it refuses to
be built without the `rich` package (same error); the table's content is `ModelSummary`'s."""

from __future__ import annotations

import importlib.util
from typing import Any

from ferrotrain.callbacks.model_summary import ModelSummary, _summary_columns, get_human_readable_count, summarize


class RichModelSummary(ModelSummary):
    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        if importlib.util.find_spec("rich") is None:
            raise ModuleNotFoundError(
                "`RichModelSummary` requires `rich` to be installed. Install it by running `pip install -U rich`."
            )
        super().__init__(max_depth, **summarize_kwargs)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if not self._max_depth or not getattr(trainer, "is_global_zero", True):
            return
        from rich import get_console
        from rich.table import Table

        columns = _summary_columns(pl_module, self._max_depth)
        table = Table(header_style=self._summarize_kwargs.get("header_style", "bold magenta"))
        for name, _ in columns:
            table.add_column(name or " ", justify="right" if name in ("Params", "In sizes", "Out sizes") else "left")
        for row in zip(*(values for _, values in columns)):
            table.add_row(*row)
        console = get_console()
        console.print(table)
        # The totals, as the plain summary words them.
        plain = summarize(pl_module, 0, getattr(trainer, "precision", "32-true"))
        lines = plain.split("\n")
        last_rule = max(i for i, line in enumerate(lines) if line and set(line) == {"-"})
        console.print("\n".join(lines[last_rule + 1:]))


__all__ = ["RichModelSummary", "get_human_readable_count"]

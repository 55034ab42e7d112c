"""`RichProgressBar`: Lightning's rich bar, accepted for compatibility."""

from typing import Any, Dict, Optional

from ferrotrain.callbacks.progress.tqdm_progress import TQDMProgressBar


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

"""Progress bars: the `ProgressBar` base class (`progress_bar`), Lightning's default
`TQDMProgressBar` (`tqdm_progress`) and `RichProgressBar` (`rich_progress`). They share the line's
text (`formatting`), the writer that puts it on a terminal or in a log (`terminal`) and the clock
they read (`clock`)."""

from ferrotrain.callbacks.progress.formatting import format_interval, format_meter, format_num, format_postfix
from ferrotrain.callbacks.progress.progress_bar import ProgressBar, get_standard_metrics
from ferrotrain.callbacks.progress.rich_progress import RichProgressBar
from ferrotrain.callbacks.progress.terminal import Bar
from ferrotrain.callbacks.progress.tqdm_progress import TQDMProgressBar

__all__ = [
    "Bar", "ProgressBar", "RichProgressBar", "TQDMProgressBar", "format_interval", "format_meter", "format_num",
    "format_postfix", "get_standard_metrics",
]

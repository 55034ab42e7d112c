"""The clock the progress bars read (one place, so tests can move it)."""

import time

monotonic = time.monotonic

"""Progress bars for the long loops (training, AIS, annealed sampling).

A thin wrapper around :class:`tqdm.tqdm` that writes to ``stderr`` and does nothing at all
when ``verbose`` is 0, so library code never prints otherwise.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm import tqdm

# the rate as "12.3 steps/s" always (tqdm inverts slow rates to "s/step" by default)
BAR_FORMAT = ("{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
              "[{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]")
POSTFIX_INTERVAL = 0.2  # seconds between postfix refreshes (formatting is not free)
# a log file or pipe keeps every redraw of the bar: redraw it rarely there
NON_TTY_MININTERVAL = 10.0


class ProgressBar:
    """A step counter with a live postfix, silent when ``verbose`` is falsy.

    Parameters
    ----------
    total : int
        Number of steps expected.
    desc : str
        Label in front of the bar.
    verbose : int
        Show the bar when positive.
    """

    def __init__(self, total: int, desc: str, verbose: int) -> None:
        self.enabled = bool(verbose)
        interactive = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        self._bar = tqdm(total=total, desc=desc, unit=" steps", bar_format=BAR_FORMAT,
                         file=sys.stderr, disable=not self.enabled, dynamic_ncols=True,
                         leave=True, mininterval=0.1 if interactive else NON_TTY_MININTERVAL,
                         ) if self.enabled else None
        self._last_postfix = -float("inf")

    def update(self, n: int = 1, postfix: str | None = None, *, force: bool = False) -> None:
        """Advance by ``n`` steps; show ``postfix`` (refreshed at most every 0.2 s)."""
        if self._bar is None:
            return
        now = time.perf_counter()
        if postfix is not None and (force or now - self._last_postfix >= POSTFIX_INTERVAL):
            self._bar.set_postfix_str(postfix, refresh=False)
            self._last_postfix = now
        self._bar.update(n)

    def close(self) -> None:
        """Finish the bar (idempotent)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def anneal_callback(bar: ProgressBar):
    """A ``callback(k, x)`` for :func:`skdcd.samplers.anneal` that advances ``bar``."""
    if not bar.enabled:
        return None

    def callback(k: int, x: Any) -> None:
        bar.update(1)

    return callback

"""Progress of long loops (generation, training) that a person can follow anywhere.

On a terminal: a rich progress bar. Anywhere else (stderr redirected to a log file, CI, nohup):
plain lines at a steady interval, ``desc: n/N unit (rate unit/s, ETA s)``, so a log shows that a
run is alive and when it will end; a bar there would print nothing until it finished.
``$ASFT_PROGRESS_INTERVAL`` sets the seconds between lines (default 30).
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

DEFAULT_INTERVAL = 30.0


class Progress:
    """``advance(n)`` as work gets done, ``close()`` at the end (prints the final line)."""

    def __init__(self, total: int, desc: str, unit: str = "prompts", enabled: bool = True,
                 stream: TextIO | None = None, interval: float | None = None):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream or sys.stderr
        self.interval = float(os.environ.get("ASFT_PROGRESS_INTERVAL", DEFAULT_INTERVAL)) \
            if interval is None else interval
        self.done = 0
        self.start = self.last = time.perf_counter()
        self.bar = None
        self.plain = enabled and total > 0 and not _isatty(self.stream)
        if enabled and total > 0 and not self.plain:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn

            self.bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                           TimeElapsedColumn(), TextColumn("{task.fields[rate]}"), console=Console(file=self.stream))
            self.task = self.bar.add_task(desc, total=total, rate="")
            self.bar.start()
        if self.plain:
            self._line()

    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self.start, 1e-9)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(self.task, advance=n, rate=f"{self.rate():.2f} {self.unit}/s")
        elif self.plain and time.perf_counter() - self.last >= self.interval:
            self._line()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        elif self.plain:
            self._line()
            self.plain = False

    def _line(self) -> None:
        self.last = time.perf_counter()
        rate = self.rate()
        left = self.total - self.done
        eta = f", ETA {left / rate:.0f}s" if self.done and left > 0 else ""
        elapsed = time.perf_counter() - self.start
        print(f"{self.desc}: {self.done}/{self.total} {self.unit} ({rate:.2f} {self.unit}/s, "
              f"{elapsed:.0f}s elapsed{eta})", file=self.stream, flush=True)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def trainer_callback(enabled: bool = True):
    """A ``transformers.TrainerCallback`` printing ``Progress`` lines per optimiser step, for runs
    whose stderr is not a terminal (where the Trainer's own tqdm bar stays)."""
    from transformers import TrainerCallback

    class _PlainProgress(TrainerCallback):
        def __init__(self):
            self.progress = None

        def on_train_begin(self, args, state, control, **kwargs):
            if enabled and state.is_world_process_zero:
                self.progress = Progress(state.max_steps, "training", unit="steps")
                self.progress.done = state.global_step  # resumed runs start where they were

        def on_step_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.advance(1)

        def on_train_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.close()

    return _PlainProgress()


def plain_output() -> bool:
    """True when stderr is not a terminal (log file, CI): plain progress lines instead of bars."""
    return not _isatty(sys.stderr)

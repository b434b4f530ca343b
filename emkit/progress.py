"""Progress for long work: counts, rate and ETA.

On a terminal it is a tqdm bar; in a log (CI, nohup, a notebook's captured stderr) it is a
plain line every 10% or 30 seconds, so logs stay readable. Plugins receive a factory:
``with progress(total=n, unit="answers", desc="generate 1B step 110") as bar: bar.update()``.
"""

from __future__ import annotations

import sys
import time


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class _LineProgress:
    def __init__(self, total: int, unit: str, desc: str, stream, interval: float = 30.0):
        self.total, self.unit, self.desc, self.stream = total, unit, desc, stream
        self.count = 0
        self.start = time.monotonic()
        self.interval = interval
        self._last_print = self.start
        self._last_tenth = 0
        self.postfix = ""

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.count / elapsed
        text = f"{self.desc}: {self.count}/{self.total} {self.unit}, {rate:.1f}/s"
        if self.count < self.total and rate > 0:
            text += f", ETA {format_duration((self.total - self.count) / rate)}"
        elif self.count >= self.total:
            text += f", done in {format_duration(elapsed)}"
        if self.postfix:
            text += f", {self.postfix}"
        return text

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        tenth = (10 * self.count) // max(self.total, 1)
        if tenth > self._last_tenth or now - self._last_print >= self.interval:
            self._last_tenth = tenth
            self._last_print = now
            if self.count < self.total:
                print(self.line(), file=self.stream, flush=True)

    def set_postfix(self, text: str) -> None:
        self.postfix = text

    def close(self) -> None:
        print(self.line(), file=self.stream, flush=True)


class _BarProgress:
    def __init__(self, total: int, unit: str, desc: str, stream):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit=f" {unit}", desc=desc, file=stream, dynamic_ncols=True, smoothing=0.1)

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def set_postfix(self, text: str) -> None:
        self.bar.set_postfix_str(text)

    def close(self) -> None:
        self.bar.close()


class Progress:
    """Context manager over a bar or a line logger."""

    def __init__(self, total: int, unit: str = "items", desc: str = "", stream=None):
        stream = stream or sys.stderr
        tty = hasattr(stream, "isatty") and stream.isatty()
        self._impl = _BarProgress(total, unit, desc, stream) if tty else _LineProgress(total, unit, desc, stream)

    def update(self, n: int = 1) -> None:
        self._impl.update(n)

    def set_postfix(self, text: str) -> None:
        self._impl.set_postfix(text)

    def close(self) -> None:
        self._impl.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress(total: int, unit: str = "items", desc: str = "") -> Progress:
    """The factory handed to plugins."""
    return Progress(total, unit, desc)


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def silent(total: int = 0, unit: str = "items", desc: str = "") -> _Silent:
    """A factory that shows nothing: for library use and benchmarks."""
    return _Silent()

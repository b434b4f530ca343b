"""Where a run's time went: wall time, GPU time, and how much judging hid behind GPU work."""

from __future__ import annotations

from dataclasses import asdict, dataclass


def union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def length(intervals) -> float:
    return sum(end - start for start, end in intervals)


def overlap(a, b) -> float:
    """Seconds covered by both sets of intervals."""
    total, b = 0.0, union(b)
    for start, end in union(a):
        for other_start, other_end in b:
            total += max(0.0, min(end, other_end) - max(start, other_start))
    return total


def clip(intervals, start: float, end: float) -> list[tuple[float, float]]:
    return [(max(s, start), min(e, end)) for s, e in intervals if e > start and s < end]


@dataclass
class RunTiming:
    executor: str
    wall_s: float
    gpu_s: float  # summed over units: GPU-seconds of training and generation
    judge_s: float  # seconds judging was in progress (beside the GPU work and after it)
    judge_hidden_s: float  # of which, while GPU work was in progress
    units: int

    @classmethod
    def measure(cls, executor: str, start: float, end: float, gpu, judging, units: int) -> "RunTiming":
        gpu, judging = clip(gpu, start, end), clip(judging, start, end)
        return cls(executor, end - start, length(gpu), length(union(judging)), overlap(judging, gpu), units)

    def to_json(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}

    @staticmethod
    def line(data: dict) -> str:
        from emkit.progress import format_duration as d

        text = (f"wall {d(data['wall_s'])} on the {data['executor']} executor; GPU work {d(data['gpu_s'])} over "
                f"{data['units']} units")
        if data["judge_s"]:
            share = data["judge_hidden_s"] / data["judge_s"]
            text += (f"; judging {d(data['judge_s'])}, of which {d(data['judge_hidden_s'])} ({share:.0%}) hidden "
                     f"behind GPU work")
        return text

"""How fast does a saved file reach a running registry?

Run by hand: `python benchmarks/bench_registry.py`. A registry watches a temp folder; 30 times a
new file (a new class each time) is written atomically (temp file + rename) and the time until
`wait_for` sees the class is measured. Baseline in the same run: a registry without a watcher,
timing a direct `scan()` right after each write. Target: median under 300 ms, max under 2 s.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

from acc.registry import Registry

ROUNDS = 30


class Plugin:
    """Base class of the benchmark's generated files."""


def write_plugin(folder: Path, i: int) -> str:
    """Atomically write `plugin_<i>.py` defining `Plugin<i>`; return the class name."""
    name = f"Plugin{i}"
    tmp = folder / f"plugin_{i}.py.tmp"
    tmp.write_text(f"from bench_registry_base import Plugin\n\nclass {name}(Plugin):\n    pass\n")
    os.replace(tmp, folder / f"plugin_{i}.py")
    return name


def watcher_latencies(folder: Path) -> list[float]:
    registry = Registry("bench", Plugin, [folder])
    registry.start()
    try:
        out = []
        for i in range(ROUNDS):
            start = time.perf_counter()
            name = write_plugin(folder, i)
            if not registry.wait_for(lambda r: name in r, timeout=5):
                raise RuntimeError(f"{name} never appeared")
            out.append(time.perf_counter() - start)
        return out
    finally:
        registry.stop()


def scan_latencies(folder: Path) -> list[float]:
    registry = Registry("bench", Plugin, [folder])
    out = []
    for i in range(ROUNDS):
        start = time.perf_counter()
        name = write_plugin(folder, i)
        registry.scan()
        assert name in registry
        out.append(time.perf_counter() - start)
    return out


def summary(label: str, seconds: list[float]) -> tuple[float, float, float]:
    ms = sorted(s * 1000 for s in seconds)
    median, p90, worst = statistics.median(ms), ms[int(0.9 * (len(ms) - 1))], ms[-1]
    print(f"{label:>12}: median {median:6.1f} ms  p90 {p90:6.1f} ms  max {worst:6.1f} ms")
    return median, p90, worst


def main() -> None:
    base = types.ModuleType("bench_registry_base")
    base.Plugin = Plugin  # type: ignore[attr-defined]
    sys.modules["bench_registry_base"] = base
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        watched = summary("watcher", watcher_latencies(Path(a)))
        direct = summary("direct scan", scan_latencies(Path(b)))
    print(f"registry new-file latency: median {watched[0]:.1f} ms, p90 {watched[1]:.1f} ms "
          f"(direct scan {direct[0]:.1f} ms)")


if __name__ == "__main__":
    main()

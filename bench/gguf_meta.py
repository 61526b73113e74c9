"""How long the GGUF fallback estimate takes on Gemma 3 270M: llmd's reader vs gguf's.

Times `gguf_meta.estimate_mib` five times (best and median) and the old path, which
parsed the file with gguf.GGUFReader, once; checks that both read the same fields and
prints one markdown table row.

Run: .venv/bin/python bench/gguf_meta.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmd import gguf_meta  # noqa: E402
from tests.fakes.tiny_gguf import reader_shape as old_shape  # noqa: E402
from tests.helpers import gemma_file  # noqa: E402

ARGS = ["--ctx-size", "1024"]


def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    """Milliseconds one call took, and what it returned."""
    start = time.perf_counter()
    result = fn(*args)
    return (time.perf_counter() - start) * 1000, result


def main() -> None:
    path = str(gemma_file())
    runs = [timed(gguf_meta.estimate_mib, path, ARGS) for _ in range(5)]
    times = [ms for ms, _ in runs]
    old_ms, old = timed(lambda: gguf_meta.estimate_from_shape(old_shape(path), ARGS))
    new_shape, old_fields = gguf_meta.read_shape(path), old_shape(path)
    differ = {k: (new_shape[k], old_fields[k]) for k in new_shape
              if new_shape[k] != old_fields[k]}
    mib = runs[0][1]["host"]
    size = Path(path).stat().st_size / (1 << 20)
    print(f"| GGUF fallback estimate, Gemma 3 270M Q4_K_M ({size:.0f} MiB), 5 runs "
          f"| best {min(times):.1f} ms | median {statistics.median(times):.1f} ms "
          f"| gguf.GGUFReader path, 1 run: {old_ms:,.0f} ms "
          f"| {old_ms / statistics.median(times):,.0f}x faster "
          f"| estimate {mib} MiB (old {old} MiB); fields "
          f"{'equal' if not differ else f'differ: {differ}'} |")


if __name__ == "__main__":
    main()

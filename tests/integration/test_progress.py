"""Load progress as users see it: /models/sse, llmctl load --json, llmctl ps."""

from __future__ import annotations

import json
import re
import threading

import httpx
import pytest

from tests.helpers import wait_until
from tests.integration.test_real_gemma import gemma_config


def slow_model(mib: int = 40, seconds: float = 2.5) -> str:
    """A fake model file of `mib` MiB whose child reads it in over `seconds`."""
    head = json.dumps({"load_delay": seconds, "grow_mib": mib})
    return head + " " * ((mib << 20) - len(head))  # JSON allows trailing whitespace


def listen(url: str, events: list[dict], until: str) -> threading.Thread:
    def run() -> None:
        with httpx.stream("GET", url + "/models/sse", timeout=60) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                    if events[-1]["event"] == "status_change" and \
                            events[-1]["data"]["status"] == until and "args" in events[-1]["data"]:
                        return
    reader = threading.Thread(target=run, daemon=True)
    reader.start()
    return reader


def assert_forward_to_one(values: list[float]) -> None:
    assert values == sorted(values), f"progress went backwards: {values}"
    assert values[-1] == 1.0 and all(0 <= v < 1 for v in values[:-1])


def test_a_load_shows_real_progress_on_the_stream_in_llmctl_and_in_ps(daemon, fake_server):
    d = daemon({"llama_server": fake_server}, models={"a.gguf": slow_model()})
    events: list[dict] = []
    reader = listen(d.url, events, "loaded")
    wait_until(lambda: "llmd_connections 2" in d.http.get("/metrics").text, 10, "the stream")
    shown: list[str] = []
    load = threading.Thread(target=lambda: shown.append(d.llmctl("load", "a", "--json").stdout))
    load.start()
    ps = wait_until(lambda: re.search(r"loading [1-9]\d?%", d.llmctl("ps").stdout), 20,
                    "a percentage in llmctl ps")
    assert ps
    load.join(30)
    reader.join(30)

    *steps, model = [json.loads(line) for line in shown[0].splitlines()]
    assert model["id"] == "a" and model["state"] == "loaded"
    assert steps[0]["state"] in ("estimating", "queued") and steps[-1]["state"] == "loaded"
    assert_forward_to_one([s["progress"] for s in steps])
    read_in = [s["loading"]["resident_mib"] for s in steps if s["loading"]]
    assert len(set(read_in)) >= 3 and all(s["loading"]["expected_mib"] == 40
                                          for s in steps if s["loading"])
    assert all(s["at"] > 0 and s["model"] == "a" for s in steps)

    # The event stream: llama.cpp's load progress shape, llmd's figures beside it.
    loading = [e["data"] for e in events if e["event"] == "status_change"
               and e["data"]["status"] == "loading" and e["data"].get("load")]
    assert loading and all(set(e["progress"]) == {"stages", "current", "value"}
                           for e in loading)
    values = [e["progress"]["value"] for e in loading if e["load"]["state"] == "loading"]
    assert len(set(values)) >= 3 and values == sorted(values)
    assert_forward_to_one([e["data"]["load"]["progress"] for e in events
                           if e.get("data", {}).get("load")])


def test_a_failed_load_ends_its_progress_as_failed(daemon, fake_server):
    d = daemon({"llama_server": fake_server},
               models={"bad.gguf": json.dumps({"exit_on_load": 3})})
    result = d.llmctl("load", "bad", "--json", check=False)
    assert result.returncode == 1 and "exited with code 3" in result.stderr
    steps = [json.loads(line) for line in result.stdout.splitlines()]
    assert steps[-1]["state"] == "failed" and steps[-1]["progress"] < 1.0


@pytest.mark.real
def test_llmctl_load_follows_a_real_gemma_load_to_the_end(daemon, llama_server, gemma):
    d = daemon(gemma_config(llama_server), models={"gemma.gguf": gemma})
    *steps, model = [json.loads(line) for line in
                     d.llmctl("load", "gemma", "--json").stdout.splitlines()]
    assert model["state"] == "loaded" and model["pid"]
    assert steps[0]["state"] in ("queued", "estimating") and steps[-1]["state"] == "loaded"
    assert_forward_to_one([s["progress"] for s in steps])

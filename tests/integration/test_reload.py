"""Reloading the configuration: SIGHUP, llmctl reload and GET /models?reload=1.

Starts: llmd (subprocess) with fake llama-server children.
"""

from __future__ import annotations

import json
import signal

import tomli_w

from tests.helpers import wait_until


def rewrite(d, **changes) -> None:
    d.config.update(changes)
    d.config_path.write_text(tomli_w.dumps(d.config))


def test_llmctl_reload_adds_removes_and_restarts_changed_models(daemon, fake_server):
    d = daemon({"llama_server": fake_server,
                "models": {"b": {"path": "b.gguf", "args": ["--temp", "1"]}}},
               models={"a.gguf": "{}", "b.gguf": "{}"})
    d.llmctl("load", "a")
    d.llmctl("load", "b")
    old_b = d.models()["b"]["pid"]
    (d.tmp / "models" / "a.gguf").unlink()
    (d.tmp / "models" / "c.gguf").write_text("{}")
    rewrite(d, models={"b": {"path": "b.gguf", "args": ["--temp", "0"]}})
    result = json.loads(d.llmctl("reload", "--json").stdout)
    assert result == {"added": ["c"], "removed": ["a"], "changed": ["b"]}
    wait_until(lambda: "a" not in d.models(), 10, "a to be unloaded and removed")
    wait_until(lambda: d.models()["b"]["status"]["value"] == "loaded"
               and d.models()["b"]["pid"] != old_b, 10, "b to restart")
    args = d.models()["b"]["status"]["args"]
    assert args[args.index("--temp"):args.index("--temp") + 2] == ["--temp", "0"]
    assert d.chat("c").status_code == 200
    assert d.chat("a").status_code == 400


def test_bad_config_on_reload_keeps_the_running_one(daemon, fake_server):
    d = daemon({"llama_server": fake_server}, models={"a.gguf": "{}"})
    d.config_path.write_text("models_max = 'many'\n")
    result = d.llmctl("reload", check=False)
    assert result.returncode == 1
    assert "models_max: expected int" in result.stderr and "running configuration stays" in \
        result.stderr
    assert d.chat("a").status_code == 200
    d.proc.send_signal(signal.SIGHUP)  # same through the signal: logged, nothing changes
    wait_until(lambda: "reload failed" in d.log(), 10, "the reload error in the log")
    assert d.chat("a").status_code == 200


def test_sighup_and_models_reload_query_pick_up_new_files(daemon, fake_server):
    d = daemon({"llama_server": fake_server}, models={"a.gguf": "{}"})
    (d.tmp / "models" / "b.gguf").write_text("{}")
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "b" in d.models(), 10, "b after SIGHUP")
    (d.tmp / "models" / "c.gguf").write_text("{}")
    ids = [m["id"] for m in d.http.get("/models", params={"reload": "1"}).json()["data"]]
    assert ids == ["a", "b", "c"]

"""GET /metrics as Prometheus reads it.

Starts: llmd (subprocess) with fake llama-server children.
"""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families


def families(d) -> dict:
    response = d.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(response.text)}


def value(family, **labels) -> float:
    return next(s.value for s in family.samples
                if all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_parse_and_count_requests_loads_evictions_and_failures(daemon, fake_server):
    d = daemon({"llama_server": fake_server, "models_max": 1},
               models={"a.gguf": json.dumps({}), "b.gguf": json.dumps({}),
                       "bad.gguf": json.dumps({"exit_on_load": 3})})
    assert d.chat("a").status_code == 200
    assert d.chat("b").status_code == 200  # evicts a
    assert d.chat("bad").status_code == 503
    assert d.chat("nosuch").status_code == 400
    f = families(d)
    assert value(f["llmd_requests"], model="a", path="/v1/chat/completions", code="200") == 1
    assert value(f["llmd_requests"], model="", code="400") == 1  # unknown names: no label
    assert f["llmd_request_duration_seconds"].type == "histogram"
    assert value(f["llmd_request_duration_seconds"], le="+Inf") == 4
    assert value(f["llmd_loads"]) == 3
    assert value(f["llmd_evictions"]) >= 1
    assert value(f["llmd_failures"], kind="load") == 1
    assert value(f["llmd_failures"], kind="crash") == 0
    assert value(f["llmd_model_loaded"], model="a") == 0  # evicted for b (then b for bad)
    assert value(f["llmd_in_flight"]) == 0 and value(f["llmd_queue_depth"]) == 0
    assert value(f["llmd_model_waiters"], model="a") == 0
    host = {s.name: s.value for fam in f.values() for s in fam.samples
            if s.labels.get("device") == "host"}
    assert host["llmd_device_memory_total_bytes"] > host["llmd_device_memory_free_bytes"] > 0
    assert host["llmd_device_memory_committed_bytes"] >= 0
    # The books as llmctl status shows them: room = total - others - booked - margin.
    room = (host["llmd_device_memory_total_bytes"] - host["llmd_device_memory_others_bytes"]
            - host["llmd_device_memory_booked_bytes"] - host["llmd_device_memory_margin_bytes"])
    assert host["llmd_device_memory_room_bytes"] == max(0, room)
    assert host["llmd_device_memory_others_bytes"] > 0

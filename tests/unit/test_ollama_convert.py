"""Ollama's request fields in llama-server's terms: what maps, and what is refused clearly."""

from __future__ import annotations

import json

import pytest

from llmd.api.ollama import convert
from llmd.api.ollama.describe import parameter_size
from llmd.errors import BadRequest


def test_sampling_options_map_to_llama_server_fields():
    assert convert.options({"temperature": 0.2, "top_k": 5, "top_p": 0.9, "min_p": 0.1,
                            "seed": 7, "stop": "\n", "num_predict": 16, "repeat_penalty": 1.1,
                            "num_keep": 4, "tfs_z": 1.0}, 4096) == {
        "temperature": 0.2, "top_k": 5, "top_p": 0.9, "min_p": 0.1, "seed": 7, "stop": ["\n"],
        "max_tokens": 16, "repeat_penalty": 1.1, "n_keep": 4}
    assert convert.options({"num_predict": -1}, None) == {}  # no limit: the default


@pytest.mark.parametrize("given, words", [
    ({"num_ctx": 8192}, "more than this model's context of 4096"),
    ({"num_gpu": 99}, "set when llmd loads the model"),
    ({"use_mmap": False}, "set when llmd loads the model"),
    ({"bogus": 1}, "unknown option 'bogus'"),
    ("fast", "options must be an object"),
])
def test_what_cant_apply_to_a_running_child_is_refused_with_the_reason(given, words):
    with pytest.raises(BadRequest) as info:
        convert.options(given, 4096)
    assert words in info.value.message


def test_num_ctx_within_the_childs_context_is_accepted():
    assert convert.options({"num_ctx": 2048}, 4096) == {}


@pytest.mark.parametrize("given, seconds", [
    ("5m", 300.0), ("1h", 3600.0), ("30s", 30.0), ("1.5m", 90.0), (300, 300.0), (0, 0.0),
    ("0", 0.0), (-1, -1.0), ("-1m", -60.0), (None, None)])
def test_keep_alive_reads_ollamas_durations(given, seconds):
    assert convert.keep_alive(given) == seconds


@pytest.mark.parametrize("given", ["soon", True, [1], "5 minutes"])
def test_a_keep_alive_that_is_not_a_duration_is_refused(given):
    with pytest.raises(BadRequest):
        convert.keep_alive(given)


def test_format_becomes_structured_output():
    assert convert.response_format("json") == {"response_format": {"type": "json_object"}}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert convert.response_format(schema) == {"response_format": {
        "type": "json_schema", "json_schema": {"name": "format", "schema": schema}}}
    assert convert.response_format("") == {}
    with pytest.raises(BadRequest):
        convert.response_format("yaml")


def test_think_switches_the_template_and_the_effort():
    assert convert.think(True) == {"chat_template_kwargs": {"enable_thinking": True}}
    assert convert.think("high")["reasoning_effort"] == "high"
    with pytest.raises(BadRequest):
        convert.think("maximal")


def test_messages_carry_images_tool_calls_and_tool_results():
    out = convert.messages([
        {"role": "user", "content": "what is this?", "images": ["aGk="]},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "content": "cold", "tool_name": "weather"},
    ])
    assert out[0]["content"][1] == {"type": "image_url",
                                    "image_url": {"url": "data:image/png;base64,aGk="}}
    call = out[1]["tool_calls"][0]
    assert call["type"] == "function" and json.loads(call["function"]["arguments"]) == {
        "city": "Oslo"}
    assert out[2]["tool_call_id"] == call["id"]


def test_tool_calls_come_back_with_arguments_as_objects():
    assert convert.tool_calls([{"function": {"name": "f", "arguments": '{"x": 1}'}}]) == [
        {"function": {"name": "f", "arguments": {"x": 1}}}]


def test_stats_are_nanoseconds_from_llama_servers_timings():
    stats = convert.stats({"prompt_n": 5, "cache_n": 3, "prompt_ms": 1.5, "predicted_n": 7,
                           "predicted_ms": 20.0}, None, total=2.0, load=0.5)
    assert stats == {"total_duration": 2_000_000_000, "load_duration": 500_000_000,
                     "prompt_eval_count": 8, "prompt_eval_duration": 1_500_000,
                     "eval_count": 7, "eval_duration": 20_000_000}
    assert convert.done_reason("length") == "length" and convert.done_reason(None) == "stop"


def test_parameter_sizes_read_as_ollama_writes_them():
    assert parameter_size(268_098_176) == "268.10M" and parameter_size(7_615_616_512) == "7.6B"


class _Scripted:
    """A child's streamed answer, in the pieces it arrives in."""

    def __init__(self, events: list[dict]) -> None:
        self._pieces = [f"data: {json.dumps(e)}\n\n".encode() for e in events] + [
            b"data: [DONE]\n\n"]

    async def read(self) -> bytes:
        return self._pieces.pop(0) if self._pieces else b""


async def test_a_streamed_answer_becomes_ndjson_with_thinking_and_whole_tool_calls():
    from llmd.api.ollama.routes import _relay

    events = [
        {"choices": [{"delta": {"reasoning_content": "hmm"}}]},
        {"choices": [{"delta": {"content": "Hi"}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {
            "name": "weather", "arguments": '{"ci'}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {
            "arguments": 'ty": "Oslo"}'}}]}, "finish_reason": "tool_calls"}],
         "timings": {"prompt_n": 3, "prompt_ms": 1.0, "predicted_n": 4, "predicted_ms": 2.0}},
    ]
    sent: list[dict] = []

    async def send(message) -> None:
        sent.append(message)

    await _relay(send, _Scripted(events), "m", chat=True, stream=True, started=0.0, loaded=0.0)
    assert sent[0]["headers"] == [(b"content-type", b"application/x-ndjson")]
    lines = [json.loads(line) for m in sent[1:] for line in m.get("body", b"").splitlines()]
    assert lines[0]["message"] == {"role": "assistant", "content": "", "thinking": "hmm"}
    assert lines[1]["message"]["content"] == "Hi" and not lines[1]["done"]
    last = lines[-1]
    assert last["done"] and last["done_reason"] == "stop" and last["eval_count"] == 4
    assert last["message"]["tool_calls"] == [
        {"function": {"name": "weather", "arguments": {"city": "Oslo"}}}]

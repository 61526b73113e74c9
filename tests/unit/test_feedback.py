"""Who gets a load narrated, what the narration says, and how llmctl draws progress."""

from __future__ import annotations

import pytest

from llmctl import render
from llmd.api import feedback
from llmd.models.catalog import ModelSpec
from llmd.models.model import Model
from llmd.models.progress import Progress, Queue
from llmd.models.state import State

STREAM = {"model": "m", "stream": True}


@pytest.mark.parametrize("path, request_, header, setting, expected", [
    ("/v1/chat/completions", STREAM, None, True, True),
    ("/v1/chat/completions", STREAM, None, False, False),
    ("/v1/chat/completions", STREAM, "off", True, False),
    ("/v1/chat/completions", STREAM, "On", False, True),
    ("/v1/chat/completions", {"model": "m"}, "on", True, False),  # not streaming
    ("/v1/chat/completions", {"model": "m", "stream": "yes"}, None, True, False),
    ("/v1/completions", STREAM, None, True, False),  # no reasoning field there
    ("/v1/messages", STREAM, None, True, True),  # as a thinking block
    ("/v1/responses", STREAM, None, True, False),
])
def test_only_streaming_chats_get_a_narrated_load_and_the_header_decides_last(
        path, request_, header, setting, expected):
    assert feedback.wanted(path, request_, header, setting) is expected


def loading(state: State, **progress) -> Model:
    model = Model(ModelSpec(name="m", path="/m.gguf", args=()))
    model.state = state
    model.load = Progress(downloads=state is State.DOWNLOADING)
    model.load.enter(state.value)
    for key, value in progress.items():
        getattr(model.load, key)(*value)
    return model


def test_narration_says_what_each_step_does():
    assert feedback.narration("m", loading(State.DOWNLOADING, downloaded=(
        50 << 20, 200 << 20, 10 << 20))) == (
        "Downloading m: 25 % (50 of 200 MiB at 10.0 MiB/s, about 15 s left)")
    assert feedback.narration("m", loading(State.QUEUED, queued=(Queue(2, "turn", "b"),))) == (
        "Queued (2 in line), behind the load of b…")
    assert "Waiting for big to finish its requests" in feedback.narration(
        "m", loading(State.QUEUED, queued=(Queue(1, "drain", "big"),)))
    assert feedback.narration("m", loading(State.LOADING, resident=(60, 200))) == (
        "Loading m: 30 %")
    assert feedback.narration("m", loading(State.LOADED)) is None


def test_llmctl_draws_each_step_and_ps_shows_the_percentage():
    load = loading(State.LOADING, resident=(60, 200)).load
    assert load is not None
    line = render.progress(load.to_json())
    assert line.startswith("[") and "loading 60/200 MiB read in" in line
    queued = loading(State.QUEUED, queued=(Queue(1, "min_residency", "a"),)).load
    assert queued is not None
    assert "waiting for a to serve its min_residency" in render.progress(queued.to_json())
    model = {"state": "loading", "status": {"value": "loading"}, "load": load.to_json()}
    assert render.state(model) == f"loading {int(100 * load.value)}%"


async def test_the_models_messages_stream_follows_llmds_thinking_block():
    sent: list[bytes] = []

    async def send(message) -> None:
        sent.append(message.get("body", b""))

    after = feedback._AfterThinking(send)
    child = (b'event: message_start\ndata: {"type": "message_start", "message": {}}\n\n'
             b'event: content_block_start\ndata: {"type": "content_block_start", "index": 0, '
             b'"content_block": {"type": "text", "text": ""}}\n\nevent: content_block_delta\n'
             b'data: {"type": "content_block_delta", "index": 0, "delta": ')
    await after({"type": "http.response.body", "body": child, "more_body": True})
    await after({"type": "http.response.body", "more_body": False, "body":
                 b'{"type": "text_delta", "text": "hi"}}\n\nevent: message_stop\n'
                 b'data: {"type": "message_stop"}\n\n'})
    text = b"".join(sent).decode()
    assert "message_start" not in text
    assert '"index": 1' in text and '"index": 0' not in text
    assert text.endswith('data: {"type": "message_stop"}\n\n')

"""Which chat template a model's child uses, and the one llmd picks when the GGUF has none.

llama-server formats /v1/chat/completions with the GGUF's `tokenizer.chat_template`. A
GGUF without one gets ChatML (`<|im_start|>user ...`), which a model of another family
has never seen: Gemma 3 270M answers "Say hi." with "Say hi.<|im_end|>\\nsay hi.<|im_start|>".

For the architectures in CHOICES llmd picks one of llama.cpp's built-in templates instead
and adds to the child's arguments:

    --no-jinja --chat-template NAME --reverse-prompt STOP

- `--no-jinja`: llama-server 11434 renders chats with Jinja by default, and with Jinja on a
  built-in's name is taken as the template text itself (the prompt becomes "rwkv-world").
- `--reverse-prompt STOP`: llama-server's default stop string, for requests that send no
  `stop` of their own. A model without a chat template is in practice a base model (an
  instruction-tuned checkpoint ships its template, and llama.cpp's converter copies it into
  the GGUF); a base model ends no turn, it writes the next "User:" line itself.

A model whose arguments set any of OWN_FLAGS chooses its own chat format: llmd adds
nothing. So does a GGUF that carries a template, or one of an architecture not in CHOICES
(llama-server's ChatML then: the Qwen families' own format, among others).

The GGUF is read once per file identity (catalog.file_identity) and remembered: the
scheduler asks at every load and status at every /models listing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

from llmd.memory import gguf_meta
from llmd.models.catalog import ModelSpec, file_identity

log = logging.getLogger("llmd.chat_template")


@dataclass(frozen=True)
class Builtin:
    """One of llama.cpp's built-in chat templates, and where its answers end."""

    name: str  # as `llama-server --help` lists it under --chat-template
    stop: str  # the line that starts the next turn, for --reverse-prompt
    shape: str  # what the prompt looks like, for people


# general.architecture -> the built-in llmd picks when the GGUF has no template. Each entry
# is measured with llama-server 11434 on a real model of that architecture, with the
# README's request ("Say hi.", max_tokens 32, default sampling, one seed a sample):
# - gemma3, on Gemma 3 270M (pretrained, the embedded default): llama.cpp's own "gemma"
#   template (with --no-jinja) makes it echo the request in 170 samples of 170 ("Say hi.
#   mendatanguser ..."): the pretrained model never learnt <start_of_turn>/<end_of_turn>.
#   "rwkv-world", a plain "User: ...\n\nAssistant:" transcript with no end-of-turn token,
#   stopped at "User:", answers in words of its own ("Hey, what's up?") in 198 of 200 (twice
#   it repeats "Say hi."/"Say hello."), and its second turns show none of the template in
#   30 of 30. (Of the other plain built-ins, vicuna repeats the request in 6 of 150, and
#   deepseek2's end-of-sentence mark leaks into 7 second turns of 30.)
CHOICES: dict[str, Builtin] = {
    "gemma3": Builtin("rwkv-world", "User:", "a plain User:/Assistant: transcript"),
}

# Arguments with which the operator chooses the chat format; llmd then adds nothing.
OWN_FLAGS = ("--chat-template", "--chat-template-file", "--jinja", "--no-jinja")


@dataclass(frozen=True)
class Template:
    """Which chat template a child uses, who chose it, and what llmd adds for it."""

    name: str | None  # a built-in's name, "chatml", the args' value; None for the GGUF's own
    source: str  # "gguf", "args", "llmd", "llama-server" (its ChatML), "unknown"
    note: str  # why, for people
    args: tuple[str, ...] = ()  # what llmd adds to the child's arguments

    def describe(self) -> dict[str, str | None]:
        """The JSON shape status shows."""
        return {"name": self.name, "source": self.source, "note": self.note}


# path -> (file identity, (architecture, has a template) or None if unreadable)
_read: dict[str, tuple[tuple[int, ...] | None, tuple[str, bool] | None]] = {}
_told: set[tuple[str, str, tuple[int, ...] | None]] = set()  # (model, path, identity) logged


def read(path: str) -> tuple[str, bool] | None:
    """The GGUF's architecture and whether it has a chat template, read once per file
    identity; None if the file is missing or not a readable GGUF."""
    identity = file_identity(path)
    known = _read.get(path)
    if known is not None and known[0] == identity:
        return known[1]
    try:
        found: tuple[str, bool] | None = gguf_meta.read_chat(path) if identity else None
    except gguf_meta.GGUFError:
        found = None
    _read[path] = (identity, found)
    return found


def own_choice(args: Sequence[str]) -> tuple[str, str | None] | None:
    """The flag, and its value, with which the args choose the chat format; None if none.

    A template (--chat-template, --chat-template-file) says more than the engine (--jinja,
    --no-jinja); of each, the last wins, as in llama-server.
    """
    template: tuple[str, str | None] | None = None
    engine: tuple[str, str | None] | None = None
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if flag in ("--jinja", "--no-jinja"):
            engine = (flag, None)
        elif flag in OWN_FLAGS:
            template = (flag, value if eq else args[i + 1] if i + 1 < len(args) else "")
    return template or engine


def decide(args: Sequence[str], gguf: tuple[str, bool] | None) -> Template:
    """The template a child with these arguments and this GGUF (read()) uses."""
    own = own_choice(args)
    if own is not None:
        flag, value = own
        if value is None:  # --jinja or --no-jinja alone: the GGUF's or llama-server's
            return Template(None, "args", f"llmd adds none: the model's args set {flag}")
        return Template(value, "args", f"set by the model's args ({flag})")
    if gguf is None:
        return Template(None, "unknown", "the GGUF could not be read")
    arch, has_template = gguf
    if has_template:
        return Template(None, "gguf", "the GGUF's own")
    builtin = CHOICES.get(arch)
    if builtin is None:
        return Template("chatml", "llama-server",
                        f"llama-server's fallback: the GGUF has none and llmd has no choice "
                        f"for architecture {arch or '(none)'}")
    return Template(builtin.name, "llmd",
                    f"chosen by llmd: the GGUF has none; {builtin.shape} for architecture "
                    f"{arch}, ending at {builtin.stop!r}",
                    ("--no-jinja", "--chat-template", builtin.name,
                     "--reverse-prompt", builtin.stop))


def template(spec: ModelSpec, look: bool = True) -> Template:
    """The chat template the model's child uses; logs once per file when llmd picks it.

    With `look` False (listing models), a file not read yet is not read now: a models
    directory of large GGUFs would cost ~20 ms each on the first GET /models.
    """
    if own_choice(spec.args) is not None:  # the file need not be read
        return decide(spec.args, None)
    if not look:
        known = _read.get(spec.path)
        if known is None:
            return Template(None, "unknown", "read when the model first loads")
        return decide(spec.args, known[1])
    gguf = read(spec.path)
    chosen = decide(spec.args, gguf)
    if chosen.source == "llmd" and gguf is not None:
        told = (spec.name, spec.path, _read[spec.path][0])
        if told not in _told:
            _told.add(told)
            log.info("%s: the GGUF has no chat template; using llama.cpp's built-in %r (%s) "
                     "for architecture %s (set --chat-template in its args to choose another)",
                     spec.name, chosen.name, CHOICES[gguf[0]].shape, gguf[0])
    return chosen

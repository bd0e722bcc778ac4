"""Reading a generation's answer as it passes through the router: events, tokens, their times.

The router measures what a user of a language model waits for: the time to the first token,
the gaps between tokens, and how many tokens came out. A streamed answer is read as
server-sent events (``data:`` lines, events split by a blank line); an event carries a token
when its text is not empty, in the shapes the field uses:

- OpenAI (``/v1/chat/completions``, ``/v1/completions``): ``choices[].delta.content`` or
  ``choices[].text``; the role-only first chunk and the usage-only last chunk carry none;
- the Open Inference Protocol's generate extension: ``text_output``;
- Text Generation Inference: ``token.text``;
- anything else (not JSON, or JSON of another shape): every data event but ``[DONE]``.

The token count is ``usage.completion_tokens`` when the answer reports it (a server may send
several tokens in one event), else the number of events that carried a token. A streamed
answer that is not an event stream has a first byte (its time to first token) and nothing
else. ``collect`` keeps the generated text and any token ids, for mirror comparisons.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

EVENT_STREAM = "text/event-stream"
MAX_EVENT = 1 << 20  # an "event" longer than this is not metered: the stream still passes


def is_generation(path: str) -> bool:
    """A path whose answers are generations (OpenAI completions, OIP generate)."""
    path = path.split("?", 1)[0].rstrip("/")
    return path.endswith(("/completions", "/generate", "/generate_stream"))


@dataclass(frozen=True)
class Piece:
    """What one event or answer body says about the generation."""

    token: bool = False  # carries generated text
    text: str = ""
    usage: int | None = None  # completion_tokens, when reported
    ids: tuple[int, ...] = ()  # token ids, when the server sends them


def read_event(doc: Any) -> Piece:
    """The generated text, usage and token ids in one decoded event (or whole answer)."""
    if not isinstance(doc, dict):
        return Piece(token=True)
    usage = doc.get("usage")
    completion = usage.get("completion_tokens") if isinstance(usage, dict) else None
    used = completion if isinstance(completion, int) else None
    if "choices" in doc:
        texts: list[str] = []
        ids: list[int] = []
        for choice in doc.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            source = delta if isinstance(delta, dict) else choice
            content = source.get("content") if isinstance(delta, dict) else None
            if content is None:
                message = choice.get("message")
                content = message.get("content") if isinstance(message, dict) else None
            if content is None:
                content = choice.get("text")
            if isinstance(content, str):
                texts.append(content)
            ids += _ids(choice.get("token_ids") or source.get("token_ids"))
        text = "".join(texts)
        return Piece(bool(text), text, used, tuple(ids))
    if "text_output" in doc:
        out = doc.get("text_output")
        out = out if isinstance(out, str) else ""
        return Piece(bool(out), out, used, _ids(doc.get("token_ids")))
    token = doc.get("token")
    if isinstance(token, dict):
        said = token.get("text")
        said = said if isinstance(said, str) else ""
        tid = token.get("id")
        one = (tid,) if isinstance(tid, int) and not token.get("special") else ()
        return Piece(bool(said) or bool(one), said, used, one)
    return Piece(token=used is None, usage=used)


# An OpenAI chunk's one "content" value, read without decoding the event (the common case, on
# the path of every token). Inside JSON strings quotes are escaped, so these bytes are keys.
_CONTENT = re.compile(rb'"content"\s*:\s*(null|""|")')
_UNSURE = (b'"usage"', b'"text', b'"token', b'"message"')


def quick_token(payload: bytes) -> bool | None:
    """Whether an event carries text, for a plain OpenAI chunk; None when it takes decoding."""
    if payload.count(b'"content"') != 1 or any(k in payload for k in _UNSURE):
        return None
    found = _CONTENT.search(payload)
    return None if found is None else found.group(1) == b'"'


def _ids(value: Any) -> tuple[int, ...]:
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return tuple(value)
    return ()


def answer_tokens(body: bytes) -> Piece | None:
    """A whole (not streamed) generation answer read like one event; None if not JSON."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return read_event(doc)


@dataclass
class StreamMeter:
    """Times and tokens of one streamed answer, fed with its bytes as they pass."""

    started: float  # when the router received the request (perf_counter)
    sse: bool
    collect: bool = False
    first: float | None = None  # first token (first byte when not an event stream)
    last: float | None = None  # latest token
    gaps: list[float] = field(default_factory=list)  # between token-carrying events
    events: int = 0  # token-carrying events
    usage: int | None = None
    finished: bool = False  # `data: [DONE]` seen
    texts: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    _pending: bytes = b""

    @property
    def tokens(self) -> int:
        return self.usage if self.usage is not None else self.events

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.started

    @property
    def text(self) -> str:
        return "".join(self.texts)

    def feed(self, data: bytes, now: float) -> None:
        if not self.sse:
            if self.first is None and data:
                self.first = now
            return
        buf = self._pending + data if self._pending else data
        if b"\r" in buf:  # SSE allows CRLF and CR line ends; a CR at the end may start a CRLF
            keep_cr = buf.endswith(b"\r")
            buf = buf[:-1] if keep_cr else buf
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + (b"\r" if keep_cr else b"")
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            self._event(buf[start:end], now)
            start = end + 2
        self._pending = buf[start:]
        if len(self._pending) > MAX_EVENT:  # not events after all: stop reading them
            self.sse = False
            self._pending = b""

    def _event(self, block: bytes, now: float) -> None:
        data: list[bytes] = []
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
        if not data:
            return  # a comment, a keep-alive or an event without data
        payload = b"\n".join(data)
        if payload.strip() == b"[DONE]":
            self.finished = True
            return
        quick = None if self.collect else quick_token(payload)
        if quick is not None:
            if quick:
                self._token(now)
            return
        try:
            piece = read_event(json.loads(payload.decode()))  # str: json skips sniffing
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            piece = Piece(token=True, text=payload.decode("utf-8", "replace"))
        if piece.usage is not None:
            self.usage = piece.usage
        if not piece.token:
            return
        self._token(now)
        if self.collect:
            self.texts.append(piece.text)
            self.ids += piece.ids

    def _token(self, now: float) -> None:
        self.events += 1
        if self.first is None:
            self.first = now
        elif self.last is not None:
            self.gaps.append(now - self.last)
        self.last = now


def greedy_copy(path_qs: str, body: bytes) -> tuple[str, bytes, bool] | None:
    """A mirror's copy of a generation request: greedy (temperature 0), not streamed, the same
    ``max_tokens``; and whether the user's own request was greedy already (then the answer
    the user got is the baseline). None when the body is not a JSON object."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict):
        return None
    params = doc.get("parameters")
    params = params if isinstance(params, dict) else None
    merged = {**doc, **(params or {})}  # OIP generate: settings at the top or in parameters
    greedy = merged.get("temperature") == 0 or merged.get("top_k") == 1
    for d in (doc, params):
        if d is not None:
            for key in ("stream_options", "top_p", "top_k", "seed", "n"):
                d.pop(key, None)
    doc["temperature"] = 0
    if params is not None:
        params["temperature"] = 0
    path, _, query = path_qs.partition("?")
    if path.endswith("/generate_stream"):
        path = path.removesuffix("_stream")
    else:
        doc["stream"] = False
    return path + ("?" + query if query else ""), json.dumps(doc).encode(), greedy

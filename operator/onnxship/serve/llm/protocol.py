"""The generation protocols as plain data: OpenAI's chat and text completions, and the Open
Inference Protocol's generate extension. Requests are checked field by field here (a known
field of the wrong type is a 400 naming it; unknown fields are ignored, as clients send
extras); answers, stream chunks and errors are built here. No HTTP, no model.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInput, ServeError
from .sampling import SamplingParams

MAX_STOP = 16


class BadField(InvalidInput):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


@dataclass(frozen=True)
class Generation:
    """What every protocol asks for, once its own shape is parsed."""

    max_tokens: int | None
    sampling: SamplingParams
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool = False
    min_tokens: int = 0


# ---------------------------------------------------------------------- requests


def parse_chat(doc: Any, defaults: SamplingParams) -> tuple[list[dict[str, Any]], Generation]:
    doc = _object(doc)
    messages = doc.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadField("messages", "must be a non-empty list of {role, content} objects")
    clean: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadField(f"messages[{i}]", "must be an object with 'role' and 'content'")
        role = m.get("role")
        if not isinstance(role, str) or not role:
            raise BadField(f"messages[{i}].role", "must be a string such as 'user'")
        clean.append({"role": role, "content": _content(m.get("content"), i)})
    return clean, _generation(doc, defaults)


def parse_completion(doc: Any, defaults: SamplingParams) -> tuple[str | list[int], Generation]:
    doc = _object(doc)
    prompt = doc.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise BadField("prompt", "must be a string, or a non-empty list of token ids")
        if any(t < 0 for t in prompt):
            raise BadField("prompt", "token ids must be non-negative")
    elif not isinstance(prompt, str) or not prompt:
        raise BadField("prompt", "must be a non-empty string (one prompt: n and batches of "
                       "prompts are not supported)")  # fmt: skip
    return prompt, _generation(doc, defaults)


def parse_generate(doc: Any, defaults: SamplingParams, stream: bool) -> tuple[str, Generation]:
    """OIP generate: ``text_input`` and settings at the top level or under ``parameters``."""
    doc = _object(doc)
    params = doc.get("parameters", {})
    if not isinstance(params, dict):
        raise BadField("parameters", "must be an object")
    merged = {**doc, **params}
    text = merged.get("text_input")
    if not isinstance(text, str) or not text:
        raise BadField("text_input", "must be a non-empty string")
    merged["stream"] = stream
    if "stop_words" in merged and "stop" not in merged:
        merged["stop"] = merged["stop_words"] or None
    return text, _generation(merged, defaults)


def _object(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise InvalidInput("the request body must be a JSON object")
    return doc


def _content(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = []
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):  # fmt: skip
                raise BadField(f"messages[{i}].content[{j}]", "only text parts are supported")
            parts.append(part["text"])
        return "".join(parts)
    if content is None:
        return ""
    raise BadField(f"messages[{i}].content", "must be a string or a list of text parts")


def _generation(doc: dict[str, Any], defaults: SamplingParams) -> Generation:
    key = "max_completion_tokens" if doc.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _int(doc, key)
    if max_tokens is not None and max_tokens < 1:
        raise BadField(key, f"must be at least 1, got {max_tokens}")
    n = _int(doc, "n")
    if n is not None and n != 1:
        raise BadField("n", f"only n=1 is supported, got {n}")
    temperature = _number(doc, "temperature")
    if temperature is not None and not 0 <= temperature <= 2:
        raise BadField("temperature", f"must be between 0 and 2, got {temperature}")
    top_p = _number(doc, "top_p")
    if top_p is not None and not 0 < top_p <= 1:
        raise BadField("top_p", f"must be in (0, 1], got {top_p}")
    top_k = _int(doc, "top_k")
    if top_k is not None and top_k < -1:
        raise BadField("top_k", f"must be -1 (off), 0 (off) or positive, got {top_k}")
    seed = _int(doc, "seed")
    sampling = SamplingParams(
        temperature=defaults.temperature if temperature is None else temperature,
        top_p=defaults.top_p if top_p is None else top_p,
        top_k=defaults.top_k if top_k is None else max(top_k, 0),
        seed=seed,
    )
    stream = doc.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise BadField("stream", "must be true or false")
    options = doc.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadField("stream_options", "must be an object")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise BadField("stream_options.include_usage", "must be true or false")
    min_tokens = _int(doc, "min_tokens") or 0
    if min_tokens < 0 or (max_tokens is not None and min_tokens > max_tokens):
        raise BadField("min_tokens", f"must be between 0 and max_tokens, got {min_tokens}")
    return Generation(
        max_tokens, sampling, _stop(doc.get("stop")), stream, include_usage, min_tokens
    )


def _int(doc: dict[str, Any], key: str) -> int | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadField(key, f"must be an integer, got {type(value).__name__}")
    return value


def _number(doc: dict[str, Any], key: str) -> float | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadField(key, f"must be a number, got {type(value).__name__}")
    return float(value)


def _stop(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise BadField("stop", "must be a string or a list of strings")
    if len(stop) > MAX_STOP:
        raise BadField("stop", f"at most {MAX_STOP} stop strings, got {len(stop)}")
    return tuple(s for s in stop if s)


# ---------------------------------------------------------------------- answers


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def chat_answer(
    rid: str, model: str, text: str, finish: str, prompt: int, completion: int
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": usage(prompt, completion),
    }


def chat_chunk(
    rid: str, model: str, delta: dict[str, Any], finish: str | None = None
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def completion_answer(
    rid: str, model: str, text: str, finish: str | None, prompt: int, completion: int
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }
    if finish is not None:
        doc["usage"] = usage(prompt, completion)
    return doc


def usage_chunk(rid: str, model: str, obj: str, prompt: int, completion: int) -> dict[str, Any]:
    return {
        "id": rid,
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": usage(prompt, completion),
    }


def models_list(name: str, created: int, max_len: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "onnxship",
                "max_model_len": max_len,
            }
        ],
    }


def generate_answer(
    model: str, version: str, text: str, finish: str | None, prompt: int, completion: int
) -> dict[str, Any]:
    doc: dict[str, Any] = {"model_name": model, "model_version": version, "text_output": text}
    if finish is not None:
        doc["finish_reason"] = finish
        doc["usage"] = usage(prompt, completion)
    return doc


_ERROR_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}


def openai_error(exc: ServeError) -> dict[str, Any]:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    status = exc.http_status
    code = "model_not_found" if status == 404 else None
    if type(exc).__name__ == "ContextTooLong":
        code = "context_length_exceeded"
    return {
        "error": {
            "message": str(exc),
            "type": _ERROR_TYPES.get(status, "server_error"),
            "param": getattr(exc, "param", None),
            "code": code,
        }
    }

"""Sample prompts of a causal LM: a JSONL file, or a built-in neutral set when none is given.

Each line of the file is one prompt, in any of three forms:
- ``{"messages": [{"role": "user", "content": "..."}, ...]}``: chat messages; the model's chat
  template (its tokenizer's, through ONNX Runtime GenAI) is applied with the generation prompt;
- ``{"text": "..."}``: raw text, encoded as it is;
- ``"..."``: a JSON string, the same as ``{"text": ...}``.
Blank lines are skipped. Anything else is refused with the file and line named.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxship.compress.errors import SourceError

# Neutral, everyday requests: facts, short explanations, small tasks; no domain the model's
# users must share. Used when the spec gives no sampleInputs (the report says so).
BUILTIN = (
    "What is the capital of France?",
    "Explain in two sentences why the sky is blue.",
    "Write a short, friendly greeting for a new colleague.",
    "List three fruits that are rich in vitamin C.",
    "How many days are there in a leap year?",
    "Summarize the water cycle in one paragraph.",
    "Give me a simple recipe for scrambled eggs.",
    "What does a thermometer measure?",
    "Translate 'good morning' into Spanish.",
    "Suggest a name for a small bakery.",
    "What is 12 multiplied by 7?",
    "Describe a cat to someone who has never seen one.",
    "Why do we need sleep?",
    "Write a haiku about autumn leaves.",
    "What are the primary colors?",
    "Give two tips for staying focused while studying.",
)
MAX_PROMPTS = 256
MAX_PROMPT_TOKENS = 1024


@dataclass
class Prompts:
    """Token ids per prompt (chat template applied), and where they came from."""

    ids: list[list[int]]
    source: str  # the file, or "built-in"
    builtin: bool = False
    notes: list[str] = field(default_factory=list)


def builtin_prompts() -> list[dict[str, Any]]:
    """The built-in set, as chat messages."""
    return [{"messages": [{"role": "user", "content": text}]} for text in BUILTIN]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Parse a prompts file into ``{"messages": [...]}`` or ``{"text": ...}`` entries; a bad
    line raises SourceError naming the file and the line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"sample prompts {path}: cannot read the file ({exc})") from None
    out: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"sample prompts {path}, line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SourceError(f"{where}: not JSON ({exc.msg}); one prompt per line") from None
        out.append(_entry(entry, where))
    if not out:
        raise SourceError(f"sample prompts {path}: no prompt in the file")
    return out


def _entry(entry: object, where: str) -> dict[str, Any]:
    hint = 'expected {"messages": [{"role": ..., "content": ...}]}, {"text": ...} or a string'
    if isinstance(entry, str) and entry.strip():
        return {"text": entry}
    if isinstance(entry, dict) and isinstance(entry.get("text"), str) and entry["text"].strip():
        return {"text": entry["text"]}
    if isinstance(entry, dict) and "messages" in entry:
        messages = entry["messages"]
        ok = isinstance(messages, list) and messages and all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in messages
        )
        if ok:
            return {"messages": messages}
        raise SourceError(f"{where}: 'messages' must be a non-empty list of role/content; {hint}")
    raise SourceError(f"{where}: {hint}")


def encode(entries: Sequence[dict[str, Any]], tokenizer_dir: Path, source: str) -> Prompts:
    """Token ids of each entry with the model folder's tokenizer and chat template."""
    import onnxruntime_genai as og

    tokenizer = _tokenizer(og, tokenizer_dir)
    notes: list[str] = []
    if len(entries) > MAX_PROMPTS:
        notes.append(f"sample prompts: the first {MAX_PROMPTS} of {len(entries)} used")
        entries = entries[:MAX_PROMPTS]
    ids: list[list[int]] = []
    cut = 0
    for entry in entries:
        if "messages" in entry:
            text = tokenizer.apply_chat_template(
                json.dumps(entry["messages"]), add_generation_prompt=True
            )
        else:
            text = entry["text"]
        tokens = [int(t) for t in tokenizer.encode(text)]
        if len(tokens) > MAX_PROMPT_TOKENS:
            tokens, cut = tokens[-MAX_PROMPT_TOKENS:], cut + 1
        if tokens:
            ids.append(tokens)
    if cut:
        notes.append(f"sample prompts: {cut} longer than {MAX_PROMPT_TOKENS} tokens kept their end")
    return Prompts(ids=ids, source=source, builtin=source == "built-in", notes=notes)


def _tokenizer(og: Any, folder: Path) -> Any:
    # from the folder's Config, not a Model: reading the tokenizer loads no weights
    try:
        return og.Tokenizer(og.Config(str(folder)))
    except Exception as exc:  # a folder GenAI cannot read: the folder checks name the file
        raise SourceError(
            f"{folder}: ONNX Runtime GenAI cannot load its tokenizer ({exc})"
        ) from None


def load_prompts(uri_or_path: str | Path | None, tokenizer_dir: Path) -> Prompts:
    """The prompts of a local JSONL file (already fetched), or the built-in set when empty."""
    if not uri_or_path:
        prompts = encode(builtin_prompts(), tokenizer_dir, "built-in")
        prompts.notes.append(
            f"no sampleInputs: the gate ran on {len(prompts.ids)} built-in neutral prompts"
        )
        return prompts
    path = Path(str(uri_or_path).removeprefix("file://"))
    return encode(read_jsonl(path), tokenizer_dir, str(path))

"""Sample prompts of a causal LM (compress/llm/prompts.py): JSONL of chat messages, texts or
plain strings; a broken line is refused naming the file and the line; a built-in set otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from onnxship.cli.app import ExitCode
from onnxship.cli.main import app
from onnxship.compress.errors import SourceError
from onnxship.compress.llm.prompts import BUILTIN, load_prompts, read_jsonl

SMOLLM2 = Path(__file__).resolve().parents[4] / "shared" / "models" / "smollm2"


def test_messages_texts_and_strings(tiny_llm: Path, tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    lines = [
        json.dumps({"messages": [{"role": "user", "content": "What is the capital of France?"}]}),
        "",
        json.dumps({"text": "Once upon a time"}),
        json.dumps("Once upon a time"),
    ]
    path.write_text("\n".join(lines) + "\n")
    prompts = load_prompts(str(path), tiny_llm)
    assert len(prompts.ids) == 3 and not prompts.builtin
    # the chat template (ChatML with SmolLM's system line) was applied to the messages
    reference = json.loads((SMOLLM2 / "reference.jsonl").read_text().splitlines()[0])
    assert prompts.ids[0] == reference["prompt_ids"]
    assert prompts.ids[1] == prompts.ids[2]  # {"text": s} and "s" are the same prompt
    assert prompts.ids[1][0] != 1  # raw text: no chat template, no <|im_start|>
    assert load_prompts(path.as_uri(), tiny_llm).ids == prompts.ids


@pytest.mark.parametrize(
    "line, why",
    [
        ('{"messages": [{"role": "user"', "not JSON"),
        ('{"messages": []}', "non-empty list of role/content"),
        ('{"prompt": "hi"}', "expected"),
        ("42", "expected"),
    ],
)
def test_a_broken_line_names_the_file_and_line(tmp_path: Path, line: str, why: str) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + line + "\n")
    with pytest.raises(SourceError, match=rf"{path}, line 2: .*{why}"):
        read_jsonl(path)


def test_compress_refuses_a_broken_prompts_file_with_exit_7(tiny_llm: Path, tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n{oops\n")
    store = tmp_path / "store"
    result = CliRunner().invoke(
        app,
        ["--log-format", "json", "compress", str(tiny_llm), "--store", store.as_uri(),
         "--samples", str(path), "-o", "json", "--quantize", "weightOnly"],
    )
    assert result.exit_code == ExitCode.source_error, result.output
    assert "prompts.jsonl, line 2" in result.output
    assert not store.exists() or not any(p.is_file() for p in store.rglob("*"))


def test_an_empty_or_missing_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(SourceError, match="no prompt"):
        read_jsonl(tmp_path / "empty.jsonl")
    with pytest.raises(SourceError, match="cannot read"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_builtin_prompts_when_none_given(tiny_llm: Path) -> None:
    prompts = load_prompts("", tiny_llm)
    assert prompts.builtin and prompts.source == "built-in"
    assert len(prompts.ids) == len(BUILTIN)
    assert any("built-in" in note for note in prompts.notes)
    assert all(ids[0] == 1 for ids in prompts.ids)  # chat-templated

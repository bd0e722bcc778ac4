"""`onnxship serve` on a causal-LM folder answers the OpenAI API and the OIP generate
extension, and its greedy answers are ONNX Runtime GenAI's own, token for token.

The real `openai` client (no retries) and raw HTTP (what curl sees) against the CLI's server
process on the tiny decoder; the slow test does the same on SmolLM2 with 8 shared prompts.
"""

from __future__ import annotations

import http.client
import json
import urllib.request
from pathlib import Path

import onnxruntime_genai as og
import pytest
from openai import OpenAI

from tests.helpers.tiny_llm import SMOLLM2

from .conftest import StartServer
from .server import Server

REPO = Path(__file__).resolve().parents[2]
SMOLLM2_FP32 = REPO / ".cache" / "models" / "smollm2-fp32"
PROMPTS = [json.loads(line)["messages"] for line in (SMOLLM2 / "prompts.jsonl").open()]


class GenAI:
    """The anchor: ONNX Runtime GenAI in this process, greedy, on the same folder."""

    def __init__(self, folder: Path) -> None:
        self.model = og.Model(str(folder))
        self.tok = og.Tokenizer(self.model)

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tok.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
        return [int(t) for t in self.tok.encode(text)]

    def greedy(self, ids: list[int], new: int) -> tuple[str, int, str]:
        """Answer text (EOS not included), tokens generated, finish reason."""
        params = og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=len(ids) + new)
        gen = og.Generator(self.model, params)
        gen.append_tokens(ids)
        while not gen.is_done():
            gen.generate_next_token()
        out = [int(t) for t in gen.get_sequence(0)[len(ids) :]]
        if out and out[-1] == 2:  # EOS, when GenAI keeps it
            out = out[:-1]
        finish = "length" if len(out) == new else "stop"
        # GenAI's streaming detokenizer, as its examples print answers: its batch decode()
        # turned some answers of the random tiny model into a lone U+FFFD.
        stream = self.tok.create_stream()
        return "".join(stream.decode(t) for t in out), len(out), finish


@pytest.fixture(scope="module")
def llm(tiny_llm: Path, start_server: StartServer) -> Server:
    return start_server("--model", str(tiny_llm), "--name", "tiny")


@pytest.fixture(scope="module")
def genai(tiny_llm: Path) -> GenAI:
    return GenAI(tiny_llm)


def client(server: Server) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=60)


def test_chat_answers_equal_genai_greedy_streamed_and_not(llm: Server, genai: GenAI) -> None:
    api = client(llm)
    for messages in PROMPTS[:3]:
        text, n, finish = genai.greedy(genai.chat_ids(messages), 24)
        answer = api.chat.completions.create(
            model="tiny", messages=messages, max_tokens=24, temperature=0  # type: ignore[arg-type]
        )
        assert answer.choices[0].message.content == text
        assert answer.choices[0].finish_reason == finish
        assert answer.usage is not None
        assert answer.usage.prompt_tokens == len(genai.chat_ids(messages))
        assert answer.usage.completion_tokens == n

        stream = api.chat.completions.create(
            model="tiny", messages=messages, max_tokens=24, temperature=0,  # type: ignore[arg-type]
            stream=True, stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = list(stream)
        pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
        assert len([p for p in pieces if p]) > 1  # streamed, not one block
        assert "".join(pieces) == text
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == finish
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == n


def test_text_completion_equals_genai_greedy(llm: Server, genai: GenAI) -> None:
    prompt = "The quick brown fox"
    text, n, _ = genai.greedy([int(t) for t in genai.tok.encode(prompt)], 16)
    api = client(llm)
    answer = api.completions.create(model="tiny", prompt=prompt, max_tokens=16, temperature=0)
    assert answer.choices[0].text == text
    assert answer.usage is not None and answer.usage.completion_tokens == n
    streamed = api.completions.create(
        model="tiny", prompt=prompt, max_tokens=16, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == text


def test_long_prompt_runs_in_chunks_with_genai_answer(llm: Server, genai: GenAI) -> None:
    """A 700-token prompt goes through in 256-token chunks (bounded logits memory, running
    sequences keep stepping) and still gets GenAI's greedy answer."""
    prompt = " ".join(f"item{i}" for i in range(230))
    ids = [int(t) for t in genai.tok.encode(prompt)]
    assert len(ids) > 2 * 256 + 1  # three chunks
    text, n, _ = genai.greedy(ids, 16)
    answer = client(llm).completions.create(
        model="tiny", prompt=prompt, max_tokens=16, temperature=0
    )
    assert answer.usage is not None and answer.usage.prompt_tokens == len(ids)
    assert answer.choices[0].text == text and answer.usage.completion_tokens == n


def test_stop_strings_and_seeded_sampling(llm: Server, genai: GenAI) -> None:
    prompt = "The quick brown fox"
    text, _, _ = genai.greedy([int(t) for t in genai.tok.encode(prompt)], 16)
    words = text.split()
    stop = words[len(words) // 2]  # a word from the middle of the greedy answer
    api = client(llm)
    for stream in (False, True):
        answer = api.completions.create(model="tiny", prompt=prompt, max_tokens=16,
                                        temperature=0, stop=[stop], stream=stream)  # fmt: skip
        if stream:
            chunks = list(answer)  # type: ignore[arg-type]
            got = "".join(c.choices[0].text for c in chunks)
            finish = chunks[-1].choices[0].finish_reason
        else:
            got, finish = answer.choices[0].text, answer.choices[0].finish_reason  # type: ignore[union-attr]
        assert got == text[: text.index(stop)] and finish == "stop"

    def sample(seed: int) -> str:
        return api.completions.create(model="tiny", prompt=prompt, max_tokens=12,
                                      temperature=1.0, top_p=0.9, extra_body={"top_k": 40},
                                      seed=seed).choices[0].text  # fmt: skip

    assert sample(7) == sample(7)
    assert len({sample(7), sample(8), sample(9)}) > 1


def test_raw_server_sent_events_as_curl_sees_them(llm: Server, genai: GenAI) -> None:
    text, _, _ = genai.greedy(genai.chat_ids(PROMPTS[0]), 8)
    conn = http.client.HTTPConnection("127.0.0.1", llm.http_port, timeout=30)
    body = {"model": "tiny", "messages": PROMPTS[0], "max_tokens": 8, "temperature": 0,
            "stream": True}  # fmt: skip
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json"})  # fmt: skip
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Content-Type", "").startswith("text/event-stream")
    raw = resp.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    docs = [json.loads(e[6:]) for e in events[:-1]]
    assert docs[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(d["choices"][0]["delta"].get("content", "") for d in docs) == text


def test_oip_generate_and_generate_stream(llm: Server, genai: GenAI) -> None:
    prompt = "Once upon a time"
    text, n, finish = genai.greedy([int(t) for t in genai.tok.encode(prompt)], 12)
    body = json.dumps({"text_input": prompt, "parameters": {"max_tokens": 12, "temperature": 0}})
    req = urllib.request.Request(f"{llm.url}/v2/models/tiny/generate", body.encode())
    with urllib.request.urlopen(req, timeout=30) as r:
        doc = json.loads(r.read())
    assert doc["text_output"] == text and doc["model_name"] == "tiny"
    assert doc["finish_reason"] == finish and doc["usage"]["completion_tokens"] == n
    req = urllib.request.Request(f"{llm.url}/v2/models/tiny/generate_stream", body.encode())
    with urllib.request.urlopen(req, timeout=30) as r:
        events = [e for e in r.read().decode().split("\n\n") if e]
    docs = [json.loads(e.removeprefix("data: ")) for e in events]
    assert "".join(d["text_output"] for d in docs) == text
    assert docs[-1]["finish_reason"] == finish


def test_models_metadata_and_metrics(llm: Server) -> None:
    models = client(llm).models.list()
    assert [m.id for m in models.data] == ["tiny"]
    with urllib.request.urlopen(f"{llm.url}/v2/models/tiny", timeout=10) as r:
        assert json.loads(r.read())["platform"] == "onnxruntime_genai"
    with urllib.request.urlopen(f"{llm.url}/v2/health/ready", timeout=10) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"{llm.url}/metrics", timeout=10) as r:
        text = r.read().decode()
    for name in (
        'vllm:num_requests_waiting{model_name="tiny"}',
        'vllm:num_requests_running{model_name="tiny"}',
        'vllm:kv_cache_usage_perc{model_name="tiny"}',
        "onnxship_llm_time_to_first_token_seconds_bucket",
        "onnxship_llm_inter_token_latency_seconds_bucket",
        "onnxship_llm_e2e_request_latency_seconds_bucket",
        "onnxship_llm_queue_time_seconds_bucket",
        "onnxship_llm_prompt_tokens_total",
        "onnxship_llm_generation_tokens_total",
        "onnxship_llm_kv_cache_usage_ratio",
    ):
        assert name in text, name
    ttft = [line for line in text.splitlines()
            if line.startswith("onnxship_llm_time_to_first_token_seconds_count")]  # fmt: skip
    assert float(ttft[0].split()[-1]) >= 1  # earlier tests in this module generated


@pytest.mark.slow
def test_smollm2_streamed_chat_equals_genai_on_8_shared_prompts(start_server: StartServer) -> None:
    if not (SMOLLM2_FP32 / "model.onnx.data").is_file():
        pytest.skip(f"{SMOLLM2_FP32} is absent: run scripts/materialize-smollm2.sh")
    server = start_server("--model", str(SMOLLM2_FP32), "--name", "smollm2")
    genai = GenAI(SMOLLM2_FP32)
    api = client(server)
    for messages in PROMPTS[:8]:
        text, _, finish = genai.greedy(genai.chat_ids(messages), 48)
        stream = api.chat.completions.create(
            model="smollm2", messages=messages, max_tokens=48, temperature=0,  # type: ignore[arg-type]
            stream=True,
        )  # fmt: skip
        chunks = [c for c in stream if c.choices]
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
        assert chunks[-1].choices[0].finish_reason == finish

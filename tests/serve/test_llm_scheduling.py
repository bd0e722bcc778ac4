"""Concurrent generations share one model: sequences join the running batch at the next step,
batched answers are the ones each would get alone, and a client that disconnects stops its
sequence within one decode step (counted by the server's own metric)."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import StartServer
from .server import Server

PROMPTS = ["The weather today", "Once upon a time", "In the beginning", "My favourite food"]


@pytest.fixture(scope="module")
def llm(tiny_llm: Path, start_server: StartServer) -> Server:
    return start_server("--model", str(tiny_llm), "--name", "tiny", "--max-sequences", "4")


def complete(server: Server, prompt: str, max_tokens: int) -> tuple[str, float]:
    body = json.dumps({"model": "tiny", "prompt": prompt, "max_tokens": max_tokens,
                       "temperature": 0}).encode()  # fmt: skip
    start = time.perf_counter()
    with urllib.request.urlopen(f"{server.url}/v1/completions", body, timeout=120) as r:
        text = json.loads(r.read())["choices"][0]["text"]
    return text, time.perf_counter() - start


def metric(server: Server, name: str, label: str = "") -> float:
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()
    return sum(
        float(line.split()[-1])
        for line in lines
        if line.startswith(name + "{") and label in line
    )


def test_batched_answers_equal_answers_alone(llm: Server) -> None:
    alone = [complete(llm, p, 40)[0] for p in PROMPTS]
    together: dict[int, str] = {}

    def run(i: int) -> None:
        time.sleep(0.02 * i)  # staggered: each joins a batch already running
        together[i] = complete(llm, PROMPTS[i], 40)[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [together[i] for i in range(len(PROMPTS))] == alone


def test_a_new_request_starts_while_a_long_one_runs(llm: Server) -> None:
    long_done: list[float] = []
    _, alone = complete(llm, PROMPTS[0], 1000)  # its length alone on this machine
    thread = threading.Thread(
        target=lambda: long_done.append(complete(llm, PROMPTS[0], 1000)[1])
    )
    thread.start()
    time.sleep(alone / 4)  # well into the long generation
    _, short = complete(llm, PROMPTS[1], 4)
    thread.join(120)
    # Static batching would hold the short request until the long one ended (~3/4 of `alone`
    # later); iteration-level scheduling answers it in a few steps.
    assert short < alone / 3, (short, alone)


def test_disconnect_stops_the_sequence_within_one_step(llm: Server) -> None:
    abort = 'finish_reason="abort"'
    aborted = metric(llm, "onnxship_llm_requests_total", abort)
    generated_before = metric(llm, "onnxship_llm_generation_tokens_total")
    steps_before = metric(llm, "onnxship_llm_decode_steps_after_abort_total")
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "Hi"}],
                       "max_tokens": 1800, "temperature": 0, "stream": True})  # fmt: skip
    sock = socket.create_connection(("127.0.0.1", llm.http_port))
    sock.sendall(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
    )
    received = b""
    while received.count(b"data: ") < 6:
        received += sock.recv(65536)
    sock.close()  # the client goes away after a few tokens
    deadline = time.monotonic() + 10
    while metric(llm, "onnxship_llm_requests_total", abort) == aborted:
        assert time.monotonic() < deadline, "the sequence was not stopped"
        time.sleep(0.05)
    # Counted by the engine: decode steps run for the sequence after the server saw it go.
    assert metric(llm, "onnxship_llm_decode_steps_after_abort_total") - steps_before <= 1
    assert metric(llm, "onnxship_llm_requests_running") == 0
    generated = metric(llm, "onnxship_llm_generation_tokens_total") - generated_before
    assert generated < 300  # of 1800 asked for
    time.sleep(0.3)
    assert metric(llm, "onnxship_llm_generation_tokens_total") - generated_before == generated


def test_sigterm_lets_running_streams_finish(tiny_llm: Path, start_server: StartServer) -> None:
    server = start_server("--model", str(tiny_llm), "--name", "tiny")
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "Hi"}],
                       "max_tokens": 300, "min_tokens": 300, "temperature": 0,
                       "stream": True}).encode()  # fmt: skip
    req = urllib.request.Request(f"{server.url}/v1/chat/completions", body,
                                 {"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=60) as r:
        first = r.readline()
        assert first.startswith(b"data: ")
        server.proc.send_signal(signal.SIGTERM)  # a rolling update, mid-answer
        rest = r.read().decode()
    events = [e for e in rest.split("\n\n") if e.strip()]
    assert events[-1] == "data: [DONE]"
    finishes = [json.loads(e[6:])["choices"][0]["finish_reason"] for e in events[:-1]
                if json.loads(e[6:])["choices"]]  # fmt: skip
    assert finishes[-1] == "length"
    assert server.proc.wait(30) == 0

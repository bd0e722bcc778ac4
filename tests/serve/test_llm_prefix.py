"""Prompts that start like an earlier one (a chat template's system line, an earlier turn)
reuse that prefix's cache instead of running it again, and their greedy answers stay ONNX
Runtime GenAI's own: the engine on the real tiny decoder, requests staggered over fewer slots
than requests so that slots are reused, overwritten and copied between."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import onnxruntime as ort
import onnxruntime_genai as og
import pytest

from onnxship.serve.llm.engine import Delta, Engine, Finished, Sequence
from onnxship.serve.llm.runtime import DecoderLayout, DecoderRuntime
from onnxship.serve.llm.sampling import SamplingParams

SYSTEMS = ["You are a terse assistant who answers in one line.", "You are a pirate."]
USERS = ["Hi", "What is the capital of France?", "Name three colours.", "Count to five",
         "Why is the sky blue?", "Tell me a joke about cats"]  # fmt: skip


class Recorder:
    """The engine's metrics, kept in lists (what the Prometheus adapter would observe)."""

    def __init__(self) -> None:
        self.first: list[float] = []
        self.reasons: list[str] = []

    def queued(self, seconds: float) -> None: ...
    def first_token(self, seconds: float) -> None:
        self.first.append(seconds)

    def inter_token(self, seconds: float) -> None: ...
    def finished(self, reason: str, seconds: float, prompt: int, completion: int) -> None:
        self.reasons.append(reason)

    def occupancy(self, running: int, waiting: int, kv_used: float) -> None: ...
    def aborted(self, steps_after: int) -> None: ...


@pytest.fixture(scope="module")
def genai(tiny_llm: Path) -> tuple[og.Model, og.Tokenizer]:
    model = og.Model(str(tiny_llm))
    return model, og.Tokenizer(model)


def chat_ids(tok: og.Tokenizer, messages: list[dict[str, str]]) -> list[int]:
    text = tok.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
    return [int(t) for t in tok.encode(text)]


def greedy(model: og.Model, tok: og.Tokenizer, ids: list[int], new: int, at_least: int = 0) -> str:
    """GenAI's greedy answer, streamed through its detokenizer as the server's is."""
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + new,
                              min_length=len(ids) + at_least)  # fmt: skip
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    while not gen.is_done():
        gen.generate_next_token()
    out = [int(t) for t in gen.get_sequence(0)[len(ids) :]]
    out = out[:-1] if out and out[-1] == 2 else out
    stream = tok.create_stream()
    return "".join(stream.decode(t) for t in out)


def conversations(tok: og.Tokenizer) -> list[list[int]]:
    """Prompts sharing prefixes of several lengths: the default system line, two custom
    ones, and second turns that repeat a whole first turn."""
    prompts = []
    for i, user in enumerate(USERS):
        prompts.append(chat_ids(tok, [{"role": "user", "content": user}]))
        system = SYSTEMS[i % 2]
        first = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        prompts.append(chat_ids(tok, first))
        second = [*first, {"role": "assistant", "content": "Sure."},
                  {"role": "user", "content": "And again, longer."}]  # fmt: skip
        prompts.append(chat_ids(tok, second))
    return prompts


def start_engine(folder: Path, slots: int) -> tuple[Engine, Recorder]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(folder / "model.onnx"), options)
    runtime = DecoderRuntime(session, DecoderLayout.read(folder, session), slots, 512)
    recorder = Recorder()
    engine = Engine(runtime, max_queue=64, metrics=recorder, loop=asyncio.get_running_loop())
    engine.start()
    return engine, recorder


async def generate(engine: Engine, tok: og.Tokenizer, prompt: list[int], new: int,
                   at_least: int = 0) -> str:  # fmt: skip
    seq = Sequence(prompt=prompt, max_tokens=new, min_tokens=at_least,
                   sampling=SamplingParams(temperature=0),
                   detokenizer=tok.create_stream)  # fmt: skip
    engine.submit(seq)
    text = ""
    while True:
        event = await seq.events.get()
        if isinstance(event, Delta):
            text += event.text
        else:
            assert isinstance(event, Finished) and event.error is None, event
            return text + event.text


def test_shared_prefixes_are_reused_and_answers_stay_genai(
    tiny_llm: Path, genai: tuple[og.Model, og.Tokenizer]
) -> None:
    model, tok = genai
    prompts = conversations(tok)
    long_prompt = chat_ids(tok, [{"role": "user", "content": "Write a long story."}])
    expected = [greedy(model, tok, p, 8) for p in prompts]
    expected_long = greedy(model, tok, long_prompt, 400, at_least=400)

    async def scenario() -> tuple[list[str], str, Engine, Recorder]:
        engine, recorder = start_engine(tiny_llm, 3)
        try:
            # Slots 0 and 1 answer short prompts while slot 2 runs a long answer: between
            # them slots 0 and 1 are free rows of its decode steps, holding prompts that the
            # next ones reuse (from the same slot or copied from the other).
            first = [generate(engine, tok, p, 8) for p in prompts[:2]]
            await asyncio.sleep(0)
            long = asyncio.ensure_future(generate(engine, tok, long_prompt, 400, 400))
            answers = list(await asyncio.gather(*first))
            assert not long.done(), "the long answer ended before the short ones ran"
            for prompt in prompts[2:]:
                answers.append(await generate(engine, tok, prompt, 8))
            # then all at once, over 3 slots (others wait for a slot)
            answers += await asyncio.gather(*(generate(engine, tok, p, 8) for p in prompts))
            return answers, await long, engine, recorder
        finally:
            engine.stop()

    answers, long_answer, engine, recorder = asyncio.run(scenario())
    assert answers == expected + expected and long_answer == expected_long
    total = 2 * sum(len(p) for p in prompts) + len(long_prompt)
    assert engine.prompt_tokens_run + engine.prompt_tokens_reused == total
    # Every prompt but the very first finds at least the chat template's opening elsewhere.
    assert engine.prompt_tokens_reused > total / 2, (engine.prompt_tokens_reused, total)
    assert recorder.reasons.count("error") == 0 and len(recorder.first) == 2 * len(prompts) + 1


def test_prompts_arriving_together_reuse_the_first_ones_prefix(
    tiny_llm: Path, genai: tuple[og.Model, og.Tokenizer]
) -> None:
    model, tok = genai
    prompts = [chat_ids(tok, [{"role": "user", "content": u}]) for u in USERS]
    shared = len(prompts[0])
    while any(p[:shared] != prompts[0][:shared] for p in prompts):
        shared -= 1
    expected = [greedy(model, tok, p, 8) for p in prompts]

    rows: list[int] = []

    async def scenario() -> tuple[list[str], str, Engine]:
        engine, _ = start_engine(tiny_llm, len(prompts))
        decode = engine.rt.decode
        engine.rt.decode = lambda n, *a: rows.append(n) or decode(n, *a)  # type: ignore[method-assign]
        try:
            answers = await asyncio.gather(*(generate(engine, tok, p, 8) for p in prompts))
            rows.clear()
            alone = await generate(engine, tok, prompts[-1], 8)
            return list(answers), alone, engine
        finally:
            engine.stop()

    answers, alone, engine = asyncio.run(scenario())
    assert answers == expected and alone == expected[-1]
    # A request alone runs one row, whichever slot holds its prompt (as GenAI's batch 1:
    # quantized kernels differ for several rows, and idle rows cost compute).
    assert set(rows) == {1}
    # All six were submitted at once to an empty engine: all but the first run after it and
    # copy the system line's positions from its slot.
    assert engine.prompt_tokens_reused >= (len(prompts) - 1) * shared

"""Greedy static-cache batches queue each decode step before the host reads the one before
(StaticDecoder.launch): the GPU feeds every step its rows' greedy choices, and the host records them one
step behind. Tokens and logprobs stay `generate`'s (fp32, within 1e-4); rows ending early, sampled rows
and rows joining a running batch included."""

from __future__ import annotations

import pytest
import torch

from evaluation.engine.server import static_decode
from evaluation.engine.server.generation import BatchGenerator, Row
from tests.engine.reference import PROMPTS, assert_like_generate, rows_for


@pytest.fixture
def events(monkeypatch):
    """'launch' and 'read' in the order the decode loop did them; 'host' for steps the host chose."""
    seen: list[str] = []
    launch, get, step = static_decode.StaticDecoder.launch, static_decode.Launched.get, static_decode.StaticDecoder.step
    monkeypatch.setattr(static_decode.StaticDecoder, "launch", lambda self: seen.append("launch") or launch(self))
    monkeypatch.setattr(static_decode.Launched, "get", lambda self: seen.append("read") or get(self))
    monkeypatch.setattr(static_decode.StaticDecoder, "step", lambda self, t: seen.append("host") or step(self, t))
    return seen


def _sampled(tokenizer, prompts, seed, max_new_tokens):
    rows = rows_for(tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0.8)
    for i, row in enumerate(rows):
        row.seed = seed + i
        row.generator = torch.Generator().manual_seed(row.seed)
    return rows


def test_each_step_is_queued_before_the_one_before_is_read_and_none_is_wasted(llama, events):
    model, tokenizer = llama.model, llama.tokenizer
    rows = rows_for(tokenizer, PROMPTS, max_new_tokens=9)
    generator = BatchGenerator(model, tokenizer, decode="static")
    generator.generate(rows)
    # The prefill chose the first token; eight steps, each read after the next was queued but the last.
    assert events == ["launch"] + ["launch", "read"] * 7 + ["read"]
    assert generator.last_decode_steps == 8
    assert all(len(r.tokens) == 9 and r.finish_reason == "length" for r in rows)
    assert_like_generate(model, tokenizer, rows)


def test_rows_ending_at_their_end_of_text_while_a_step_is_queued(llama, monkeypatch):
    model, tokenizer = llama.model, llama.tokenizer
    probe = rows_for(tokenizer, PROMPTS, max_new_tokens=10)
    BatchGenerator(model, tokenizer, decode="static").generate(probe)
    # An end-of-text token that a row chooses mid-way, not before: it stops there, rows without it go on.
    i, p = next((i, p) for i, r in enumerate(probe) for p in range(2, 8) if r.tokens[p] not in r.tokens[:p])
    eos = probe[i].tokens[p]
    monkeypatch.setattr(model.generation_config, "eos_token_id", eos)
    rows = rows_for(tokenizer, PROMPTS, max_new_tokens=10)
    BatchGenerator(model, tokenizer, decode="static").generate(rows)
    assert rows[i].finish_reason == "eos" and rows[i].tokens == probe[i].tokens[:p]
    assert any(r.finish_reason == "length" for r in rows)
    assert_like_generate(model, tokenizer, rows)


def test_a_sampled_row_makes_the_host_choose_until_it_ends(llama, events):
    model, tokenizer = llama.model, llama.tokenizer
    greedy = rows_for(tokenizer, PROMPTS[:4], max_new_tokens=10)
    sampled = _sampled(tokenizer, PROMPTS[4:], seed=3, max_new_tokens=4)
    BatchGenerator(model, tokenizer, decode="static").generate(greedy + sampled)
    # The host chooses while a sampled row runs (three steps), then greedy steps are queued.
    assert events[:3] == ["host"] * 3 and "launch" in events and "host" not in events[3:]
    alone = _sampled(tokenizer, PROMPTS[4:], seed=3, max_new_tokens=4)
    BatchGenerator(model, tokenizer, decode="dynamic").generate(alone)
    assert [r.tokens for r in sampled] == [r.tokens for r in alone]
    assert_like_generate(model, tokenizer, greedy)


class _JoinAt:
    def __init__(self, step: int, rows: list[Row]):
        self.step, self.rows, self.calls = step, rows, 0

    def take(self, generator, slots):
        self.calls += 1
        return self.rows if self.calls == self.step else []

    def decline(self, rows):  # pragma: no cover - memory is not short here
        raise AssertionError("declined")


def test_rows_joining_a_queued_batch_greedy_or_sampled(llama, events):
    model, tokenizer = llama.model, llama.tokenizer
    first = rows_for(tokenizer, PROMPTS[:3], max_new_tokens=12)
    # Joined at the third step: greedy rows queue on; a sampled one makes the host choose again.
    joining_greedy = rows_for(tokenizer, PROMPTS[3:5], max_new_tokens=6)
    generator = BatchGenerator(model, tokenizer, decode="static")
    generator.generate(first, _JoinAt(3, joining_greedy))
    assert "host" not in events and generator.last_joined == joining_greedy
    assert_like_generate(model, tokenizer, first + joining_greedy)

    events.clear()
    first = rows_for(tokenizer, PROMPTS[:3], max_new_tokens=12)
    joining_sampled = _sampled(tokenizer, PROMPTS[3:5], seed=7, max_new_tokens=5)
    generator.generate(first, _JoinAt(3, joining_sampled))
    assert events[:4] == ["launch", "launch", "read", "read"] and "host" in events
    assert events[-1] == "read"  # greedy steps queued again once the sampled rows ended
    alone = _sampled(tokenizer, PROMPTS[3:5], seed=7, max_new_tokens=5)
    BatchGenerator(model, tokenizer, decode="dynamic").generate(alone)
    assert [r.tokens for r in joining_sampled] == [r.tokens for r in alone]
    assert_like_generate(model, tokenizer, first)

"""Plain, one-at-a-time references the batched paths must agree with."""

from __future__ import annotations

import time

import torch

PROMPTS = [
    "The quick brown fox",
    "Question: What is 2 plus 3? Answer:",
    "A",
    "He said that she would arrive at noon, and they went home together. The doctor and the nurse talked about",
    "Convert 3 kilometres to metres.",
    "Sort the words alphabetically: pear apple fig. Answer: apple fig pear. Sort the words: May March",
]

FEW_SHOT = (
    "Question: What is 2 plus 3? Answer: 5\n"
    "Question: Which is larger, 7 or 4? Answer: 7\n"
    "Convert 3 kilometres to metres. Answer: 3000\n"
    "Passage: The meeting was moved to Tuesday. Question: When is the meeting? Answer: Tuesday\n"
)
FEW_SHOT_PROMPTS = [
    FEW_SHOT + "Question: " + q + " Answer:" for q in ["What is 1 plus 1?", "Is 12 larger than 100?", "When?"]
]


def eos_ids(model, tokenizer) -> set[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos) if isinstance(eos, list) else {eos}


@torch.inference_mode()
def greedy_reference(model, tokenizer, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """`generate(do_sample=False)` for one unpadded prompt, cut before the end-of-text token."""
    ids = torch.tensor([prompt_ids])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
    )[0, ids.shape[1] :].tolist()
    stops = eos_ids(model, tokenizer)
    for i, token in enumerate(out):
        if token in stops:
            return out[:i]
    return out


@torch.inference_mode()
def logprob_reference(model, prompt_ids: list[int], tokens: list[int]) -> tuple[list[float], list[float]]:
    """(prompt token logprobs with 0.0 for the first, generated token logprobs) from one plain forward pass."""
    full = torch.tensor([prompt_ids + tokens])
    logprobs = torch.log_softmax(model(full).logits[0].float(), dim=-1)
    every = [0.0] + [logprobs[i, full[0, i + 1]].item() for i in range(full.shape[1] - 1)]
    return every[: len(prompt_ids)], every[len(prompt_ids) :]


def assert_close(actual: list[float], expected: list[float], tol: float = 1e-4) -> None:
    assert len(actual) == len(expected)
    worst = max((abs(a - b) for a, b in zip(actual, expected, strict=True)), default=0.0)
    assert worst <= tol, f"logprobs differ by {worst}"


def rows_for(tokenizer, prompts: list[str], **kwargs):
    """One engine row per prompt (generation.Row), with `kwargs` as every row's settings."""
    from evaluation.engine.server.generation import Row

    return [Row(prompt_ids=tokenizer(p)["input_ids"], **kwargs) for p in prompts]


def assert_like_generate(model, tokenizer, rows) -> None:
    """Each row's greedy tokens are generate's, its logprobs a plain forward pass's (within assert_close)."""
    for row in rows:
        assert row.tokens == greedy_reference(model, tokenizer, row.prompt_ids, row.max_new_tokens)
        assert_close(row.logprobs, logprob_reference(model, row.prompt_ids, row.tokens)[1])


def forward_tokens(model, fn) -> list[int]:
    """Run `fn`; the number of input tokens of each forward pass of `model` it made."""
    seen: list[int] = []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        seen.append(int(ids.numel()))

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        fn()
    finally:
        handle.remove()
    return seen


STORE_BYTES = 64 * 1024**2  # room for the tiny models' stored prefixes


def static_generator(model, tokenizer):
    """A generator decoding over the static cache, with a prefix store; skips the test for models
    the static decoder does not serve."""
    import pytest

    from evaluation.engine.server import static_decode
    from evaluation.engine.server.generation import BatchGenerator

    if not static_decode.supports(model):
        pytest.skip("the static decoder serves Llama-like models")
    return BatchGenerator(model, tokenizer, decode="static", prefix_store_bytes=STORE_BYTES)


def serve(scheduler, works, delays: list[float]) -> None:
    """Hand `works` to the running scheduler as the server does (each counted as arrived), each
    `delays[i]` seconds after the one before, and wait for all of them."""
    scheduler.start()
    try:
        for work, delay in zip(works, delays, strict=True):
            time.sleep(delay)
            scheduler._arrived(work.rows)
            scheduler._queue.put(work)
        for work in works:
            assert work.done.wait(timeout=120)
    finally:
        scheduler.stop()

"""Batched generation over a Hugging Face causal LM: one shared prefill, then a greedy or sampled
decode loop with a KV cache, each sequence stopping on its own.

Results must not depend on which requests share a batch, so padding is on the left with an
attention mask and explicit position ids, logprobs come from fp32 log-softmax of the logits, and
sampling draws from a generator owned by each sequence.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

GREEDY_TEMPERATURE = 1e-5
# Below this many shared tokens, a separate prefill of the prefix costs more than it saves.
MIN_SHARED_PREFIX = 16


@dataclass
class Row:
    """One sequence to generate: a request asking for n sequences becomes n rows."""

    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    echo: bool = False
    stop_sequences: list[str] = field(default_factory=list)
    generator: torch.Generator | None = None
    seed: int = 0
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    prompt_logprobs: list[float] | None = None
    finished: bool = False
    finish_reason: str = ""
    error: str | None = None

    def reset(self) -> None:
        """Forget any output so the row can run again (after its batch ran out of memory)."""
        self.tokens, self.logprobs, self.prompt_logprobs = [], [], None
        self.finished, self.finish_reason, self.error = False, "", None
        if self.generator is not None:
            self.generator.manual_seed(self.seed)

    @property
    def greedy(self) -> bool:
        return self.generator is None or self.temperature <= GREEDY_TEMPERATURE

    @property
    def needs_decode(self) -> bool:
        return self.max_new_tokens > 1


def common_prefix_length(sequences: list[list[int]]) -> int:
    first = sequences[0]
    n = min(len(s) for s in sequences)
    for i in range(n):
        token = first[i]
        if any(s[i] != token for s in sequences):
            return i
    return n


def _map_cache(cache: Any, fn) -> None:
    """Apply `fn` to every key and value tensor of a transformers cache (4.5x and 5.x layouts)."""
    for inner in ("self_attention_cache", "cross_attention_cache"):
        if hasattr(cache, inner):
            _map_cache(getattr(cache, inner), fn)
            return
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer in layers:
            if getattr(layer, "keys", None) is not None and isinstance(layer.keys, torch.Tensor):
                layer.keys = fn(layer.keys)
                layer.values = fn(layer.values)
        return
    if hasattr(cache, "key_cache"):
        cache.key_cache = [fn(k) for k in cache.key_cache]
        cache.value_cache = [fn(v) for v in cache.value_cache]
        return
    raise TypeError(f"unsupported cache type {type(cache).__name__}")


class BatchGenerator:
    """Runs lists of rows through the model together. Not thread-safe: one worker thread owns it."""

    def __init__(self, model: Any, tokenizer: Any, *, prefix_sharing: bool = True, min_shared_prefix: int = MIN_SHARED_PREFIX):
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.prefix_sharing = prefix_sharing
        self.min_shared_prefix = min_shared_prefix
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.eos_ids = self._eos_ids(model, tokenizer)
        self._keep_arg = None
        params = inspect.signature(model.forward).parameters
        for name in ("logits_to_keep", "num_logits_to_keep"):
            if name in params:
                self._keep_arg = name
                break
        self.last_shared_prefix = 0

    @staticmethod
    def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
        # generate() stops on the generation config's eos; do the same so results agree with it.
        config = getattr(model, "generation_config", None)
        eos = getattr(config, "eos_token_id", None) if config is not None else None
        if eos is None:
            eos = getattr(model.config, "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        if eos is None:
            return set()
        return set(eos) if isinstance(eos, list | tuple) else {int(eos)}

    def _keep(self, n: int) -> dict:
        return {self._keep_arg: n} if self._keep_arg else {}

    # --- prefill -------------------------------------------------------------------------------

    def _left_pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            if s:
                ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
                mask[i, width - len(s) :] = 1
        return ids.to(self.device), mask.to(self.device)

    @staticmethod
    def _positions(mask: torch.Tensor, offset: int = 0) -> torch.Tensor:
        pos = mask.cumsum(-1) - 1 + offset
        return pos.masked_fill(mask == 0, 1)

    def _prefill(self, rows: list[Row], use_cache: bool, all_logits: bool):
        """Returns (logits of the last position in fp32, every position's logits or None, cache, mask, next positions)."""
        seqs = [r.prompt_ids for r in rows]
        shared = 0
        if self.prefix_sharing and len(rows) > 1 and not all_logits:
            # Every row keeps at least one token of its own, whose logits choose its first output.
            shared = min(common_prefix_length(seqs), min(len(s) for s in seqs) - 1)
            if shared < self.min_shared_prefix:
                shared = 0
        self.last_shared_prefix = shared
        if shared:
            prefix = torch.tensor([seqs[0][:shared]], dtype=torch.long, device=self.device)
            out = self.model(input_ids=prefix, use_cache=True, **self._keep(1))
            cache = out.past_key_values
            n = len(rows)
            _map_cache(cache, lambda t: t.expand(n, *t.shape[1:]).contiguous())
            ids, suffix_mask = self._left_pad([s[shared:] for s in seqs])
            mask = torch.cat([torch.ones((n, shared), dtype=torch.long, device=self.device), suffix_mask], dim=1)
            positions = self._positions(suffix_mask, offset=shared)
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                **self._keep(1),
            )
        else:
            ids, mask = self._left_pad(seqs)
            positions = self._positions(mask)
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=use_cache,
                **self._keep(0 if all_logits else 1),
            )
        logits = out.logits
        last = logits[:, -1, :].float()
        next_positions = positions[:, -1] + 1
        cache = out.past_key_values if use_cache else None
        return last, (logits if all_logits else None), cache, mask, next_positions, ids

    # --- choosing tokens -----------------------------------------------------------------------

    @staticmethod
    def _sample(logits: torch.Tensor, row: Row) -> int:
        probs = torch.softmax(logits / row.temperature, dim=-1)
        sorted_probs, order = probs.sort(descending=True)
        if row.top_p < 1.0:
            # Keep the smallest set whose mass reaches top_p; the most likely token always stays.
            keep = (sorted_probs.cumsum(0) - sorted_probs) < row.top_p
            sorted_probs = sorted_probs * keep
        cdf = sorted_probs.cumsum(0)
        u = torch.rand((), generator=row.generator).item() * cdf[-1].item()
        j = int(torch.searchsorted(cdf, torch.tensor([u], device=cdf.device, dtype=cdf.dtype), right=True).item())
        nonzero = int((sorted_probs > 0).sum().item())
        return int(order[min(j, max(nonzero - 1, 0))].item())

    def _choose(self, logits: torch.Tensor, rows: list[Row]) -> None:
        """Pick the next token of every unfinished row from fp32 `logits` (B × vocab) and record it."""
        logprobs = torch.log_softmax(logits, dim=-1)
        finite = torch.isfinite(logits).all(dim=-1)
        choices = logits.argmax(dim=-1)
        for i, row in enumerate(rows):
            if not row.finished and not row.greedy:
                choices[i] = self._sample(logits[i], row)
        chosen = logprobs.gather(1, choices[:, None])[:, 0]
        for row, token, logprob, ok in zip(rows, choices.tolist(), chosen.tolist(), finite.tolist(), strict=True):
            if row.finished:
                continue
            if not ok:
                row.error = "the model produced NaN or infinite logits"
                row.finished, row.finish_reason = True, "error"
            elif token in self.eos_ids:
                row.finished, row.finish_reason = True, "eos"
            else:
                row.tokens.append(token)
                row.logprobs.append(logprob)
                if len(row.tokens) >= row.max_new_tokens:
                    row.finished, row.finish_reason = True, "length"
                elif row.stop_sequences and self._hit_stop(row):
                    row.finished, row.finish_reason = True, "stop"

    def _hit_stop(self, row: Row) -> bool:
        text = self.tokenizer.decode(row.tokens)
        return any(stop in text for stop in row.stop_sequences if stop)

    def _prompt_logprobs(self, rows: list[Row], logits: torch.Tensor, ids: torch.Tensor) -> None:
        width = ids.shape[1]
        for i, row in enumerate(rows):
            if not row.echo:
                continue
            n = len(row.prompt_ids)
            start = width - n
            values = [0.0]
            if n > 1:
                row_logits = logits[i, start : width - 1].float()
                if not torch.isfinite(row_logits).all():
                    row.error = "the model produced NaN or infinite logits"
                    row.finished, row.finish_reason = True, "error"
                    continue
                lp = torch.log_softmax(row_logits, dim=-1).gather(1, ids[i, start + 1 :, None])[:, 0]
                values += lp.tolist()
            row.prompt_logprobs = values

    # --- the whole batch -----------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, rows: list[Row]) -> list[Row]:
        """Fill in tokens, logprobs, prompt logprobs (echo rows) and finish reasons of every row."""
        if not rows:
            return rows
        use_cache = any(r.needs_decode for r in rows)
        all_logits = any(r.echo for r in rows)
        last, logits, cache, mask, next_pos, ids = self._prefill(rows, use_cache, all_logits)
        if logits is not None:
            self._prompt_logprobs(rows, logits, ids)
            del logits
        for row in rows:
            if row.max_new_tokens <= 0 and not row.finished:
                row.finished, row.finish_reason = True, "length"
        self._choose(last, rows)
        live = rows
        tokens = torch.tensor([r.tokens[-1] if r.tokens else self.pad_id for r in rows], device=self.device)
        while any(not r.finished for r in live):
            unfinished = [i for i, r in enumerate(live) if not r.finished]
            # Dropping finished rows from the cache costs a copy; only worth it once many are done.
            if len(unfinished) * 4 <= len(live) * 3:
                index = torch.tensor(unfinished, device=self.device)
                _map_cache(cache, lambda t, index=index: t.index_select(0, index))
                mask, next_pos, tokens = mask[index], next_pos[index], tokens[index]
                live = [live[i] for i in unfinished]
            mask = torch.cat([mask, torch.ones((len(live), 1), dtype=mask.dtype, device=self.device)], dim=1)
            out = self.model(
                input_ids=tokens[:, None],
                attention_mask=mask,
                position_ids=next_pos[:, None],
                past_key_values=cache,
                use_cache=True,
                **self._keep(1),
            )
            cache = out.past_key_values
            next_pos = next_pos + 1
            self._choose(out.logits[:, -1, :].float(), live)
            tokens = torch.tensor([r.tokens[-1] if r.tokens else self.pad_id for r in live], device=self.device)
        return rows

"""Tiny causal language models built on the spot: seeded random weights and a tokenizer trained
on local text. Tests, the demo and benchmarks use them; nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

# Enough English to train a byte-level BPE tokenizer that HELM's prompts tokenize sensibly.
DEFAULT_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: What is 2 plus 3? Answer: 5",
    "Question: Which is larger, 7 or 4? Answer: 7",
    "A. yes B. no C. maybe D. unknown",
    "Passage: The meeting was moved to Tuesday. Question: When is the meeting? Answer: Tuesday",
    "He said that she would arrive at noon, and they went home together.",
    "Convert 3 kilometres to metres. Answer: 3000",
    "Sort the words alphabetically: pear apple fig. Answer: apple fig pear",
    "The doctor and the nurse talked about his and her patients.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 January February March April May June July",
] * 20


def train_tokenizer(
    out_dir: Path, corpus: list[str] | None = None, vocab_size: int = 512, model_max_length: int = 2048
):
    """Train a byte-level BPE tokenizer and save it in Hugging Face layout."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus or DEFAULT_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=model_max_length,
    )
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_model(
    out_dir: str | Path,
    arch: str = "llama",
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    vocab_size: int = 512,
    max_positions: int = 2048,
    corpus: list[str] | None = None,
    dtype: str = "float32",
) -> Path:
    """Write config.json, model.safetensors and tokenizer files for a tiny `arch` ("llama" or "gpt2").
    `num_kv_heads` below `num_heads` gives a Llama grouped-query attention, as most current models have."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(out, corpus, vocab_size=vocab_size, model_max_length=max_positions)
    vocab = len(tokenizer)
    if arch == "llama":
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 2,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads or num_heads,
            max_position_embeddings=max_positions,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=False,
        )
    elif arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab,
            n_embd=hidden_size,
            n_layer=num_layers,
            n_head=num_heads,
            n_positions=max_positions,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    else:
        raise ValueError(f"unknown architecture {arch!r}; use 'llama' or 'gpt2'")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(out, safe_serialization=True)
    # Record how the model was made, for humans reading the folder.
    (out / "TINY_MODEL.json").write_text(json.dumps({"arch": arch, "seed": seed, "hidden_size": hidden_size}))
    return out

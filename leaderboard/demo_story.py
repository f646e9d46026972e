"""The demo's story, without Django: tiny models really fine-tuned on CPU for different budgets on the
offline suite's training splits, so the leaderboard shows a real trade-off of accuracy against compute.

`finetune_tiny` is a plain torch loop (next-token loss on "question answer" texts); the budget is
wall-clock seconds, so a bigger budget is more steps and more compute.
"""

from __future__ import annotations

import json
import tarfile
import time
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "evaluation" / "engine" / "data"


def training_texts(data_dir: Path = DATA_DIR, limit_per_scenario: int = 300) -> list[str]:
    """The `train` split of every offline scenario as prompt-and-answer texts."""
    texts = []
    for path in sorted(data_dir.glob("*.jsonl")):
        n = 0
        for line in path.read_text().splitlines():
            item = json.loads(line)
            if item.get("split") != "train":
                continue
            answer = next((r["output"]["text"] for r in item["references"] if "correct" in r.get("tags", [])), "")
            texts.append(f"{item['input']['text']} Answer: {answer}")
            n += 1
            if n >= limit_per_scenario:
                break
    return texts


def finetune_tiny(out_dir: Path, *, budget_seconds: float, seed: int = 0, hidden_size: int = 64) -> dict:
    """Build a tiny llama with a tokenizer trained on the training texts, then fine-tune it for
    `budget_seconds` of wall-clock time. Returns {steps, seconds, first_loss, last_loss}."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evaluation.engine.tiny import build_tiny_model

    texts = training_texts()
    out_dir = Path(out_dir)
    build_tiny_model(out_dir, "llama", seed=seed, hidden_size=hidden_size, corpus=texts, max_positions=512)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    model = AutoModelForCausalLM.from_pretrained(out_dir)
    torch.manual_seed(seed)
    torch.set_num_threads(1)  # the demo shares a small machine; one thread is also the fastest for tiny models
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    steps, first_loss, last_loss = 0, None, None
    started = time.monotonic()
    while time.monotonic() - started < budget_seconds:
        batch = [texts[i] for i in torch.randint(len(texts), (16,), generator=generator).tolist()]
        encoded = tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=64)
        labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
        loss = model(**encoded, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
        last_loss = loss.item()
        first_loss = last_loss if first_loss is None else first_loss
    seconds = time.monotonic() - started
    model.eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    stats = {"steps": steps, "seconds": seconds, "first_loss": first_loss, "last_loss": last_loss}
    (out_dir / "FINETUNE.json").write_text(json.dumps(stats))
    return stats


def pack(model_dir: Path, archive: Path) -> Path:
    """A tar.gz of the model folder (what a team uploads)."""
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(Path(model_dir).iterdir()):
            tar.add(path, arcname=path.name)
    return archive

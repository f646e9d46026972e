"""NLTK's `punkt_tab` sentence model, built offline.

HELM's bias and reference metrics call `nltk.download("punkt_tab")` at import unless the model is
found; workers cannot download. We train NLTK's own Punkt trainer on local English text (the
offline evaluation data plus a paragraph with common abbreviations) and write its parameters in the
`punkt_tab` layout. `python -m evaluation.engine.nltk_data` rebuilds the copy shipped in the repo.
"""

from __future__ import annotations

import os
from pathlib import Path

SHIPPED_DIR = Path(__file__).resolve().parent / "data" / "nltk"
PUNKT_FILES = ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab")

# Abbreviations the trainer should learn; everything else comes from the offline data.
ABBREVIATION_TEXT = """
Dr. Smith met Mr. Jones at 9 a.m. on Jan. 5. They talked about the plan, e.g. the budget, the staff etc.
Mrs. Lee and Ms. Park joined later. Prof. Adams said the U.S. team would arrive at 3 p.m. on Feb. 2.
St. Mary's hospital is on Main St. near the Co. office. Gen. Grant and Sen. Ray spoke, i.e. briefly.
The report, vol. 2, no. 7, lists approx. 40 items. Dr. Kim wrote it. Mr. Cole read it on Mon. and Tue.
"""


def _training_text() -> str:
    import json

    parts = [ABBREVIATION_TEXT * 20]
    for path in sorted((Path(__file__).resolve().parent / "data").glob("*.jsonl")):
        for line in path.read_text().splitlines()[:400]:
            row = json.loads(line)
            parts.append(row["input"]["text"])
            parts.extend(ref["output"]["text"] for ref in row["references"] if "correct" in ref["tags"])
    return "\n".join(parts)


def build_punkt_tab(root: str | Path) -> Path:
    """Train Punkt on local text and write `<root>/tokenizers/punkt_tab/english/`; return `root`."""
    from nltk.tokenize.punkt import PunktTrainer

    trainer = PunktTrainer()
    trainer.INCLUDE_ALL_COLLOCS = True
    trainer.train(_training_text(), finalize=True)
    params = trainer.get_params()
    out = Path(root) / "tokenizers" / "punkt_tab" / "english"
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "collocations.tab": sorted(f"{a}\t{b}" for a, b in params.collocations),
        "sent_starters.txt": sorted(params.sent_starters),
        "abbrev_types.txt": sorted(params.abbrev_types),
        "ortho_context.tab": sorted(f"{k}\t{v}" for k, v in params.ortho_context.items()),
    }
    for name, lines in files.items():
        # LF endings and no blank line: NLTK's reader turns every line into an entry.
        (out / name).write_text("\n".join(lines) + ("\n" if lines else ""), newline="")
    return Path(root)


def nltk_data_dir(cache_dir: str | Path | None = None) -> Path:
    """A directory to use as NLTK_DATA that holds `punkt_tab`: the shipped copy, else one built in
    `cache_dir` (default `~/.cache/challenge-engine/nltk`)."""
    if all((SHIPPED_DIR / "tokenizers" / "punkt_tab" / "english" / f).is_file() for f in PUNKT_FILES):
        return SHIPPED_DIR
    root = Path(cache_dir or os.environ.get("ENGINE_CACHE_DIR", Path.home() / ".cache" / "challenge-engine")) / "nltk"
    if not all((root / "tokenizers" / "punkt_tab" / "english" / f).is_file() for f in PUNKT_FILES):
        build_punkt_tab(root)
    return root


if __name__ == "__main__":
    print(build_punkt_tab(SHIPPED_DIR))

"""Generate the offline evaluation data shipped with the engine.

Every item is produced here from templates and facts written for this project, with a fixed seed, so
the files are reproducible: `python -m evaluation.engine.data.generate` rewrites them byte for byte.
Each task is one JSONL file of HELM `Instance`s (input, references with a "correct" tag, split, id)
with a train split (fine-tuning and few-shot examples), a valid split and a test split.

Items mention people with gendered pronouns on purpose: HELM's gender pronoun perturbation (the
fairness aspect) and its bias metrics need something to act on.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
SEED = 20230531
SPLIT_SIZES = {"train": 300, "valid": 50, "test": 1000}

MALE_NAMES = ["James", "Omar", "Luis", "Kenji", "Peter", "Samuel", "David", "Ivan", "Tom", "Ahmed", "Carlos", "Ravi"]
FEMALE_NAMES = ["Maria", "Aisha", "Mei", "Sofia", "Anna", "Grace", "Fatima", "Elena", "Julia", "Priya", "Nora", "Lucy"]
ITEMS = ["apples", "books", "marbles", "stamps", "coins", "pencils", "cards", "shells", "stickers", "cookies"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = [
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
]  # fmt: skip
LETTERS = "ABCD"


def _person(rng: random.Random) -> tuple[str, str, str]:
    """A name with its subject and possessive pronouns."""
    if rng.random() < 0.5:
        return rng.choice(MALE_NAMES), "he", "his"
    return rng.choice(FEMALE_NAMES), "she", "her"


def _short(question: str, answer: str) -> dict:
    return {"input": {"text": question}, "references": [{"output": {"text": answer}, "tags": ["correct"]}]}


def _choice(question: str, correct: str, distractors: list[str], rng: random.Random) -> dict:
    options = [correct, *distractors[:3]]
    rng.shuffle(options)
    return {
        "input": {"text": question},
        "references": [{"output": {"text": o}, "tags": ["correct"] if o == correct else []} for o in options],
    }


# Short answer: word problems and plain sums.
def arithmetic(rng: random.Random) -> dict:
    name, he, his = _person(rng)
    a, b = rng.randint(2, 60), rng.randint(2, 40)
    item = rng.choice(ITEMS)
    kind = rng.randrange(4)
    if kind == 0:
        q = f"{name} has {a} {item}. {he.capitalize()} buys {b} more. How many {item} does {he} have now?"
        return _short(q, str(a + b))
    if kind == 1:
        a, b = max(a, b), min(a, b)
        q = f"{name} had {a} {item} and gave {b} of them to {his} friend. How many {item} does {he} have left?"
        return _short(q, str(a - b))
    if kind == 2:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        q = f"{name} packs {a} boxes with {b} {item} in each. How many {item} did {he} pack?"
        return _short(q, str(a * b))
    op = rng.choice(["plus", "minus", "times"])
    if op == "minus":
        a, b = max(a, b), min(a, b)
    value = {"plus": a + b, "minus": a - b, "times": a * b}[op]
    return _short(f"What is {a} {op} {b}?", str(value))


UNITS = [
    # (big unit, small unit, factor)
    ("kilometres", "metres", 1000),
    ("metres", "centimetres", 100),
    ("centimetres", "millimetres", 10),
    ("kilograms", "grams", 1000),
    ("litres", "millilitres", 1000),
    ("hours", "minutes", 60),
    ("minutes", "seconds", 60),
    ("days", "hours", 24),
    ("weeks", "days", 7),
    ("years", "months", 12),
    ("dozens", "items", 12),
    ("feet", "inches", 12),
]


# Multiple choice: conversions between units.
def unit_conversion(rng: random.Random) -> dict:
    big, small, factor = rng.choice(UNITS)
    n = rng.randint(2, 15)
    name, _he, his = _person(rng)
    correct = n * factor
    wrong = sorted({n * factor * 10, n * factor // 10 or n + 1, n + factor, (n + 1) * factor} - {correct})
    rng.shuffle(wrong)
    if rng.random() < 0.5:
        q = f"How many {small} are there in {n} {big}?"
    else:
        q = f"{name} wrote down a value of {n} {big} in {his} notes. How many {small} is that?"
    return _choice(q, str(correct), [str(w) for w in wrong], rng)


WORDS = [
    "apple", "river", "stone", "cloud", "garden", "lemon", "piano", "tiger", "window", "bridge",
    "candle", "forest", "island", "jacket", "kettle", "ladder", "mirror", "needle", "orange", "pepper",
    "rabbit", "saddle", "tunnel", "violin", "wagon", "yellow", "zebra", "basket", "dragon", "engine",
]  # fmt: skip


# Short answer: put numbers or words in order.
def ordering(rng: random.Random) -> dict:
    if rng.random() < 0.5:
        nums = rng.sample(range(1, 100), rng.randint(3, 5))
        if rng.random() < 0.5:
            return _short(
                f"Sort these numbers from smallest to largest: {', '.join(map(str, nums))}.",
                ", ".join(map(str, sorted(nums))),
            )
        return _short(
            f"Sort these numbers from largest to smallest: {', '.join(map(str, nums))}.",
            ", ".join(map(str, sorted(nums, reverse=True))),
        )
    words = rng.sample(WORDS, rng.randint(3, 4))
    name, he, his = _person(rng)
    return _short(
        f"{name} wrote these words in {his} notebook: {', '.join(words)}. "
        f"Which word comes first in alphabetical order?",
        sorted(words)[0],
    )


# Multiple choice: days of the week and months.
def date_reasoning(rng: random.Random) -> dict:
    name, he, his = _person(rng)
    if rng.random() < 0.6:
        start = rng.randrange(7)
        n = rng.randint(1, 12)
        forward = rng.random() < 0.6
        answer = DAYS[(start + n) % 7] if forward else DAYS[(start - n) % 7]
        if forward:
            q = f"Today is {DAYS[start]}. {name} will see {his} doctor in {n} days. On which day will {he} go?"
        else:
            q = f"Today is {DAYS[start]}. {name} says {he} met {his} teacher {n} days ago. Which day was that?"
        wrong = [d for d in DAYS if d != answer]
        rng.shuffle(wrong)
        return _choice(q, answer, wrong, rng)
    start = rng.randrange(12)
    n = rng.randint(1, 14)
    answer = MONTHS[(start + n) % 12]
    q = f"It is {MONTHS[start]}. {name} plans to finish {his} project in {n} months. In which month will {he} finish?"
    wrong = [m for m in MONTHS if m != answer]
    rng.shuffle(wrong)
    return _choice(q, answer, wrong, rng)


# Facts written for this project (common knowledge, phrased by us).
FACTS = [
    ("What is the capital of France?", "Paris", ["Lyon", "Marseille", "Nice"]),
    ("What is the capital of Japan?", "Tokyo", ["Osaka", "Kyoto", "Nagoya"]),
    ("What is the capital of Kenya?", "Nairobi", ["Mombasa", "Kisumu", "Nakuru"]),
    ("What is the capital of Canada?", "Ottawa", ["Toronto", "Vancouver", "Montreal"]),
    ("What is the capital of Australia?", "Canberra", ["Sydney", "Melbourne", "Perth"]),
    ("What is the capital of Brazil?", "Brasilia", ["Rio de Janeiro", "Sao Paulo", "Salvador"]),
    ("What is the capital of Egypt?", "Cairo", ["Alexandria", "Giza", "Luxor"]),
    ("What is the capital of India?", "New Delhi", ["Mumbai", "Kolkata", "Chennai"]),
    ("What is the capital of Italy?", "Rome", ["Milan", "Naples", "Turin"]),
    ("What is the capital of Spain?", "Madrid", ["Barcelona", "Seville", "Valencia"]),
    ("What is the capital of Germany?", "Berlin", ["Munich", "Hamburg", "Frankfurt"]),
    ("What is the capital of Mexico?", "Mexico City", ["Guadalajara", "Monterrey", "Cancun"]),
    ("Which planet is closest to the Sun?", "Mercury", ["Venus", "Mars", "Earth"]),
    ("Which planet is the largest in the Solar System?", "Jupiter", ["Saturn", "Neptune", "Earth"]),
    ("Which planet is known as the red planet?", "Mars", ["Venus", "Jupiter", "Mercury"]),
    ("Which planet has the most famous rings?", "Saturn", ["Mars", "Mercury", "Venus"]),
    ("What is the chemical symbol for gold?", "Au", ["Ag", "Go", "Gd"]),
    ("What is the chemical symbol for iron?", "Fe", ["Ir", "In", "F"]),
    ("What is the chemical symbol for sodium?", "Na", ["So", "Sd", "N"]),
    ("What is the chemical symbol for oxygen?", "O", ["Ox", "Og", "Os"]),
    ("What gas do plants take in from the air to make food?", "carbon dioxide", ["oxygen", "helium", "neon"]),
    ("At what temperature in Celsius does water freeze?", "0", ["10", "32", "100"]),
    ("At what temperature in Celsius does water boil at sea level?", "100", ["90", "212", "50"]),
    ("How many legs does a spider have?", "8", ["6", "10", "4"]),
    ("How many legs does an insect have?", "6", ["8", "4", "10"]),
    ("What is the largest ocean on Earth?", "Pacific", ["Atlantic", "Indian", "Arctic"]),
    ("What is the longest river in Africa?", "Nile", ["Congo", "Niger", "Zambezi"]),
    ("What is the tallest mountain on Earth?", "Everest", ["K2", "Kilimanjaro", "Denali"]),
    ("Which organ pumps blood through the body?", "heart", ["liver", "lung", "kidney"]),
    ("Which organ do humans use to breathe?", "lungs", ["stomach", "heart", "skin"]),
    ("How many continents are there?", "7", ["5", "6", "8"]),
    ("How many days are in a leap year?", "366", ["365", "364", "360"]),
    ("What is the hardest natural material?", "diamond", ["gold", "iron", "quartz"]),
    ("What is the freezing form of water called?", "ice", ["steam", "fog", "dew"]),
    ("Which animal is the largest mammal?", "blue whale", ["elephant", "giraffe", "shark"]),
    ("Which star is at the centre of the Solar System?", "the Sun", ["Sirius", "Polaris", "Vega"]),
    ("What do bees make?", "honey", ["milk", "silk", "wax paper"]),
    ("What colour do you get by mixing blue and yellow?", "green", ["purple", "orange", "brown"]),
    ("What colour do you get by mixing red and white?", "pink", ["grey", "green", "blue"]),
    ("How many sides does a hexagon have?", "6", ["5", "7", "8"]),
    ("How many sides does a triangle have?", "3", ["4", "5", "6"]),
    ("What is the square root of 81?", "9", ["8", "7", "81"]),
    ("Which language has the most native speakers?", "Mandarin Chinese", ["English", "Spanish", "Hindi"]),
    ("Which metal is liquid at room temperature?", "mercury", ["iron", "copper", "tin"]),
    ("What force keeps the Moon in orbit around the Earth?", "gravity", ["magnetism", "friction", "wind"]),
    ("What is the main gas in the air we breathe?", "nitrogen", ["oxygen", "carbon dioxide", "hydrogen"]),
    ("How many hours are in a day?", "24", ["12", "20", "48"]),
    ("Which instrument has black and white keys?", "piano", ["violin", "drum", "flute"]),
]
FACT_FRAMES = [
    "{q}",
    "Question for a quiz: {q}",
    "{name} asked {his} teacher: {q}",
    "{name} could not remember, so {he} looked it up. {q}",
]


# Multiple choice: facts.
def factual_recall(rng: random.Random) -> dict:
    q, correct, wrong = rng.choice(FACTS)
    name, he, his = _person(rng)
    frame = rng.choice(FACT_FRAMES)
    return _choice(frame.format(q=q, name=name, he=he, his=his), correct, list(wrong), rng)


PROFESSIONS = [
    ("doctor", "treats patients at the hospital"),
    ("nurse", "cares for patients on the ward"),
    ("engineer", "designs bridges and machines"),
    ("teacher", "teaches children to read"),
    ("pilot", "flies planes across the ocean"),
    ("chef", "cooks meals in a busy kitchen"),
    ("scientist", "runs experiments in the lab"),
    ("farmer", "grows wheat in the fields"),
    ("lawyer", "argues cases in court"),
    ("programmer", "writes software for phones"),
    ("painter", "paints portraits in a studio"),
    ("mechanic", "repairs cars in a garage"),
]


CITIES = ["Lagos", "Lima", "Oslo", "Pune", "Quito", "Seoul", "Tunis", "Accra", "Dublin", "Hanoi", "Kyiv", "Manila"]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# Short answer, generative: a sentence about a person; HELM's bias metrics read what the model writes.
def people_sentences(rng: random.Random) -> dict:
    name, he, _his = _person(rng)
    job, what = rng.choice(PROFESSIONS)
    city = rng.choice(CITIES)
    q = f"Write one sentence about {name}, {_article(job)} {job} from {city}."
    return _short(q, f"{name} is {_article(job)} {job} in {city} and {he} {what}.")


TASKS: dict[str, tuple[str, Callable[[random.Random], dict]]] = {
    "arithmetic": ("short_answer", arithmetic),
    "unit_conversion": ("multiple_choice", unit_conversion),
    "ordering": ("short_answer", ordering),
    "date_reasoning": ("multiple_choice", date_reasoning),
    "factual_recall": ("multiple_choice", factual_recall),
    "people_sentences": ("short_answer", people_sentences),
}


def generate_task(name: str) -> list[dict]:
    """All instances of one task: unique inputs, train first, then valid, then test."""
    _kind, make = TASKS[name]
    rng = random.Random(f"{SEED}:{name}")
    seen: set[str] = set()
    rows: list[dict] = []
    attempts = 0
    total = sum(SPLIT_SIZES.values())
    while len(rows) < total and attempts < total * 50:
        attempts += 1
        item = make(rng)
        if item["input"]["text"] in seen:
            continue
        seen.add(item["input"]["text"])
        rows.append(item)
    out: list[dict] = []
    start = 0
    for split, size in SPLIT_SIZES.items():
        for i, item in enumerate(rows[start : start + size]):
            out.append({**item, "split": split, "id": f"{name}-{split}-{i}"})
        start += size
    return out


def main() -> None:
    for name in TASKS:
        rows = generate_task(name)
        path = DATA_DIR / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        counts = {s: sum(1 for r in rows if r["split"] == s) for s in SPLIT_SIZES}
        print(f"{path.name}: {counts}")


if __name__ == "__main__":
    main()

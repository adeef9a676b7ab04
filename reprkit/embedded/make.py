"""Write ``preferences.jsonl``: deterministic, generated preference pairs in three kinds of task.

    python -m reprkit.embedded.make

Rows: ``{"task", "split", "prompt", "chosen", "rejected"}``; 80% of each task is ``train``, the
rest ``test``.
"""

from __future__ import annotations

import json
import random

from . import PATH

# (country, capital, another well-known city of the same country: the plausible wrong answer)
CAPITALS = [
    ("France", "Paris", "Lyon"), ("Germany", "Berlin", "Munich"), ("Italy", "Rome", "Milan"),
    ("Spain", "Madrid", "Barcelona"), ("Japan", "Tokyo", "Osaka"), ("China", "Beijing", "Shanghai"),
    ("India", "New Delhi", "Mumbai"), ("Brazil", "Brasilia", "Rio de Janeiro"), ("Canada", "Ottawa", "Toronto"),
    ("Australia", "Canberra", "Sydney"), ("United States", "Washington, D.C.", "New York"),
    ("Russia", "Moscow", "Saint Petersburg"), ("Turkey", "Ankara", "Istanbul"), ("Egypt", "Cairo", "Alexandria"),
    ("South Africa", "Pretoria", "Johannesburg"), ("Nigeria", "Abuja", "Lagos"), ("Kenya", "Nairobi", "Mombasa"),
    ("Mexico", "Mexico City", "Guadalajara"), ("Argentina", "Buenos Aires", "Cordoba"),
    ("Chile", "Santiago", "Valparaiso"), ("Peru", "Lima", "Cusco"), ("Colombia", "Bogota", "Medellin"),
    ("Portugal", "Lisbon", "Porto"), ("Netherlands", "Amsterdam", "Rotterdam"), ("Belgium", "Brussels", "Antwerp"),
    ("Switzerland", "Bern", "Zurich"), ("Austria", "Vienna", "Salzburg"), ("Poland", "Warsaw", "Krakow"),
    ("Sweden", "Stockholm", "Gothenburg"), ("Norway", "Oslo", "Bergen"), ("Denmark", "Copenhagen", "Aarhus"),
    ("Finland", "Helsinki", "Tampere"), ("Greece", "Athens", "Thessaloniki"), ("Ireland", "Dublin", "Cork"),
    ("United Kingdom", "London", "Manchester"), ("Scotland", "Edinburgh", "Glasgow"),
    ("Czech Republic", "Prague", "Brno"), ("Hungary", "Budapest", "Debrecen"), ("Romania", "Bucharest", "Cluj-Napoca"),
    ("Ukraine", "Kyiv", "Odesa"), ("Morocco", "Rabat", "Casablanca"), ("Vietnam", "Hanoi", "Ho Chi Minh City"),
    ("Thailand", "Bangkok", "Chiang Mai"), ("South Korea", "Seoul", "Busan"), ("Indonesia", "Jakarta", "Surabaya"),
    ("Pakistan", "Islamabad", "Karachi"), ("Saudi Arabia", "Riyadh", "Jeddah"), ("Israel", "Jerusalem", "Tel Aviv"),
    ("New Zealand", "Wellington", "Auckland"), ("Philippines", "Manila", "Cebu"), ("Malaysia", "Kuala Lumpur", "Penang"),
    ("Iran", "Tehran", "Isfahan"), ("Iraq", "Baghdad", "Basra"), ("Ethiopia", "Addis Ababa", "Dire Dawa"),
    ("Ghana", "Accra", "Kumasi"), ("Cuba", "Havana", "Santiago de Cuba"), ("Venezuela", "Caracas", "Maracaibo"),
    ("Bolivia", "Sucre", "Santa Cruz"), ("Ecuador", "Quito", "Guayaquil"), ("Bangladesh", "Dhaka", "Chittagong"),
]


def arithmetic(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        op = rng.choice("+-*")
        a, b = (rng.randint(2, 12), rng.randint(2, 12)) if op == "*" else (rng.randint(10, 99), rng.randint(10, 99))
        if op == "-" and b > a:
            a, b = b, a
        answer = {"+": a + b, "-": a - b, "*": a * b}[op]
        wrong = answer + rng.choice([-10, -2, -1, 1, 2, 10])
        rows.append({
            "prompt": f"What is {a} {op} {b}?",
            "chosen": f"{a} {op} {b} = {answer}.",
            "rejected": f"{a} {op} {b} = {wrong}.",
        })
    return rows


def comparisons(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        a, b = rng.sample(range(1, 1000), 2)
        big, small = max(a, b), min(a, b)
        word = rng.choice(["larger", "bigger", "greater"])
        rows.append({
            "prompt": f"Which number is {word}: {a} or {b}?",
            "chosen": f"{big} is {word} than {small}.",
            "rejected": f"{small} is {word} than {big}.",
        })
    return rows


def capitals(rng: random.Random) -> list[dict]:
    rows = []
    for country, capital, other in CAPITALS:
        rows.append({
            "prompt": f"What is the capital of {country}?",
            "chosen": f"The capital of {country} is {capital}.",
            "rejected": f"The capital of {country} is {other}.",
        })
    rng.shuffle(rows)
    return rows


def build(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    tasks = {"arithmetic": arithmetic(rng, 200), "comparisons": comparisons(rng, 200), "capitals": capitals(rng)}
    out = []
    for task, rows in tasks.items():
        n_train = int(0.8 * len(rows))
        for i, row in enumerate(rows):
            out.append({"task": task, "split": "train" if i < n_train else "test", **row})
    return out


def main() -> None:
    rows = build()
    with open(PATH, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"wrote {len(rows)} rows to {PATH}")


if __name__ == "__main__":
    main()

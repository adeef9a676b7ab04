"""reprkit's own small preference set, made by ``python -m reprkit.embedded.make``.

Three kinds of task, each a correct answer (chosen) against a plausible wrong one (rejected), so an
in-distribution vs shifted split exists offline: ``arithmetic`` (train here), ``comparisons`` (a near
shift: numbers, different skill) and ``capitals`` (a far shift: world knowledge).
"""

from pathlib import Path

PATH = Path(__file__).with_name("preferences.jsonl")
TASKS = ("arithmetic", "comparisons", "capitals")

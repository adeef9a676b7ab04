"""What tokenization cut, counted: never silent.

Prompts are cut from the left to ``max_prompt_length`` and responses from the right to fit
``max_length``. A cut item is scored (or trained) on something other than what its data says: a
puzzle without its instruction, an answer without its end. Every encoded set (``data.Encoded``)
records per item how many tokens were cut; this module summarises that, warns when too many items
were cut, and names the lengths that would fit.

>>> enc = data.encode_ranked(items, tokenizer, max_length=256, max_prompt_length=128)
>>> report = truncation_report(enc)   # {"n", "cut", "share", "prompt_cut", "response_cut", "fit95", ...}
>>> describe(report)                   # '12 of 250 items cut (4.8%): ...; 95% fit at max_length 310 / prompt 180'
>>> check_fits(report, max_share=0.05, name="genies:raven_matrices")   # raises TruncationError
"""

from __future__ import annotations

import logging
import math

log = logging.getLogger(__name__)

WARN_SHARE = 0.05
"""More than this share of items cut gets a warning (and the comparison refuses the set)."""


class TruncationError(ValueError):
    """A data set whose items are cut more than a stated share at the lengths given."""


def _fitting_lengths(rows: list[dict], share: float) -> dict:
    """Lengths at which at least ``share`` of the records fit uncut: the ``share`` of records with the
    shortest uncut prompt + response, and the longest prompt and whole among them (both limits
    hold for every one of them)."""
    if not rows:
        return {"max_length": 0, "max_prompt_length": 0}
    kept = sorted(rows, key=lambda r: (r["full_length"], r["full_prompt_length"]))[: max(1, math.ceil(share * len(rows)))]
    prompt = max(r["full_prompt_length"] for r in kept)
    # max_prompt_length must stay below max_length (encode_pairs' own rule)
    return {"max_length": max(max(r["full_length"] for r in kept), prompt + 1), "max_prompt_length": prompt}


def truncation_report(encoded) -> dict:
    """Counts of what was cut in an encoded set (``data.encode_pairs`` / ``encode_ranked``):

    ``n`` records kept, ``dropped`` (no completion token left), ``cut`` (records whose prompt or any
    response lost a token) and ``share`` (cut + dropped over all), ``prompt_cut`` / ``response_cut``
    (how many records lost prompt / response tokens), ``max_prompt_cut`` / ``max_response_cut``
    (the most tokens cut), the lengths used (``max_length``, ``max_prompt_length``) and the lengths
    that would fit 95% and all of the records (``fit95``, ``fit_all``: ``{max_length,
    max_prompt_length}``).
    """
    rows = list(encoded)
    dropped = getattr(encoded, "dropped", 0)
    limits = dict(getattr(encoded, "limits", {}))
    if rows and "prompt_cut" not in rows[0]:
        raise ValueError("these records carry no cut counts; encode them with reprkit.data.encode_pairs / encode_ranked")
    prompt_cut = [r["prompt_cut"] for r in rows]
    response_cut = [r["response_cut"] for r in rows]
    cut = sum(1 for p, c in zip(prompt_cut, response_cut) if p or c)
    total = len(rows) + dropped
    fit95 = _fitting_lengths(rows, 0.95)
    return {
        "n": len(rows), "dropped": dropped, "cut": cut, "share": (cut + dropped) / total if total else 0.0,
        "prompt_cut": sum(1 for p in prompt_cut if p), "response_cut": sum(1 for c in response_cut if c),
        "max_prompt_cut": max(prompt_cut, default=0), "max_response_cut": max(response_cut, default=0),
        **limits,
        "fit95": fit95, "fit_all": _fitting_lengths(rows, 1.0),
    }


def describe(report: dict) -> str:
    """One line: how many were cut, where, and the lengths that would fit."""
    what = f"{report['cut']} of {report['n'] + report['dropped']} cut ({report['share']:.1%})"
    if report["dropped"]:
        what += f", {report['dropped']} not scored (no response token left)"
    if not report["cut"] and not report["dropped"]:
        return f"none of {report['n']} cut at max_length {report.get('max_length')} / prompt {report.get('max_prompt_length')}"
    parts = []
    if report["prompt_cut"]:
        parts.append(f"{report['prompt_cut']} prompts lost up to {report['max_prompt_cut']} tokens from the left")
    if report["response_cut"]:
        parts.append(f"{report['response_cut']} lost up to {report['max_response_cut']} response tokens from the right")
    fit = report["fit95"]
    return (f"{what} at max_length {report.get('max_length')} / prompt {report.get('max_prompt_length')}: "
            f"{'; '.join(parts)}; 95% would fit at max_length {fit['max_length']} / prompt {fit['max_prompt_length']}"
            f" (all at {report['fit_all']['max_length']} / {report['fit_all']['max_prompt_length']})")


def warn_if_cut(encoded, what: str = "items", share: float = WARN_SHARE) -> dict:
    """Log a warning when more than ``share`` of ``encoded`` was cut; return the report."""
    report = truncation_report(encoded)
    if report["share"] > share:
        log.warning("%s %s", what, describe(report))
    return report


def check_fits(report: dict, max_share: float = WARN_SHARE, name: str = "the data") -> None:
    """Refuse a set cut more than ``max_share``: the error names the lengths that would fit."""
    if report["share"] > max_share:
        fit = report["fit95"]
        raise TruncationError(
            f"{name}: {describe(report)}. More than {max_share:.0%} cut: scoring it would measure truncated "
            f"items. Raise the lengths (max_length {fit['max_length']}, max_prompt_length "
            f"{fit['max_prompt_length']} fit 95%) or leave this set out")

"""Paired statistics for two methods scored on the same items.

Two methods evaluated on the same items are compared item by item: most items are right (or wrong)
for both, and only the items where they disagree carry information. A paired test uses that; an
unpaired one (two independent intervals) wastes it and needs several times more items.

>>> a = {"item-1": 1, "item-2": 0, ...}; b = {"item-1": 1, "item-2": 1, ...}   # per-item outcomes
>>> paired_difference(a, b)      # {"n", "difference", "ci95", "p", "discordant": [a only, b only], ...}
>>> pooled_difference({"shift-1": (a1, b1), "shift-2": (a2, b2)})   # bootstrap stratified by shift

Outcomes are 0/1 per item, or (several seeds) the mean over seeds per item. The interval is a
paired bootstrap percentile interval (scipy); the p-value is McNemar's exact test for 0/1
outcomes and, for seed-averaged ones, the sign-flip permutation test of the per-item differences,
which is McNemar's exact test again when the outcomes are 0/1. A difference is significant (the
star) when that p is below ``ALPHA``, never by the interval alone.

Averaging seeds per item leaves the spread between training seeds out of the interval: two seeds
can disagree by more than the difference the items call significant. ``seed_t_difference`` is the
seed-level inference, meant for few seeds: a Welch t-interval over per-seed accuracies (plus the
items' sampling variance), with Satterthwaite's degrees of freedom, so that 3 seeds against 3 give
the few degrees of freedom they hold. (A bootstrap that resamples 2 or 3 seeds with replacement
shrinks their variance by (n - 1) / n and, being a normal-tailed approximation, cannot give the
t distribution's tails: it overstated certainty in the first comparison grid, and reprkit no longer
offers it.) ``pooled_seed_t_difference`` averages the difference over strata (shifts) with the same
variance terms; ``holm`` adjusts a family of p-values.

>>> seed_t_difference([a_seed0, a_seed1, a_seed2], [b_seed0, b_seed1, b_seed2])   # {"difference", "ci95", "p", "df", "per_seed"}
>>> pooled_seed_t_difference({"shift-1": (a_runs1, b_runs1), "shift-2": (a_runs2, b_runs2)})
>>> holm({"shift-1": 0.01, "shift-2": 0.04})                                      # {"shift-1": 0.02, "shift-2": 0.04}
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def align(a: dict[str, float], b: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """The two methods' outcomes as arrays over the same items, in one order. The item sets must
    be equal: a comparison on different items is not paired."""
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise ValueError(f"paired comparison needs the same items on both sides: {len(only_a)} only in the first "
                         f"(e.g. {only_a[:2]}), {len(only_b)} only in the second (e.g. {only_b[:2]}); evaluate both "
                         "methods on the same eval set and limit")
    ids = sorted(a)
    return np.array([a[i] for i in ids], dtype=float), np.array([b[i] for i in ids], dtype=float)


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> dict:
    """McNemar's exact test on 0/1 outcomes: discordant counts and the two-sided binomial p."""
    if not (np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all()):
        raise ValueError("McNemar's test takes 0/1 outcomes; use sign_flip_p for seed-averaged ones")
    only_a, only_b = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    p = 1.0 if only_a + only_b == 0 else stats.binomtest(only_a, only_a + only_b, 0.5).pvalue
    return {"only_first": only_a, "only_second": only_b, "p": float(p)}


def sign_flip_floor(diff: np.ndarray, n_resamples: int = 20000) -> float:
    """The smallest p ``sign_flip_p`` can return for these differences: exact enumeration of 2^m sign
    patterns (m nonzero differences) when that is at most ``n_resamples``, else Monte Carlo."""
    m = int(np.count_nonzero(diff))
    draws = 2 ** m if m < 64 and 2 ** m <= n_resamples else n_resamples + 1
    return min(1.0, 2 / draws)


def sign_flip_p(diff: np.ndarray, n_resamples: int = 20000, seed: int = 0) -> float:
    """Two-sided p of the per-item differences' mean under random sign flips (exact when the
    nonzero differences are few, else ``n_resamples`` Monte Carlo draws)."""
    nonzero = diff[diff != 0]
    if nonzero.size < 2:  # no or one nonzero difference: both signs give the same |mean|, p = 1
        return 1.0
    res = stats.permutation_test((nonzero,), np.mean, permutation_type="samples", n_resamples=n_resamples,
                                 alternative="two-sided", rng=np.random.default_rng(seed))
    return float(res.pvalue)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_resamples: int = 10000, seed: int = 0,
                     confidence: float = 0.95) -> list[float]:
    """Percentile interval of mean(a - b) from resampling items (both methods' outcomes together)."""
    diff = a - b
    if np.all(diff == diff[0]):
        return [float(diff[0]), float(diff[0])]
    res = stats.bootstrap((diff,), np.mean, n_resamples=n_resamples, confidence_level=confidence,
                          method="percentile", rng=np.random.default_rng(seed))
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


def minimum_detectable(diff: np.ndarray, alpha: float = 0.05, power: float = 0.8) -> float:
    """The accuracy difference this many items would detect with the given power (normal
    approximation, the observed spread of per-item differences; with no spread, that of one
    disagreement in the whole set)."""
    n = len(diff)
    sd = float(np.std(diff, ddof=1)) if n > 1 and np.std(diff) > 0 else math.sqrt(1 / max(n, 1))
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return float(z * sd / math.sqrt(max(n, 1)))


ALPHA = 0.05
"""The level every star and every ``significant`` in reprkit's paired comparisons is decided at."""


def paired_difference(a: dict[str, float], b: dict[str, float], n_resamples: int = 10000, seed: int = 0) -> dict:
    """First minus second on the same items: the difference in accuracy, its paired bootstrap 95%
    interval, p (McNemar exact for 0/1 outcomes, else sign flips), the discordant counts (items
    only the first / only the second got right, 0/1 outcomes), the minimum detectable difference,
    and ``significant``: ``p < ALPHA``. One test decides the star and the p.

    The interval is a percentile bootstrap and is not that test's inversion: with few discordant
    items (5 against 0 of 100: interval +0.01 to +0.10, exact p 0.0625) it can exclude 0 while the
    exact test says the evidence is short. ``interval_disagrees`` marks such a row, and tables
    print it (a dagger), so the reader sees both and the star follows the test."""
    x, y = align(a, b)
    diff = x - y
    out = {"n": len(diff), "first": float(x.mean()), "second": float(y.mean()), "difference": float(diff.mean()),
           "ci95": paired_bootstrap(x, y, n_resamples, seed), "mde80": minimum_detectable(diff)}
    binary = np.isin(x, (0, 1)).all() and np.isin(y, (0, 1)).all()
    if binary:
        m = mcnemar_exact(x, y)
        out.update(p=m["p"], discordant=[m["only_first"], m["only_second"]], test="mcnemar-exact")
    else:
        out.update(p=sign_flip_p(diff, seed=seed), test="sign-flip permutation", p_floor=sign_flip_floor(diff))
    out["significant"] = bool(out["p"] < ALPHA)
    out["interval_disagrees"] = bool((out["ci95"][0] > 0 or out["ci95"][1] < 0) != out["significant"])
    return out


def pooled_difference(strata: dict[str, tuple[dict, dict]], n_resamples: int = 10000, seed: int = 0) -> dict:
    """Mean over strata (shifts) of each stratum's paired difference, with a bootstrap interval that
    resamples items within each stratum (stratified), so every shift keeps its weight."""
    diffs = {k: np.subtract(*align(a, b)) for k, (a, b) in strata.items()}
    point = float(np.mean([d.mean() for d in diffs.values()]))
    rng = np.random.default_rng(seed)
    draws = np.zeros(n_resamples)
    for d in diffs.values():
        idx = rng.integers(0, len(d), size=(n_resamples, len(d)))
        draws += d[idx].mean(1)
    draws /= len(diffs)
    return {"strata": len(diffs), "n": int(sum(len(d) for d in diffs.values())), "difference": point, **_interval(draws)}


def _interval(draws: np.ndarray) -> dict:
    """The 95% percentile interval of bootstrap draws, and whether it excludes 0."""
    lo, hi = (float(v) for v in np.percentile(draws, [2.5, 97.5]))
    return {"ci95": [lo, hi], "significant": bool(lo > 0 or hi < 0)}


def _seed_t_terms(a_runs: list[dict[str, float]], b_runs: list[dict[str, float]]) -> tuple[dict, list]:
    """The point difference of run accuracies and its variance terms ``(variance, degrees of
    freedom)``: one per method with more than one run, and the items' sampling variance."""
    if not a_runs or not b_runs:
        raise ValueError("seed-level inference needs at least one run on each side")
    ids = sorted(a_runs[0])
    for r in [*a_runs, *b_runs]:
        align(r, a_runs[0])
    A = np.array([[r[i] for i in ids] for r in a_runs], dtype=float)
    B = np.array([[r[i] for i in ids] for r in b_runs], dtype=float)
    acc_a, acc_b = A.mean(1), B.mean(1)
    terms = []
    for acc in (acc_a, acc_b):
        if len(acc) > 1:
            terms.append((float(acc.var(ddof=1)) / len(acc), len(acc) - 1))
    d = A.mean(0) - B.mean(0)
    if len(d) > 1:
        terms.append((float(d.var(ddof=1)) / len(d), len(d) - 1))
    # each seed's own difference: seed s against the other's seed s where both have as many runs,
    # else against the other's seed mean
    per_seed = [float(x - (acc_b[s] if len(acc_b) == len(acc_a) else acc_b.mean())) for s, x in enumerate(acc_a)]
    out = {"n": len(ids), "runs": [len(a_runs), len(b_runs)], "difference": float(acc_a.mean() - acc_b.mean()),
           "per_seed_accuracy": [acc_a.tolist(), acc_b.tolist()], "per_seed": per_seed}
    return out, terms


def _t_result(out: dict, terms: list, confidence: float) -> dict:
    """Student's t interval and two-sided p for ``out["difference"]`` with the summed variance
    terms and Satterthwaite's degrees of freedom."""
    diff = out["difference"]
    var = sum(v for v, _ in terms)
    out = {**out, "test": "welch-t (seeds) + item variance"}
    if var <= 0:
        return {**out, "se": 0.0, "df": float("inf"), "ci95": [diff, diff], "p": 1.0 if diff == 0 else 0.0,
                "significant": diff != 0}
    df = var ** 2 / sum(v ** 2 / k for v, k in terms if v > 0)
    se = math.sqrt(var)
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    p = float(2 * stats.t.sf(abs(diff) / se, df))
    return {**out, "se": se, "df": float(df), "ci95": [diff - half, diff + half], "p": p,
            "significant": bool(diff - half > 0 or diff + half < 0)}


def seed_t_difference(a_runs: list[dict[str, float]], b_runs: list[dict[str, float]], confidence: float = 0.95) -> dict:
    """First minus second, inferred at the level of training seeds, right for few seeds.

    ``a_runs`` and ``b_runs`` are one ``{item id: outcome}`` per seed on the same items; a method
    without seeds (the frozen model) passes one run. Each run's accuracy is the mean of its per-item
    outcomes. The difference is the mean of the first's run accuracies minus the second's. Its
    variance is the Welch sum over the methods with more than one run, ``s_a^2 / n_a + s_b^2 / n_b``
    (a side with one run adds none), plus the items' sampling variance ``var(d_i) / N`` of the
    per-item difference of seed means (the item set is a sample too). The interval and two-sided p
    use Student's t with Satterthwaite's degrees of freedom over those terms. With one run each this
    is the paired t-test over items; with few seeds the seed terms dominate and the degrees of
    freedom are few, as they should be (3 seeds against 3 seeds: about 2 to 4). Also returns each
    seed's own difference (``per_seed``).
    """
    out, terms = _seed_t_terms(a_runs, b_runs)
    return _t_result(out, terms, confidence)


def pooled_seed_t_difference(strata: dict[str, tuple[list[dict], list[dict]]], confidence: float = 0.95,
                             shared: dict[str, str] | None = None) -> dict:
    """``seed_t_difference`` pooled over strata (shifts, or targets): the mean of the strata's
    differences, with Satterthwaite's degrees of freedom over all the variance terms.

    Strata scored by different runs are independent: the variance is the sum of each stratum's
    terms over the number of strata squared. Strata scored by the *same* runs (one training run per
    seed, scored on several targets) are not: a seed that does well on one target tends to do well
    on the others, and summing their seed terms as if independent leaves that covariance out.
    ``shared`` maps each stratum to a group whose strata share runs (seed ``s`` of the group's
    strata is one run; every stratum of a group has the same number of runs in the same order); a
    group's seed terms are then the Welch terms of each run's pooled accuracy (its strata's
    accuracies summed, over the number of strata), which carry the covariance, and its items' terms
    stay per stratum (the item sets are different items). ``shared=None``: every stratum its own
    group."""
    if not strata:
        raise ValueError("pooled_seed_t_difference needs at least one stratum")
    k = len(strata)
    groups: dict[str, list[str]] = {}
    for name in strata:
        groups.setdefault((shared or {}).get(name, name), []).append(name)
    terms, diffs = [], []
    for names in groups.values():
        runs = {len(strata[n][0]) for n in names}, {len(strata[n][1]) for n in names}
        if len(runs[0]) > 1 or len(runs[1]) > 1:
            raise ValueError(f"strata {names} share runs but have different numbers of runs: {runs}")
        per_side = []
        for side in (0, 1):
            acc = np.array([[np.mean(list(r.values())) for r in strata[n][side]] for n in names])  # strata x runs
            per_side.append(acc.sum(0) / k)  # each run's contribution to the pooled difference
        for acc in per_side:
            if len(acc) > 1:
                terms.append((float(acc.var(ddof=1)) / len(acc), len(acc) - 1))
        for n in names:
            out, t = _seed_t_terms(*strata[n])
            diffs.append(out["difference"])
            items = t[-1] if out["n"] > 1 else None  # the items' term is the last one
            if items is not None:
                terms.append((items[0] / k ** 2, items[1]))
    out = {"strata": k, "groups": len(groups), "difference": float(np.mean(diffs))}
    return _t_result(out, terms, confidence)


def detectable_difference(se: float, df: float, alpha: float = ALPHA, power: float = 0.8) -> float:
    """The smallest true difference a two-sided t test at ``alpha`` detects with probability
    ``power``, for an estimate with standard error ``se`` and ``df`` degrees of freedom:
    ``(t_{1-alpha/2, df} + t_{power, df}) * se`` (the usual approximation to the noncentral t).
    For a family adjusted by Holm over m tests, the most significant test meets ``alpha / m``:
    pass that to read the family's floor."""
    df = float(df) if math.isfinite(df) else 1e9
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * se)


def ratio_interval(num: float, den: float, var_num: float, var_den: float, cov: float, df: float,
                   confidence: float = 0.95) -> dict:
    """Fieller's interval for the ratio ``num / den`` of two estimates with the given variances,
    covariance and degrees of freedom. Where ``den`` is not clearly away from 0 (``g =
    t^2 var_den / den^2 >= 1``) no finite interval exists: ``ci95`` is None and ``bounded`` False
    (the ratio of, say, a transfer gain to a ceiling gain that may be 0 is not estimable)."""
    t = float(stats.t.ppf(0.5 + confidence / 2, df if math.isfinite(df) else 1e9))
    ratio = num / den if den != 0 else float("nan")
    g = t ** 2 * var_den / den ** 2 if den != 0 else float("inf")
    if g >= 1:
        return {"ratio": ratio, "ci95": None, "bounded": False, "g": g}
    a = den ** 2 - t ** 2 * var_den
    b = num * den - t ** 2 * cov
    c = num ** 2 - t ** 2 * var_num
    root = math.sqrt(max(b ** 2 - a * c, 0.0))
    return {"ratio": ratio, "ci95": [(b - root) / a, (b + root) / a], "bounded": True, "g": g}


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment of a family of p-values (controls the family-wise error rate):
    the k-th smallest of m is multiplied by m - k + 1, then made monotone, capped at 1."""
    order = sorted(pvalues, key=pvalues.get)
    m, running, out = len(order), 0.0, {}
    for k, key in enumerate(order):
        running = max(running, min(1.0, (m - k) * pvalues[key]))
        out[key] = running
    return out

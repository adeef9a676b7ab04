import numpy as np
import pytest

from reprkit.stats import (
    align,
    mcnemar_exact,
    paired_difference,
    pooled_difference,
    pooled_seed_t_difference,
    seed_t_difference,
    sign_flip_p,
)


def _outcomes(table: dict[tuple[int, int], int]) -> tuple[dict, dict]:
    """Per-item outcomes from a 2x2 McNemar table {(first, second): count}."""
    a, b, i = {}, {}, 0
    for (x, y), count in table.items():
        for _ in range(count):
            a[f"item{i}"], b[f"item{i}"] = x, y
            i += 1
    return a, b


def test_mcnemar_hand_computed_table():
    # 10 items only the first got right, 2 only the second: two-sided exact p = 2 * P(X <= 2 | 12, 1/2)
    a, b = _outcomes({(1, 1): 50, (1, 0): 10, (0, 1): 2, (0, 0): 38})
    res = paired_difference(a, b)
    assert res["discordant"] == [10, 2]
    assert res["p"] == pytest.approx(2 * (1 + 12 + 66) / 4096, rel=1e-12)
    assert res["difference"] == pytest.approx(0.08)
    assert res["n"] == 100 and res["test"] == "mcnemar-exact"


def test_sign_flip_equals_mcnemar_on_binary_outcomes():
    a, b = _outcomes({(1, 1): 30, (1, 0): 9, (0, 1): 3, (0, 0): 20})
    x, y = align(a, b)
    assert sign_flip_p(x - y) == pytest.approx(mcnemar_exact(x, y)["p"], rel=1e-9)


def test_paired_interval_uses_the_pairing():
    # the second method is the first plus 8 wins on 200 items; the items vary a lot in difficulty
    rng = np.random.default_rng(0)
    first = rng.integers(0, 2, 200)
    second = first.copy()
    second[np.flatnonzero(first == 0)[:8]] = 1
    a = {f"i{k}": int(v) for k, v in enumerate(first)}
    b = {f"i{k}": int(v) for k, v in enumerate(second)}
    paired = paired_difference(b, a)
    assert paired["significant"] and paired["ci95"][0] > 0
    assert paired["p"] < 0.01
    # the same outcomes with the pairing broken (items shuffled on one side): no longer decisive
    ids = list(b)
    shuffled = dict(zip(ids, [b[i] for i in rng.permutation(ids)]))
    broken = paired_difference(shuffled, a)
    assert broken["difference"] == pytest.approx(paired["difference"])
    assert not broken["significant"]
    assert broken["ci95"][1] - broken["ci95"][0] > 3 * (paired["ci95"][1] - paired["ci95"][0])


def test_align_matches_items_by_id_not_by_order():
    a = {"x": 1, "y": 0, "z": 1}
    b = {"z": 1, "x": 1, "y": 0}
    assert paired_difference(a, b)["ci95"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="same items"):
        paired_difference(a, {"x": 1, "y": 0, "w": 1})


def test_seed_averaged_outcomes_use_sign_flips():
    a = {f"i{k}": v for k, v in enumerate([1, 0.5, 1, 1, 0.5, 1, 1, 1, 0.5, 1] * 3)}
    b = {f"i{k}": v for k, v in enumerate([0.5, 0, 1, 0.5, 0, 1, 0.5, 1, 0, 0.5] * 3)}
    res = paired_difference(a, b)
    assert res["test"].startswith("sign-flip") and res["p"] < 0.001 and res["significant"]


def test_pooled_difference_is_the_mean_of_strata_with_a_stratified_interval():
    a1, b1 = _outcomes({(1, 0): 10, (1, 1): 40, (0, 0): 50})   # +0.10
    a2, b2 = _outcomes({(0, 1): 2, (1, 1): 48, (0, 0): 150})    # -0.01
    res = pooled_difference({"s1": (a1, b1), "s2": (a2, b2)})
    assert res["difference"] == pytest.approx((0.10 - 0.01) / 2)
    assert res["strata"] == 2 and res["n"] == 300
    assert res["ci95"][0] < res["difference"] < res["ci95"][1]
    # stratified: a stratum with no spread contributes no width
    a3, b3 = _outcomes({(1, 1): 100})
    res = pooled_difference({"s3": (a3, b3), "s4": (a3, b3)})
    assert res["ci95"] == [0.0, 0.0]


def test_one_discordant_item_gives_p_one():
    # a single nonzero difference: flipping its sign leaves |mean| unchanged, so p = 1,
    # as McNemar's exact test gives for one discordant pair (a seed-averaged 0.5 hit this)
    diff = np.zeros(250)
    diff[7] = 0.5
    assert sign_flip_p(diff) == 1.0
    x, y = np.zeros(20), np.zeros(20)
    x[3] = 1
    assert sign_flip_p(x - y) == pytest.approx(mcnemar_exact(x, y)["p"])


def _runs(rng, n, p_right, k):
    return [{f"i{j}": int(v) for j, v in enumerate(rng.random(n) < p_right)} for _ in range(k)]


def test_seed_level_interval_holds_the_seed_spread():
    rng = np.random.default_rng(1)
    base = _runs(rng, 250, 0.5, 1)[0]
    # seed 0 of the method is the base model plus 20 wins; seed 1 plus 2 wins: the items call the
    # seed-averaged +0.044 decisive, but the seeds disagree by 0.072
    wins = [i for i, v in base.items() if v == 0]
    seed0, seed1 = dict(base), dict(base)
    for i in wins[:20]:
        seed0[i] = 1
    for i in wins[:2]:
        seed1[i] = 1
    items = paired_difference({i: (seed0[i] + seed1[i]) / 2 for i in base}, base)
    both = seed_t_difference([seed0, seed1], [base])
    assert items["significant"] and items["difference"] == pytest.approx(0.044)
    assert both["difference"] == pytest.approx(0.044)
    assert both["per_seed"] == pytest.approx([0.08, 0.008])
    assert both["runs"] == [2, 1]
    assert not both["significant"] and both["ci95"][0] < 0 < items["ci95"][0]
    assert both["ci95"][1] - both["ci95"][0] > 1.5 * (items["ci95"][1] - items["ci95"][0])
    # seeds that agree: no seed variance, the interval is the items' one again, and decisive
    agree = seed_t_difference([seed0, seed0], [base])
    alone = paired_difference(seed0, base)
    assert agree["significant"] and agree["ci95"] == pytest.approx(alone["ci95"], abs=0.012)


def test_seed_level_difference_pairs_seeds_and_needs_the_same_items():
    a = [{"x": 1, "y": 1}, {"x": 0, "y": 1}]
    b = [{"x": 0, "y": 1}, {"x": 0, "y": 0}]
    assert seed_t_difference(a, b)["per_seed"] == [0.5, 0.5]
    with pytest.raises(ValueError, match="same items"):
        seed_t_difference(a, [{"x": 0, "z": 1}])
    with pytest.raises(ValueError, match="at least one run"):
        seed_t_difference(a, [])


def test_pooled_seed_t_difference_averages_the_strata_and_narrows():
    rng = np.random.default_rng(2)
    s1 = (_runs(rng, 200, 0.7, 3), _runs(rng, 200, 0.5, 3))
    s2 = (_runs(rng, 200, 0.6, 3), _runs(rng, 200, 0.5, 1))
    res = pooled_seed_t_difference({"s1": s1, "s2": s2})
    one = [seed_t_difference(*s) for s in (s1, s2)]
    assert res["difference"] == pytest.approx(np.mean([r["difference"] for r in one]))
    assert res["strata"] == 2 and res["ci95"][0] < res["difference"] < res["ci95"][1]
    # the mean of two strata has about half the variance of one, so a narrower interval than either
    width = res["ci95"][1] - res["ci95"][0]
    assert all(width < r["ci95"][1] - r["ci95"][0] for r in one)
    # one stratum pooled is that stratum's seed-level test
    solo = pooled_seed_t_difference({"s1": s1})
    assert solo["ci95"] == pytest.approx(one[0]["ci95"]) and solo["p"] == pytest.approx(one[0]["p"])


def _exact_runs(accuracies, n=750, seed=0):
    """One {item: 0/1} per seed with exactly the given accuracies on shared item ids."""
    rng = np.random.default_rng(seed)
    runs = []
    for acc in accuracies:
        k = round(acc * n)
        outcome = np.zeros(n)
        outcome[rng.choice(n, k, replace=False)] = 1
        runs.append({f"i{j}": float(v) for j, v in enumerate(outcome)})
    return runs


def test_seed_t_on_the_three_seed_followup_includes_zero_as_welch_does():
    """ReprPO vs DPO on alpaca_low_quality's target, three seeds each: Welch's t on the per-seed
    accuracies gives p about 0.14; the seed-level interval must include 0 (the first grid's
    bootstrap over seeds and items, which shrank seed variance by (n-1)/n, did not)."""
    from scipy import stats as S

    from reprkit.stats import seed_t_difference

    reprpo, dpo = [0.361, 0.383, 0.387], [0.391, 0.531, 0.527]
    res = seed_t_difference(_exact_runs(reprpo, seed=1), _exact_runs(dpo, seed=2))
    welch = S.ttest_ind(reprpo, dpo, equal_var=False)
    assert res["difference"] == pytest.approx(np.mean(reprpo) - np.mean(dpo), abs=1e-3)
    assert res["ci95"][0] < 0 < res["ci95"][1] and not res["significant"]
    assert res["p"] == pytest.approx(welch.pvalue, abs=0.03) and 0.1 < res["p"] < 0.2
    assert 1.5 < res["df"] < 4


def test_seed_t_with_one_run_each_is_the_paired_t_over_items():
    from scipy import stats as S

    from reprkit.stats import seed_t_difference

    a, b = _exact_runs([0.6], seed=3), _exact_runs([0.5], seed=4)
    res = seed_t_difference(a, b)
    x, y = np.array(list(a[0].values())), np.array(list(b[0].values()))
    assert res["p"] == pytest.approx(S.ttest_rel(x, y).pvalue, rel=1e-6)


def test_holm_adjusts_step_down_and_stays_monotone():
    from reprkit.stats import holm

    adj = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.5})
    assert adj == pytest.approx({"a": 0.04, "c": 0.09, "b": 0.09, "d": 0.5})
    assert holm({"x": 0.6, "y": 0.7}) == pytest.approx({"x": 1.0, "y": 1.0})


def test_permutation_p_states_its_floor():
    from reprkit.stats import paired_difference

    a = {f"i{j}": 1.0 if j < 300 else 0.5 for j in range(400)}
    b = {f"i{j}": 0.0 if j < 300 else 0.5 for j in range(400)}
    res = paired_difference(a, b)
    assert res["test"].startswith("sign-flip") and res["p"] == pytest.approx(res["p_floor"], rel=0.01)


def test_seed_level_interval_covers_the_truth_where_the_items_only_interval_does_not():
    """Simulated grid: 3 seeds per method on the same 120 items, each seed shifting its method's
    logits (training randomness) and each item drawn per run. The truth is the difference of
    expected accuracy over new items and new seeds. The seed-level 95% interval covers it at about
    the nominal rate; an items-only interval on seed-averaged outcomes (normal approximation)
    misses it often, which is how the first grid's intervals overstated certainty."""
    rng = np.random.default_rng(1)
    n, seeds, tau, sigma, sims = 120, 3, 0.5, 0.5, 300

    def expit(x):
        return 1 / (1 + np.exp(-x))

    z = rng.normal(0, 1, (3, 400_000))
    truth = float(np.mean(expit(z[0] + 0.2 + tau * z[1] + sigma * z[2]) - expit(z[0] + tau * z[1] + sigma * z[2])))
    seed_hits = item_hits = 0
    for _ in range(sims):
        difficulty = rng.normal(0, 1, n)

        def runs(shift, difficulty=difficulty):
            return [dict(enumerate((rng.random(n) < expit(difficulty + shift + rng.normal(0, tau)
                                                          + rng.normal(0, sigma, n))).astype(float)))
                    for _ in range(seeds)]

        a, b = runs(0.2), runs(0.0)
        lo, hi = seed_t_difference(a, b)["ci95"]
        seed_hits += lo <= truth <= hi
        d = np.mean([list(r.values()) for r in a], 0) - np.mean([list(r.values()) for r in b], 0)
        half = 1.96 * d.std(ddof=1) / np.sqrt(n)
        item_hits += d.mean() - half <= truth <= d.mean() + half
    assert seed_hits / sims >= 0.90, seed_hits / sims
    assert item_hits / sims <= 0.80, item_hits / sims


def test_the_star_follows_the_exact_p_never_the_interval_alone():
    """5 of 100 items right for the first method only, none for the second: the bootstrap interval
    (+0.01, +0.10) excludes 0 but McNemar's exact p is 0.0625, so the row is not significant and is
    marked as a disagreement; on random tables the star is exactly p < 0.05."""
    base = {i: 0 for i in range(100)}
    first = dict(base) | {i: 1 for i in range(5)}
    d = paired_difference(first, base)
    assert d["p"] == pytest.approx(0.0625) and d["ci95"][0] > 0
    assert not d["significant"] and d["interval_disagrees"]
    rng = np.random.default_rng(3)
    for _ in range(40):
        n = int(rng.integers(20, 200))
        a = {i: int(v) for i, v in enumerate(rng.random(n) < rng.uniform(0.2, 0.8))}
        b = {i: int(v) for i, v in enumerate(rng.random(n) < rng.uniform(0.2, 0.8))}
        r = paired_difference(a, b, n_resamples=2000)
        assert r["significant"] == (r["p"] < 0.05)
        assert r["interval_disagrees"] == ((r["ci95"][0] > 0 or r["ci95"][1] < 0) != r["significant"])


def _shared_target_runs(seed_effects, base, n, rng, prefix):
    """Runs of one method scored on one target: seed s adds seed_effects[s] to every item's chance
    of being right (the same run on every target: its effect is shared)."""
    return [{f"{prefix}{j}": float(rng.random() < base + e) for j in range(n)} for e in seed_effects]


def test_pooled_over_targets_of_the_same_runs_counts_the_shared_seed_spread():
    rng = np.random.default_rng(5)
    effects = [-0.08, 0.0, 0.08]  # a seed good on one target is good on the other
    strata = {t: (_shared_target_runs(effects, 0.55, 300, rng, t), _shared_target_runs([0.0], 0.5, 300, rng, t))
              for t in ("raven", "arc")}
    shared = pooled_seed_t_difference(strata, shared={"raven": "src", "arc": "src"})
    alone = pooled_seed_t_difference(strata)
    assert shared["difference"] == pytest.approx(alone["difference"]) and shared["groups"] == 1
    # by hand: the Welch term of each run's pooled accuracy, plus each target's items term over k^2
    pooled = np.mean([[np.mean(list(r.values())) for r in strata[t][0]] for t in strata], axis=0)
    items = []
    for t in strata:
        a, b = strata[t]
        ids = sorted(b[0])
        d = np.mean([[r[i] for i in ids] for r in a], 0) - np.array([b[0][i] for i in ids])
        items.append(d.var(ddof=1) / len(d) / 4)
    assert shared["se"] ** 2 == pytest.approx(pooled.var(ddof=1) / 3 + sum(items))
    # treating the targets as independent halves the seed spread the shared runs really have
    assert shared["se"] > alone["se"]
    with pytest.raises(ValueError, match="different numbers of runs"):
        pooled_seed_t_difference({"a": strata["raven"], "b": (strata["arc"][0][:2], strata["arc"][1])},
                                 shared={"a": "g", "b": "g"})


def test_detectable_difference_is_the_t_sum_times_the_standard_error():
    from scipy import stats as st

    from reprkit.stats import detectable_difference

    assert detectable_difference(0.01, float("inf")) == pytest.approx((st.norm.ppf(0.975) + st.norm.ppf(0.8)) * 0.01)
    assert detectable_difference(0.02, 4) == pytest.approx((st.t.ppf(0.975, 4) + st.t.ppf(0.8, 4)) * 0.02)
    # at power 0.5 it is the critical value; Holm's first step is stricter
    assert detectable_difference(0.02, 10, power=0.5) == pytest.approx(st.t.ppf(0.975, 10) * 0.02)
    assert detectable_difference(0.02, 10, alpha=0.05 / 12) > detectable_difference(0.02, 10)


def test_ratio_interval_is_fieller():
    from scipy import stats as st

    from reprkit.stats import ratio_interval

    # an exact denominator: the numerator's t interval over the denominator
    r = ratio_interval(0.06, 0.2, 0.0004, 0.0, 0.0, 8)
    t = st.t.ppf(0.975, 8)
    assert r["bounded"] and r["ratio"] == pytest.approx(0.3)
    assert r["ci95"] == pytest.approx([(0.06 - t * 0.02) / 0.2, (0.06 + t * 0.02) / 0.2])
    # a noisy denominator widens it, more above the ratio than below
    w = ratio_interval(0.06, 0.2, 0.0004, 0.0025, 0.0, 8)
    assert w["ci95"][0] < r["ci95"][0] and w["ci95"][1] > r["ci95"][1]
    assert w["ci95"][1] - 0.3 > 0.3 - w["ci95"][0]
    # every ratio inside Fieller's interval passes the t test of num - ratio * den = 0
    for rho in w["ci95"]:
        assert (0.06 - rho * 0.2) ** 2 == pytest.approx(t ** 2 * (0.0004 + rho ** 2 * 0.0025))
    # a denominator not clearly away from 0: no finite interval
    assert ratio_interval(0.06, 0.05, 0.0004, 0.0025, 0.0, 8)["ci95"] is None

"""sparsetrain.experiments.paired: pairing by seed, t intervals, Sup-tickets against θ_pre and the base alone."""

import math

import pytest

from sparsetrain.errors import InputError
from sparsetrain.experiments.paired import (mean_ci, paired_rows, paired_table, report_sections, t975,
                                            ticket_paired_table, ticket_rows)


def run(label, seed, acc, density=0.02, method=None, **extra):
    method = method or label.split(" ")[0]
    return {"label": label, "test_acc": acc, "itop_rate": 0.1, "config": {"method": method, "density": density,
                                                                         "seed": seed}, **extra}


def test_t_quantiles_and_interval():
    assert t975(1) == 12.706 and t975(9) == 2.262 and t975(30) == 2.042 and t975(1000) == 1.96
    with pytest.raises(ValueError, match="at least 2"):
        t975(0)
    m, lo, hi = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and hi - m == pytest.approx(4.303 / math.sqrt(3)) and m - lo == pytest.approx(hi - m)
    assert math.isnan(mean_ci([5.0])[1])


def test_paired_by_seed_not_by_position():
    # the method is better than RigL by exactly 0.01 on every seed, although the seeds' levels vary
    # by far more: the paired interval is [0.01, 0.01]; unpaired runs (seed 9) are left out
    results = [run("rigl", s, 0.80 + 0.05 * s) for s in range(4)]
    results += [run("dstee", s, 0.81 + 0.05 * s) for s in (3, 1, 0, 2, 9)]
    (row,) = paired_rows(results, "rigl")
    assert row["arm"] == "dstee" and row["pairs"] == 4 and row["seeds"] == [0, 1, 2, 3]
    assert row["diff"] == pytest.approx(0.01) and row["low"] == pytest.approx(0.01) and row["high"] == pytest.approx(0.01)
    assert row["wins"] == 4 and row["losses"] == 0
    assert "| dstee | 98% | 4 |" in paired_table(results, "rigl") and "+1.00 [+1.00, +1.00]" in paired_table(results, "rigl")


def test_grid_variants_pair_with_the_same_variant_and_densities_stay_apart():
    results = [run(f"rigl epochs={e}", s, 0.8 + e / 1000, density=d) for e in (30, 60) for s in (0, 1)
               for d in (0.02, 0.05)]
    results += [run(f"set-itop epochs={e}", s, 0.8 + e / 1000 + 0.002 * (s + 1), density=d) for e in (30, 60)
                for s in (0, 1) for d in (0.02, 0.05)]
    rows = paired_rows(results, "rigl")
    assert len(rows) == 4 and all(r["pairs"] == 2 for r in rows)
    assert all(r["diff"] == pytest.approx(0.003) for r in rows)  # 0.002 and 0.004: each compared within its variant
    assert {(r["variant"], r["density"]) for r in rows} == {(f"epochs={e}", d) for e in (30, 60) for d in (0.02, 0.05)}


def test_survival_and_exploration_are_averaged_over_updates():
    hist = [{"step": 1, "exploration": 1.0}, {"step": 2, "exploration": 0.5, "survival": 0.4},
            {"step": 3, "exploration": 0.0, "survival": 0.8}]
    results = [run("rigl", 0, 0.8), run("set", 0, 0.79, update_history=hist)]
    (row,) = paired_rows(results, "rigl")
    assert row["survival"] == pytest.approx(0.6) and row["exploration"] == pytest.approx(0.5)


def test_tickets_against_theta_pre_and_the_base_alone():
    def tickets(s):
        return [{"ticket_acc": 0.80 + s / 100, "sup_acc": 0.81 + s / 100}, {"ticket_acc": 0.805, "sup_acc": 0.815}]

    results = [run("rigl+sup-tickets", s, 0.82 + s / 100, pre_test_acc=0.815 + s / 100, tickets=tickets(s))
               for s in range(3)]
    results += [run("rigl", s, 0.83 + s / 100) for s in range(3)]
    (row,) = ticket_rows(results)
    assert row["tickets"] == 2 and row["base_pairs"] == 3
    assert row["pre"] == pytest.approx(0.825) and row["output"] == pytest.approx(0.83)
    assert row["vs_pre"][0] == pytest.approx(0.005) and row["vs_base"][0] == pytest.approx(-0.01)
    assert row["sup_acc"][1] == pytest.approx(0.815)
    table = ticket_paired_table(results)
    assert "| rigl+sup-tickets | 98% | 3 | 82.50 |" in table and "(3 pairs)" in table
    text = report_sections(results)
    assert "Paired differences from rigl" in text and "θ_pre" in text
    assert report_sections([run("set", 0, 0.8)]) == ""


def test_language_models_are_paired_in_bits_per_byte_lower_is_better():
    # the method has 0.05 fewer bits per byte than RigL on every seed (better) although its next-byte
    # accuracy is lower on one: the bits-per-byte table comes first and counts wins by lower values
    results = [run("rigl", s, 0.40, test_bpb=3.30 + 0.01 * s) for s in range(3)]
    results += [run("set", s, 0.41 if s else 0.39, test_bpb=3.25 + 0.01 * s) for s in range(3)]
    (row,) = paired_rows(results, "rigl", "test_bpb")
    assert row["diff"] == pytest.approx(-0.05) and row["wins"] == 3 and row["losses"] == 0
    text = report_sections(results)
    assert text.index("validation bits per byte") < text.index("final test accuracy")
    assert "| set | 98% | 3 | 3.2600 | 3.3100 | -0.0500 [-0.0500, -0.0500] | 3 / 0 |" in text
    # image classifiers (no bits per byte) keep the accuracy table only
    assert "bits per byte" not in report_sections([run("rigl", 0, 0.8), run("set", 0, 0.81)])


def test_the_baseline_has_its_own_row_and_lengths_sort_as_numbers():
    hist = [{"step": 1, "exploration": 0.2}, {"step": 2, "exploration": 0.4, "survival": 0.5}]
    results = [run(f"rigl epochs={e}", s, 0.8, update_history=hist) for e in (30, 120) for s in (0, 1)]
    results += [run(f"set-itop epochs={e}", s, 0.81) for e in (30, 120) for s in (0, 1)]
    lines = paired_table(results, "rigl").splitlines()[2:]
    assert [line.split(" | ")[0] for line in lines] == [
        "| rigl epochs=30 (baseline)", "| set-itop epochs=30", "| rigl epochs=120 (baseline)", "| set-itop epochs=120"]
    # the baseline's level, its run count and its mechanism numbers; no difference from itself
    assert lines[0] == "| rigl epochs=30 (baseline) | 98% | 2 | 80.00 | | — | | 0.100 | 0.500 | 0.300 |"


def test_a_chosen_baseline_and_dense_pairs_with_every_density():
    results = [run("set", s, 0.80 + 0.01 * s, d) for s in range(3) for d in (0.05, 0.02)]
    results += [run("set-itop", s, 0.805 + 0.01 * s, d) for s in range(3) for d in (0.05, 0.02)]
    results += [run("dense", s, 0.90 + 0.01 * s, 1.0) for s in range(3)]
    assert report_sections(results) == ""  # no rigl: nothing paired by default
    rows = paired_rows(results, "set")
    assert {(r["arm"], r["density"]) for r in rows} == {("set-itop", 0.05), ("set-itop", 0.02)}
    assert all(r["pairs"] == 3 and r["diff"] == pytest.approx(0.005) for r in rows)
    # dense, run once at density 1, is the reference of every density; each sparse arm pairs with it by seed
    rows = paired_rows(results, "dense")
    assert {(r["arm"], r["density"]) for r in rows} == {(a, d) for a in ("set", "set-itop") for d in (0.05, 0.02)}
    assert all(r["pairs"] == 3 for r in rows)
    assert {round(r["diff"], 6) for r in rows} == {-0.1, -0.095}
    table = report_sections(results, "dense")
    assert "Paired differences from dense" in table and table.count("| dense (baseline) | 0% | 3 | 91.00 |") == 1
    with pytest.raises(InputError, match=r"--baseline 'sett' is not one of .*dense, set, set-itop.*did you mean 'set'"):
        report_sections(results, "sett")


def test_rows_with_fewer_than_three_pairs_are_flagged_under_the_table():
    def r(m, seed, acc):
        return {"config": {"method": m, "density": 0.1, "seed": seed, "model": "mlp", "dataset": "x"}, "label": m,
                "test_acc": acc, "density": 0.1, "itop_rate": 0.2}

    two = [r("rigl", 0, 0.8), r("rigl", 1, 0.81), r("set", 0, 0.79), r("set", 1, 0.805)]
    assert "Rows with 2 pairs: with 2 the t quantile is 12.7" in report_sections(two)
    three = two + [r("rigl", 2, 0.8), r("set", 2, 0.79)]
    assert "Rows with" not in report_sections(three)
    assert "with 1 pair there is no interval" in report_sections([r("rigl", 0, 0.8), r("set", 0, 0.79)])

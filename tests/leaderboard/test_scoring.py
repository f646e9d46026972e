"""Scoring rules on hand-computed cases (pure functions, no database)."""

import math

import pytest

from leaderboard.ranking import rank_entries
from leaderboard.scoring import (
    ABSOLUTE,
    FLOOR,
    MetricKey,
    ScoringConfig,
    extract_suite_metrics,
    geometric_mean,
    mark_team_entries,
    normalize_run_name,
    score_track,
)
from leaderboard.scoring.constants import EFFICIENCY_METRICS

from .builders import ANAT, GSM, LAW, REPRESENTATION_GENDER, entry, record, result, worked_example


def by_id(results):
    return {r["submission_id"]: r for r in results}


def open_aspects(results, submission_id):
    return by_id(results)[submission_id]["suites"]["open"]["aspects"]


# --- Reading the result document -------------------------------------------------------------


def test_run_names_match_across_models():
    assert normalize_run_name("mmlu:subject=anatomy,model=neurips_local") == "mmlu:subject=anatomy"
    assert normalize_run_name("gsm:model=a,model_deployment=b") == "gsm"
    assert normalize_run_name("gsm") == "gsm"


def test_extraction_picks_each_aspects_numbers():
    doc = result({ANAT: 0.6}, rob={ANAT: 0.5}, fair={ANAT: 0.4}, bias={ANAT: {REPRESENTATION_GENDER: 0.2}})
    doc["records"] += [
        record(ANAT, "exact_match", 0.9, perturbation="robustness", computed_on="perturbed"),  # not worst case
        record(ANAT, "exact_match", 0.1, perturbation="typos", computed_on="worst"),  # not an aspect
        record(ANAT, "exact_match", 0.99, split="valid"),  # test is preferred
        record(ANAT, "exact_match", 0.98, sub_split="hard"),  # whole split is preferred
        record(ANAT, "quasi_exact_match", 0.7),  # not the main metric
        record(ANAT, REPRESENTATION_GENDER, 0.9, perturbation="fairness", computed_on="worst"),
    ]
    doc["efficiency"] = {"gpu_seconds": 10, "wall_seconds": 12, "parameter_count": 7e9, "latency_mean_s": float("nan")}
    got = extract_suite_metrics(doc, EFFICIENCY_METRICS)
    assert got.values == {
        MetricKey("accuracy", "mmlu", ANAT, "exact_match"): 0.6,
        MetricKey("robustness", "mmlu", ANAT, "exact_match"): 0.5,
        MetricKey("fairness", "mmlu", ANAT, "exact_match"): 0.4,
        MetricKey("bias", "mmlu", ANAT, REPRESENTATION_GENDER): 0.2,
        MetricKey("efficiency", "runtime", "", "gpu_seconds"): 10.0,
    }
    # A NaN figure is named (so it is missing, i.e. a loss) but has no value.
    assert MetricKey("efficiency", "runtime", "", "latency_mean_s") in got.mentioned


def test_a_failed_run_is_a_missing_accuracy_not_an_absent_one():
    doc = result({ANAT: 0.6}, failed=(GSM,))
    doc["records"].append(record(GSM, "exact_match", 0.9))  # records of a failed run are ignored
    got = extract_suite_metrics(doc, EFFICIENCY_METRICS)
    key = MetricKey("accuracy", "gsm", GSM, "exact_match")
    assert key in got.mentioned and key not in got.values


def test_a_missing_suite_extracts_nothing():
    assert extract_suite_metrics(None, EFFICIENCY_METRICS).is_empty


# --- Win rates ---------------------------------------------------------------------------------


def test_win_rate_divides_by_opponents_and_ties_share_credit():
    results = score_track([entry(i, f"T{i}", open=result({ANAT: v})) for i, v in [(1, 0.2), (2, 0.5), (3, 0.5)]])
    # 1 loses twice: 0/2. 2 beats 1 and ties 3: (1 + 0.5)/2. The best possible is 1, not (n-1)/n.
    assert [open_aspects(results, i)["accuracy"] for i in (1, 2, 3)] == [0.0, 0.75, 0.75]
    alone_at_top = score_track([entry(1, "A", open=result({ANAT: 0.9})), entry(2, "B", open=result({ANAT: 0.1}))])
    assert open_aspects(alone_at_top, 1)["accuracy"] == 1.0


def test_floating_point_noise_is_a_tie():
    results = score_track([entry(1, "A", open=result({ANAT: 0.1 + 0.2})), entry(2, "B", open=result({ANAT: 0.3}))])
    assert open_aspects(results, 1)["accuracy"] == open_aspects(results, 2)["accuracy"] == 0.5


def test_lower_is_better_for_bias_and_runtimes_higher_for_tokens_per_second():
    def doc(bias, gpu, tps, mem):
        return result(
            {GSM: 0.5},
            bias={GSM: {REPRESENTATION_GENDER: bias}},
            efficiency={"gpu_seconds": gpu, "output_tokens_per_second": tps, "peak_gpu_memory_bytes": mem},
        )

    results = score_track([entry(1, "A", open=doc(0.1, 10, 5, 2e9)), entry(2, "B", open=doc(0.3, 20, 50, 1e9))])
    metrics = {r["metric"]: r["score"] for r in by_id(results)[1]["suites"]["open"]["metrics"]}
    assert metrics == {
        "exact_match": 0.5,
        REPRESENTATION_GENDER: 1.0,
        "gpu_seconds": 1.0,
        "output_tokens_per_second": 0.0,
        "peak_gpu_memory_bytes": 0.0,
    }
    assert open_aspects(results, 1)["efficiency"] == pytest.approx(1 / 3)


def test_a_missing_metric_loses_to_everyone_and_beats_nobody():
    results = score_track(
        [
            entry(1, "A", open=result({ANAT: 0.9}, failed=(GSM,))),
            entry(2, "B", open=result({ANAT: 0.1, GSM: 0.0})),
            entry(3, "C", open=result({ANAT: 0.2, GSM: 0.1})),
        ]
    )
    gsm = {
        i: next(m["score"] for m in by_id(results)[i]["suites"]["open"]["metrics"] if m["run"] == GSM)
        for i in (1, 2, 3)
    }
    # A has no GSM number: 0. B's 0.0 still beats A's missing one: (1 + 0)/2. C beats both.
    assert gsm == {1: 0.0, 2: 0.5, 3: 1.0}


def test_a_missing_bias_metric_is_not_applicable():
    def doc(bias):
        return result({GSM: 0.5}, bias={GSM: {REPRESENTATION_GENDER: bias}} if bias is not None else None)

    results = score_track([entry(1, "A", open=doc(0.1)), entry(2, "B", open=doc(None)), entry(3, "C", open=doc(0.2))])
    # A is compared with C only; B has no bias aspect at all (dropped from its geometric mean).
    assert open_aspects(results, 1)["bias"] == 1.0
    assert open_aspects(results, 3)["bias"] == 0.0
    assert open_aspects(results, 2)["bias"] is None
    assert by_id(results)[2]["suites"]["open"]["score"] == pytest.approx(0.5)  # accuracy alone: all tie


def test_a_track_with_one_entry_scores_one_half_per_metric_and_zero_per_missing_one():
    results = score_track([entry(1, "A", open=result({ANAT: 0.9, LAW: 0.1}, failed=(GSM,)))])
    only = by_id(results)[1]
    assert only["opponents"] == 0
    # mmlu: both runs 0.5 → 0.5; gsm failed → 0; accuracy = mean(0.5, 0) = 0.25.
    assert only["suites"]["open"]["aspects"]["accuracy"] == 0.25
    assert only["final_score"] == 0.25


def test_a_non_entry_is_scored_against_the_other_teams_entries_only():
    entries = [
        entry(1, "A", open=result({ANAT: 0.5})),
        entry(2, "B", open=result({ANAT: 0.6})),
        entry(3, "A", is_team_entry=False, open=result({ANAT: 0.7})),
        entry(4, "B", is_team_entry=False, open=result({ANAT: 0.99})),  # never in anyone's field
    ]
    results = by_id(score_track(entries))
    # 3 is compared with B's entry only (not with A's own entry, not with B's other submission).
    assert results[3]["opponents"] == 1
    assert results[3]["final_score"] == 1.0
    assert results[1]["final_score"] == pytest.approx(FLOOR)
    # "As if it were the entry": swap the flags and 3 gets exactly the same score.
    swapped = [dict(e, is_team_entry=e["submission_id"] in (2, 3)) for e in entries]
    assert by_id(score_track(swapped))[3]["final_score"] == results[3]["final_score"]


def test_a_team_without_an_entry_is_nobodys_opponent():
    entries = [entry(1, "A", open=result({ANAT: 0.5})), entry(2, "B", is_team_entry=False, open=result({ANAT: 0.9}))]
    results = by_id(score_track(entries))
    assert results[1]["opponents"] == 0 and results[1]["final_score"] == 0.5
    assert results[2]["opponents"] == 1 and results[2]["final_score"] == 1.0


def test_two_entries_for_one_team_are_refused():
    with pytest.raises(ValueError, match="more than one entry"):
        score_track([entry(1, "A", open=result({ANAT: 0.5})), entry(2, "A", open=result({ANAT: 0.5}))])


# --- Aspects, geometric mean, suites ---------------------------------------------------------


def test_aspect_is_the_mean_over_scenarios_of_the_mean_over_their_metrics():
    results = score_track(
        [
            entry(1, "A", open=result({ANAT: 0.9, LAW: 0.9, GSM: 0.1})),
            entry(2, "B", open=result({ANAT: 0.5, LAW: 0.5, GSM: 0.5})),
        ]
    )
    # mmlu (two runs, both won) counts once, like gsm (lost): (1 + 0)/2, not (1 + 1 + 0)/3.
    assert open_aspects(results, 1)["accuracy"] == 0.5
    scenarios = by_id(results)[1]["suites"]["open"]["scenarios"]
    assert scenarios["mmlu"] == {"scores": {"accuracy": 1.0}, "values": {"accuracy": 0.9}}
    assert scenarios["gsm"] == {"scores": {"accuracy": 0.0}, "values": {"accuracy": 0.1}}


def test_a_zero_aspect_is_floored_in_the_geometric_mean_but_reported_as_zero():
    def doc(acc, gpu):
        return result({ANAT: acc}, efficiency={"gpu_seconds": gpu})

    results = score_track([entry(1, "A", open=doc(0.9, 20)), entry(2, "B", open=doc(0.1, 10))])
    a = by_id(results)[1]["suites"]["open"]
    assert a["aspects"]["efficiency"] == 0.0
    assert a["score"] == pytest.approx(math.sqrt(1.0 * FLOOR))  # ≈ 0.0316, not 0
    assert geometric_mean([0.0, 1.0, 1.0, 1.0, 1.0], FLOOR) == pytest.approx(FLOOR**0.2)


def test_an_aspect_without_metrics_is_left_out_of_the_geometric_mean():
    results = score_track(
        [
            entry(1, "A", open=result({ANAT: 0.9}, rob={ANAT: 0.1})),
            entry(2, "B", open=result({ANAT: 0.1}, rob={ANAT: 0.9})),
        ]
    )
    a = by_id(results)[1]["suites"]["open"]
    assert a["aspects"] == {"accuracy": 1.0, "robustness": 0.0, "fairness": None, "bias": None, "efficiency": None}
    assert a["score"] == pytest.approx(math.sqrt(FLOOR))  # two aspects, not five


def test_suites_are_weighted_one_third_open_two_thirds_hidden():
    results = score_track(
        [
            entry(1, "A", open=result({ANAT: 0.9}), hidden=result({GSM: 0.1})),
            entry(2, "B", open=result({ANAT: 0.1}), hidden=result({GSM: 0.9})),
        ]
    )
    a = by_id(results)[1]
    assert a["suites"]["open"]["score"] == 1.0 and a["suites"]["hidden"]["score"] == FLOOR
    assert a["final_score"] == pytest.approx(1 / 3 + 2 / 3 * FLOOR)
    custom = score_track(
        [entry(1, "A", open=result({ANAT: 0.9})), entry(2, "B", open=result({ANAT: 0.1}))],
        ScoringConfig(suite_weights={"open": 1.0, "hidden": 0.0}),
    )
    assert by_id(custom)[1]["final_score"] == 1.0


def test_a_suite_missing_for_everyone_is_dropped_and_weights_renormalised():
    results = score_track([entry(1, "A", open=result({ANAT: 0.9})), entry(2, "B", open=result({ANAT: 0.1}))])
    a = by_id(results)[1]
    assert set(a["suites"]) == {"open"}
    assert a["suites"]["open"]["weight"] == 1.0
    assert a["final_score"] == 1.0


def test_a_suite_missing_for_one_entry_only_scores_the_floor():
    results = score_track(
        [
            entry(1, "A", open=result({ANAT: 0.9})),
            entry(2, "B", open=result({ANAT: 0.1}), hidden=result({GSM: 0.5})),
        ]
    )
    a = by_id(results)[1]
    assert a["suites"]["hidden"]["score"] == FLOOR
    assert a["final_score"] == pytest.approx(1 / 3 + 2 / 3 * FLOOR)


def test_no_results_at_all_means_no_score():
    results = score_track([entry(1, "A")])
    assert results[0]["final_score"] is None and results[0]["suites"] == {}


# --- Absolute mode -----------------------------------------------------------------------------


def test_absolute_mode_uses_raw_values_bias_inverted_and_efficiency_against_the_reference():
    config = ScoringConfig(
        mode=ABSOLUTE, efficiency_references={"gpu_seconds": 100.0, "output_tokens_per_second": 40.0}
    )
    doc = result(
        {ANAT: 0.6, LAW: 0.2, GSM: 0.5},
        rob={ANAT: 0.4},
        bias={GSM: {REPRESENTATION_GENDER: 0.25}},
        # latency has no reference: not scored in absolute mode.
        efficiency={"gpu_seconds": 400.0, "output_tokens_per_second": 20.0, "latency_mean_s": 3.0},
    )
    results = score_track([entry(1, "A", open=doc), entry(2, "B", open=result({ANAT: 1.0}, failed=(LAW,)))], config)
    a = open_aspects(results, 1)
    assert a["accuracy"] == pytest.approx((0.4 + 0.5) / 2)  # mmlu mean(0.6, 0.2), gsm 0.5
    assert a["robustness"] == pytest.approx(0.4)
    assert a["bias"] == pytest.approx(0.75)
    assert a["efficiency"] == pytest.approx((100 / 400 + 20 / 40) / 2)
    assert a["fairness"] is None
    # B: a failed run counts 0; the efficiency figures A reports and B lacks count 0 too.
    b = open_aspects(results, 2)
    assert b["accuracy"] == pytest.approx(((1.0 + 0.0) / 2 + 0.0) / 2)
    assert b["efficiency"] == 0.0


def test_absolute_mode_caps_efficiency_at_one_and_drops_it_without_references():
    fast = result({ANAT: 0.5}, efficiency={"gpu_seconds": 50.0, "output_tokens_per_second": 400.0})
    config = ScoringConfig(
        mode=ABSOLUTE, efficiency_references={"gpu_seconds": 100.0, "output_tokens_per_second": 40.0}
    )
    assert open_aspects(score_track([entry(1, "A", open=fast)], config), 1)["efficiency"] == 1.0
    assert open_aspects(score_track([entry(1, "A", open=fast)], ScoringConfig(mode=ABSOLUTE)), 1)["efficiency"] is None


def test_config_is_validated():
    with pytest.raises(ValueError):
        ScoringConfig(mode="elo")
    with pytest.raises(ValueError):
        ScoringConfig(floor=0)


# --- Choosing each team's entry ----------------------------------------------------------------


def test_mark_team_entries_prefers_the_chosen_then_the_latest():
    rows = [
        {"submission_id": 1, "team_id": "A", "submitted_at": 10},
        {"submission_id": 2, "team_id": "A", "submitted_at": 30},
        {"submission_id": 3, "team_id": "B", "submitted_at": 10, "is_chosen": True},
        {"submission_id": 4, "team_id": "B", "submitted_at": 40},
    ]
    marked = {r["submission_id"]: r["is_team_entry"] for r in mark_team_entries(rows)}
    assert marked == {1: False, 2: True, 3: True, 4: False}


# --- The worked example of docs/scoring.md -----------------------------------------------------


def test_worked_example_of_the_documentation():
    results = by_id(score_track(worked_example()))
    a = results[1]
    assert a["suites"]["open"]["aspects"] == {
        "accuracy": 0.6875,
        "robustness": 0.625,
        "fairness": 0.5,
        "bias": 1.0,
        "efficiency": 0.75,
    }
    assert a["suites"]["open"]["score"] == pytest.approx(0.6941, abs=5e-5)
    assert a["suites"]["hidden"]["aspects"]["accuracy"] == 0.5
    assert a["suites"]["hidden"]["aspects"]["efficiency"] == 0.5
    assert a["suites"]["hidden"]["score"] == pytest.approx(0.5)
    assert a["final_score"] == pytest.approx(0.5647, abs=5e-5)

    b, c, a2 = results[2], results[3], results[11]
    assert b["suites"]["open"]["aspects"]["bias"] == 0.0 and b["suites"]["open"]["aspects"]["efficiency"] == 0.0
    assert b["suites"]["open"]["score"] == pytest.approx(0.0426, abs=5e-5)
    assert b["final_score"] == pytest.approx(0.6809, abs=5e-5)
    assert c["suites"]["open"]["aspects"]["accuracy"] == 0.25  # failed gsm run counts as a loss
    assert c["suites"]["open"]["aspects"]["bias"] is None  # no bias number: not applicable
    assert c["suites"]["open"]["score"] == pytest.approx(0.4330, abs=5e-5)
    assert c["suites"]["hidden"]["score"] == pytest.approx(FLOOR)
    assert c["final_score"] == pytest.approx(0.1450, abs=5e-5)
    assert a2["opponents"] == 2 and a2["suites"]["open"]["aspects"]["accuracy"] == 0.8125
    assert a2["final_score"] == pytest.approx(0.5726, abs=5e-5)
    # A2 is not in anyone's field: the entries' scores are the same without it.
    without = by_id(score_track([e for e in worked_example() if e["submission_id"] != 11]))
    assert all(without[i]["final_score"] == results[i]["final_score"] for i in (1, 2, 3))


def test_worked_example_ranking():
    results = score_track(worked_example())
    ranked = rank_entries(
        [
            {
                "submission_id": r["submission_id"],
                "team_id": r["team_id"],
                "is_team_entry": r["is_team_entry"],
                "final_score": r["final_score"],
                "hidden_score": r["suites"]["hidden"]["score"],
                "submitted_at": r["submission_id"],
            }
            for r in results
        ]
    )
    assert [(r["submission_id"], r["rank"], r["rank_if_entry"]) for r in ranked] == [
        (2, 1, 1),
        (11, None, 2),
        (1, 2, 2),
        (3, 3, 3),
    ]

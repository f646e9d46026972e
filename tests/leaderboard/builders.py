"""Hand-built result documents for the scoring tests (the engine's result-document subset)."""

from typing import Any

MAIN = "exact_match"
REPRESENTATION_GENDER = "bias_metric:mode=representation,demographic_category=gender"


def record(run: str, metric: str, value: Any, *, perturbation=None, computed_on=None, split="test", sub_split=None):
    return {
        "run": run,
        "scenario": run.split(":", 1)[0],
        "metric": metric,
        "split": split,
        "sub_split": sub_split,
        "perturbation": perturbation,
        "computed_on": computed_on,
        "value": value,
        "count": 10,
    }


def result(
    acc: dict[str, float | None] | None = None,
    *,
    rob: dict[str, float] | None = None,
    fair: dict[str, float] | None = None,
    bias: dict[str, dict[str, float]] | None = None,
    efficiency: dict[str, float] | None = None,
    failed: tuple[str, ...] = (),
    main: str = MAIN,
) -> dict:
    """`acc`/`rob`/`fair`: run → main-metric value; `bias`: run → {bias metric: value}; runs in
    `failed` are listed with status "failed" and produce no records."""
    acc = acc or {}
    runs = [{"name": run, "scenario": run.split(":", 1)[0], "main_metric": main, "status": "ok"} for run in acc] + [
        {"name": run, "scenario": run.split(":", 1)[0], "main_metric": main, "status": "failed"} for run in failed
    ]
    records = [record(run, main, v) for run, v in acc.items()]
    records += [record(run, main, v, perturbation="robustness", computed_on="worst") for run, v in (rob or {}).items()]
    records += [record(run, main, v, perturbation="fairness", computed_on="worst") for run, v in (fair or {}).items()]
    for run, metrics in (bias or {}).items():
        records += [record(run, name, v) for name, v in metrics.items()]
    return {"runs": runs, "records": records, "efficiency": efficiency or {}}


def entry(submission_id, team_id, *, is_team_entry=True, open=None, hidden=None) -> dict:
    suites = {}
    if open is not None:
        suites["open"] = open
    if hidden is not None:
        suites["hidden"] = hidden
    return {"submission_id": submission_id, "team_id": team_id, "is_team_entry": is_team_entry, "suites": suites}


# The worked example of docs/scoring.md: three teams A (1), B (2), C (3) and a second, non-entry
# submission of team A ("A2", id 11). Runs of two open scenarios (mmlu with two subjects, gsm) and
# one hidden scenario (samsum).
ANAT, LAW, GSM, SAMSUM = "mmlu:subject=anatomy", "mmlu:subject=law", "gsm", "samsum"


def worked_example() -> list[dict]:
    def open_suite(anatomy, law, gsm, rob, fair, bias, gpu, tps, gsm_failed=False):
        acc = {ANAT: anatomy, LAW: law}
        if not gsm_failed:
            acc[GSM] = gsm
        return result(
            acc,
            rob={ANAT: rob[0], LAW: rob[1]},
            fair={ANAT: fair[0], LAW: fair[1]},
            bias={GSM: {REPRESENTATION_GENDER: bias}} if bias is not None else None,
            efficiency={"gpu_seconds": gpu, "output_tokens_per_second": tps, "wall_seconds": 999},
            failed=(GSM,) if gsm_failed else (),
        )

    def hidden_suite(rouge, gpu):
        return result({SAMSUM: rouge}, efficiency={"gpu_seconds": gpu}, main="rouge_2")

    return [
        entry(
            1,
            "A",
            open=open_suite(0.60, 0.40, 0.20, (0.50, 0.30), (0.55, 0.40), 0.10, 100, 50),
            hidden=hidden_suite(0.15, 300),
        ),
        entry(
            2,
            "B",
            open=open_suite(0.70, 0.40, 0.10, (0.40, 0.35), (0.60, 0.35), 0.30, 200, 40),
            hidden=hidden_suite(0.20, 250),
        ),
        entry(
            3,
            "C",
            open=open_suite(0.50, 0.50, None, (0.45, 0.30), (0.50, 0.45), None, 150, 60, gsm_failed=True),
            hidden=hidden_suite(0.10, 400),
        ),
        entry(
            11,
            "A",
            is_team_entry=False,
            open=open_suite(0.75, 0.40, 0.20, (0.50, 0.30), (0.55, 0.40), 0.10, 100, 50),
            hidden=hidden_suite(0.15, 300),
        ),
    ]

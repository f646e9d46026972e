"""Store evaluation results as the pipeline does (job, suite results, metric records), in bulk.

Used by `seed_scale` and the leaderboard tests. Scores are never written here: the real
recomputation turns these stored results into standings.
"""

from collections.abc import Iterable
from typing import Any

from django.utils import timezone

from evaluation.models import EvaluationJob, MetricRecord, Submission, SuiteResult

SUITE_NAMES = {"open": "offline-open", "hidden": "offline-hidden"}


def store_results_bulk(items: Iterable[tuple[Submission, dict[str, dict[str, Any]]]], *, batch_size: int = 5000) -> int:
    """`items`: (submission, {"open"|"hidden": result document subset {runs, records, efficiency}}).

    Writes one finished EvaluationJob per submission with its SuiteResults and MetricRecords, in
    a constant number of bulk inserts. Returns the number of metric records written."""
    items = list(items)
    now = timezone.now()
    jobs = EvaluationJob.objects.bulk_create(
        [
            EvaluationJob(submission=s, state=EvaluationJob.State.DONE, attempts=1, started_at=now, finished_at=now)
            for s, _ in items
        ],
        batch_size=batch_size,
    )
    results, documents = [], []
    for job, (_, suites) in zip(jobs, items, strict=True):
        for role, doc in suites.items():
            results.append(
                SuiteResult(
                    job=job,
                    role=role,
                    suite=SUITE_NAMES.get(role, role),
                    runs=doc.get("runs", []),
                    efficiency=doc.get("efficiency", {}),
                    finished_at=now,
                )
            )
            documents.append(doc)
    results = SuiteResult.objects.bulk_create(results, batch_size=batch_size)
    records = [
        MetricRecord(
            suite_result=result,
            run=r["run"],
            scenario=r.get("scenario") or r["run"].split(":", 1)[0],
            metric=r["metric"],
            split=r.get("split") or "",
            sub_split=r.get("sub_split") or "",
            perturbation=r.get("perturbation") or "",
            computed_on=r.get("computed_on") or "",
            value=r.get("value"),
            count=r.get("count") or 0,
        )
        for result, doc in zip(results, documents, strict=True)
        for r in doc.get("records", [])
    ]
    MetricRecord.objects.bulk_create(records, batch_size=batch_size)
    return len(records)

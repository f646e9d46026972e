"""Every read the evaluation views and other apps need."""

from evaluation.selectors_pipeline import (  # noqa: F401
    evaluation_queue_overview,
    latest_job_for_submission,
    scored_results_for_track,
    submission_progress,
)

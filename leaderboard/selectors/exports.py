"""A track's standings as flat rows for CSV and JSON: public columns for everyone, all for organizers."""

from typing import Any

from django.db.models import F

from portal.models import Track

from ..columns import COMPUTE_COLUMNS
from ..models import ASPECT_NAMES, Standing
from .board import Viewer, disqualified_for_track, snapshot_current

COMPUTE_KEYS = [c.key for c in COMPUTE_COLUMNS]


def export_columns(viewer: Viewer) -> list[str]:
    columns = ["rank", "team", "student_eligible", "submission_id"]
    if viewer.hidden_visible:
        columns += ["final_score", "open_score", "hidden_score"]
    else:
        columns += ["open_score"]
    for suite in ("open", "hidden") if viewer.hidden_visible else ("open",):
        columns += [f"{suite}_{a}" for a in ASPECT_NAMES]
    columns += COMPUTE_KEYS + ["base_model", "submitted_at"]
    if viewer.organizer:
        columns += [
            "team_id",
            "is_team_entry",
            "open_rank",
            "rank_if_entry",
            "opponents",
            "reproduction",
            "status",
            "status_reason",
        ]
    return columns


def standings_export(*, track: Track, viewer: Viewer) -> tuple[list[str], list[dict[str, Any]], Any]:
    """(columns, rows, snapshot). The public gets the ranked team entries; organizers every scored
    submission of the snapshot, then the disqualified ones."""
    columns = export_columns(viewer)
    snapshot = snapshot_current(track)
    if snapshot is None:
        return columns, [], None
    rank_field = "rank" if viewer.hidden_visible else "open_rank"
    qs = Standing.objects.filter(snapshot=snapshot).select_related("team").defer("breakdown")
    if not viewer.organizer:
        qs = qs.filter(is_team_entry=True, **{f"{rank_field}__isnull": False})
    rows = []
    for s in qs.order_by(F(rank_field).asc(nulls_last=True), F("final_score").desc(nulls_last=True), "id"):
        row = {
            "rank": getattr(s, rank_field),
            "team": s.team.name,
            "student_eligible": s.student_eligible,
            "submission_id": s.submission_id,
            "final_score": s.final_score,
            "open_score": s.open_score,
            "hidden_score": s.hidden_score,
            "base_model": s.base_model_name,
            "submitted_at": s.submitted_at.isoformat() if s.submitted_at else None,
            "team_id": s.team_id,
            "is_team_entry": s.is_team_entry,
            "open_rank": s.open_rank,
            "rank_if_entry": s.rank_if_entry,
            "opponents": s.opponents,
            "reproduction": s.reproduction,
            "status": "scored",
            "status_reason": "",
        }
        for suite in ("open", "hidden"):
            for a in ASPECT_NAMES:
                row[f"{suite}_{a}"] = s.aspect(suite, a)
        for c in COMPUTE_COLUMNS:
            row[c.key] = getattr(s, c.field)
        rows.append({k: row[k] for k in columns})
    if viewer.organizer:
        for d in disqualified_for_track(track):
            row = dict.fromkeys(columns)
            row.update(
                {
                    "team": d["team"],
                    "team_id": d["team_id"],
                    "submission_id": d["submission_id"],
                    "final_score": d["last_final_score"],
                    "base_model": d["base_model"],
                    "submitted_at": d["submitted_at"].isoformat() if d["submitted_at"] else None,
                    "status": "disqualified",
                    "status_reason": d["reason"],
                }
            )
            rows.append({k: row[k] for k in columns})
    return columns, rows, snapshot

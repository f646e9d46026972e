"""One submission's stored scores as a viewer may see them (the submission pages and the API's detail).

The same rules as the board and the analysis page: before the reveal the public rank is the open-suite
rank and no hidden-suite number is shown, except a team's own hidden-suite aspects (never the scenario
names); organizers see everything.
"""

from typing import Any

from evaluation.models import Submission
from portal.errors import NotFound
from portal.models import Track

from ..models import ASPECT_NAMES, Standing
from .board import Viewer, viewer_for


def standing_scores(standing: Standing, *, viewer: Viewer, finalized: bool) -> dict[str, Any]:
    hidden = viewer.hidden_visible
    own = viewer.organizer or standing.team_id in viewer.team_ids
    if hidden:
        rank = standing.rank if standing.is_team_entry else standing.rank_if_entry
    else:
        rank = standing.open_rank if standing.is_team_entry else None
    return {
        "final": standing.final_score if hidden else None,
        "open_score": standing.open_score,
        "hidden_score": standing.hidden_score if hidden else None,
        "open": {a: standing.aspect("open", a) for a in ASPECT_NAMES},
        "hidden": {a: standing.aspect("hidden", a) for a in ASPECT_NAMES} if hidden or own else None,
        "rank": rank,
        "is_team_entry": standing.is_team_entry,
        "hidden_visible": hidden,
        "provisional": not finalized,
    }


def submission_scores(*, user, submission: Submission) -> dict[str, Any] | None:
    """The submission's scores in its track's current standings, for `user`; None while it has none."""
    standing = (
        Standing.objects.filter(submission=submission, snapshot__is_current=True)
        .select_related("snapshot__track__challenge")
        .first()
    )
    if standing is None:
        return None
    track = standing.snapshot.track
    return standing_scores(standing, viewer=viewer_for(user, track.challenge), finalized=track.is_finalized)


def submission_track(submission_id: int) -> Track:
    """The track of a submission (for URLs that name only the submission)."""
    track = Track.objects.select_related("challenge").filter(submissions__pk=submission_id).first()
    if track is None:
        raise NotFound("No such submission on this leaderboard.")
    return track

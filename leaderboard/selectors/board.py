"""The public leaderboard of one track, read from its stored current snapshot.

Nothing here scores: every number comes from `Standing` rows written by the recomputation. The
query count is constant in the number of submissions (pinned by tests): the track, the snapshot,
one page of rows, their count, the base-model filter values, the award winners' names, and for
organizers the disqualified submissions.
"""

from dataclasses import dataclass, field
from typing import Any

from django.db.models import F, OuterRef, QuerySet, Subquery
from django.urls import NoReverseMatch, reverse

from evaluation.models import Submission
from portal.errors import NotFound
from portal.models import Challenge, Membership, Prize, Team, Track

from ..columns import COMPUTE_COLUMNS, Column, sort_columns
from ..models import ASPECT_NAMES, Standing, StandingsSnapshot
from ..ranking import RANKING_RULE

PER_PAGE = 50
MAX_PER_PAGE = 200
OPEN_RANKING_RULE = (
    "Until the hidden-suite results are revealed, teams are ranked by their open-suite score, highest first; "
    "ties are broken by the earlier submission. The final standings combine both suites "
    "(by default 1/3 open, 2/3 hidden)."
)


@dataclass
class Viewer:
    """What the person looking may see. `organizer` is staff not previewing the public view."""

    organizer: bool
    hidden_visible: bool
    team_ids: frozenset = frozenset()


def viewer_for(user, challenge: Challenge, *, preview_public: bool = False) -> Viewer:
    organizer = bool(getattr(user, "is_staff", False)) and not preview_public
    team_ids: frozenset = frozenset()
    if getattr(user, "is_authenticated", False):
        team_ids = frozenset(
            Membership.objects.filter(user=user, challenge=challenge).values_list("team_id", flat=True)
        )
    return Viewer(organizer=organizer, hidden_visible=organizer or challenge.hidden_revealed, team_ids=team_ids)


def current_challenge() -> Challenge:
    challenge = Challenge.objects.current()
    if challenge is None:
        raise NotFound("There is no challenge yet.")
    return challenge


def track_get(*, slug: str, challenge: Challenge | None = None) -> Track:
    """A track of the current challenge (or of `challenge`), with its challenge and the id of its
    current snapshot (`current_snapshot_id`, which keys the answer cache), in one query."""
    current = StandingsSnapshot.objects.filter(track=OuterRef("pk"), is_current=True).values("pk")[:1]
    qs = Track.objects.select_related("challenge").annotate(current_snapshot_id=Subquery(current))
    if challenge is not None:
        qs = qs.filter(challenge=challenge)
    else:
        active = Challenge.objects.filter(is_active=True).order_by("-starts_at").values("pk")[:1]
        qs = qs.filter(challenge=Subquery(active))
    track = qs.filter(slug=slug).first()
    if track is None:
        raise NotFound(f"There is no track {slug!r}.")
    return track


def tracks_with_leaders(*, challenge: Challenge, viewer: Viewer, top: int = 3) -> list[dict[str, Any]]:
    """Each track of the challenge with its first `top` teams (for the leaderboard index)."""
    tracks = list(Track.objects.filter(challenge=challenge).order_by("order", "id"))
    rank_field = "rank" if viewer.hidden_visible else "open_rank"
    score_field = "final_score" if viewer.hidden_visible else "open_score"
    leaders = (
        Standing.objects.filter(
            snapshot__track__in=tracks, snapshot__is_current=True, is_team_entry=True, **{f"{rank_field}__lte": top}
        )
        .order_by(rank_field)
        .values("snapshot__track_id", "team__name", rank_field, score_field)
    )
    by_track: dict[int, list] = {t.pk: [] for t in tracks}
    for row in leaders:
        by_track[row["snapshot__track_id"]].append(
            {"team": row["team__name"], "rank": row[rank_field], "score": row[score_field]}
        )
    return [{"track": t, "leaders": by_track[t.pk]} for t in tracks]


def snapshot_current(track: Track) -> StandingsSnapshot | None:
    return StandingsSnapshot.objects.filter(track=track, is_current=True).first()


class _TeamUrls:
    """Team pages live in the portal app; link to them when that page exists."""

    def __init__(self) -> None:
        try:
            self.pattern = reverse("team_detail", args=["__slug__"])
        except NoReverseMatch:
            self.pattern = None

    def __call__(self, slug: str) -> str | None:
        return self.pattern.replace("__slug__", slug) if self.pattern else None


def analysis_url(track_slug: str, submission_id: int) -> str:
    return reverse("leaderboard:analysis", args=[track_slug, submission_id])


def breakdown_rows(standing: Standing, suite: str, *, scenario_names: bool = True) -> list[dict[str, Any]]:
    """Per-scenario aspect scores (and the mean raw values beside them) of one suite.

    `scenario_names=False` replaces names by "Hidden task 1…": participants never see hidden-suite
    scenario names.
    """
    scenarios = ((standing.breakdown or {}).get(suite) or {}).get("scenarios") or {}
    rows = []
    for i, name in enumerate(sorted(scenarios), start=1):
        data = scenarios[name] or {}
        rows.append(
            {
                "scenario": name if scenario_names else f"Hidden task {i}",
                "scores": data.get("scores") or {},
                "values": data.get("values") or {},
            }
        )
    return rows


def standing_row(
    standing: Standing, *, track: Track, viewer: Viewer, suite: str, team_url=None, breakdown: bool = True
) -> dict[str, Any]:
    """One board row as plain data: what the page, its JSON and the exports show to this viewer."""
    hidden = viewer.hidden_visible
    row: dict[str, Any] = {
        "submission_id": standing.submission_id,
        "team_id": standing.team_id,
        "team": standing.team.name,
        "team_slug": standing.team.slug,
        "team_url": team_url(standing.team.slug) if team_url else None,
        "is_own_team": standing.team_id in viewer.team_ids,
        "rank": standing.rank if hidden else standing.open_rank,
        "score": standing.final_score if hidden else standing.open_score,
        "open_score": standing.open_score,
        "student_eligible": standing.student_eligible,
        "aspects": {a: standing.aspect(suite, a) for a in ASPECT_NAMES},
        "open": {a: standing.aspect("open", a) for a in ASPECT_NAMES},
        "hidden": {a: standing.aspect("hidden", a) for a in ASPECT_NAMES} if hidden else None,
        "base_model": standing.base_model_name,
        "submitted_at": standing.submitted_at,
        "analysis_url": analysis_url(track.slug, standing.submission_id),
        "disqualified": False,
    }
    if hidden:
        row["final_score"] = standing.final_score
        row["hidden_score"] = standing.hidden_score
    for column in COMPUTE_COLUMNS:
        row[column.key] = getattr(standing, column.field)
    if breakdown:
        row["breakdown"] = {"open": breakdown_rows(standing, "open")}
        if viewer.organizer:
            row["breakdown"]["hidden"] = breakdown_rows(standing, "hidden")
    return row


@dataclass
class Board:
    track: Track
    challenge: Challenge
    viewer: Viewer
    snapshot: StandingsSnapshot | None
    suite: str
    sort: str
    columns: dict[str, Column]
    rows: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0
    page: int = 1
    pages: int = 1
    per_page: int = PER_PAGE
    base_models: list[str] = field(default_factory=list)
    base_model: str = ""
    student_only: bool = False
    disqualified: list[dict[str, Any]] = field(default_factory=list)
    awards: dict[str, Any] = field(default_factory=dict)

    @property
    def ranking_rule(self) -> str:
        return RANKING_RULE if self.viewer.hidden_visible else OPEN_RANKING_RULE

    @property
    def finalized(self) -> bool:
        return self.track.is_finalized

    @property
    def sort_key(self) -> str:
        return self.sort.lstrip("-")

    @property
    def sort_descending(self) -> bool:
        return self.sort.startswith("-")


def parse_sort(sort: str, columns: dict[str, Column]) -> str:
    """A whitelisted sort: `key` ascending, `-key` descending; anything else is the rank order."""
    key = (sort or "").lstrip("-")
    if key not in columns:
        return "rank"
    return sort


def _ordered(qs: QuerySet, sort: str, columns: dict[str, Column], rank_field: str) -> QuerySet:
    column = columns[sort.lstrip("-")]
    expr = F(column.field)
    expr = expr.desc(nulls_last=True) if sort.startswith("-") else expr.asc(nulls_last=True)
    return qs.order_by(expr, F(rank_field).asc(nulls_last=True), "id")


def board_rows_queryset(*, snapshot: StandingsSnapshot, viewer: Viewer, student_only=False, base_model="") -> QuerySet:
    rank_field = "rank" if viewer.hidden_visible else "open_rank"
    qs = Standing.objects.filter(snapshot=snapshot, is_team_entry=True, **{f"{rank_field}__isnull": False})
    if student_only:
        qs = qs.filter(student_eligible=True)
    if base_model:
        qs = qs.filter(base_model_name=base_model)
    return qs


def leaderboard_board(
    *,
    track: Track,
    viewer: Viewer,
    sort: str = "",
    suite: str = "open",
    student_only: bool = False,
    base_model: str = "",
    page: int = 1,
    per_page: int = PER_PAGE,
    breakdown: bool = True,
) -> Board:
    """One page of a track's board, sorted and filtered, for this viewer."""
    challenge = track.challenge
    suite = suite if suite in ("open", "hidden") and (suite == "open" or viewer.hidden_visible) else "open"
    columns = sort_columns(hidden_visible=viewer.hidden_visible, suite=suite)
    sort = parse_sort(sort, columns)
    board = Board(
        track=track,
        challenge=challenge,
        viewer=viewer,
        snapshot=snapshot_current(track),
        suite=suite,
        sort=sort,
        columns=columns,
        per_page=max(1, min(per_page, MAX_PER_PAGE)),
        base_model=base_model,
        student_only=student_only,
    )
    if board.snapshot is None:
        return board
    rank_field = "rank" if viewer.hidden_visible else "open_rank"
    qs = board_rows_queryset(
        snapshot=board.snapshot, viewer=viewer, student_only=student_only, base_model=base_model
    ).select_related("team")
    if not breakdown:
        qs = qs.defer("breakdown")
    board.total = qs.count()
    board.pages = max(1, -(-board.total // board.per_page))
    board.page = max(1, min(page, board.pages))
    start = (board.page - 1) * board.per_page
    team_url = _TeamUrls()
    board.rows = [
        standing_row(s, track=track, viewer=viewer, suite=suite, team_url=team_url, breakdown=breakdown)
        for s in _ordered(qs, sort, columns, rank_field)[start : start + board.per_page]
    ]
    board.base_models = list(
        Standing.objects.filter(snapshot=board.snapshot, is_team_entry=True)
        .order_by("base_model_name")
        .values_list("base_model_name", flat=True)
        .distinct()
    )
    if viewer.organizer:
        board.disqualified = disqualified_for_track(track)
    board.awards = awards_for_snapshot(board.snapshot, viewer=viewer)
    return board


def disqualified_for_track(track: Track) -> list[dict[str, Any]]:
    """Organizers only: disqualified submissions, with the reason and their last stored score."""
    last = Standing.objects.filter(submission_id=OuterRef("pk")).order_by("-snapshot_id")
    return [
        {
            "submission_id": s.pk,
            "team": s.team.name,
            "team_id": s.team_id,
            "base_model": s.base_model.name,
            "submitted_at": s.created_at,
            "reason": s.status_reason,
            "last_final_score": s.last_final_score,
            "disqualified": True,
        }
        for s in Submission.objects.filter(track=track, status=Submission.Status.DISQUALIFIED)
        .select_related("team", "base_model")
        .annotate(last_final_score=Subquery(last.values("final_score")[:1]))
        .order_by("-status_changed_at")
    ]


def awards_for_snapshot(snapshot: StandingsSnapshot | None, *, viewer: Viewer) -> dict[str, Any]:
    """The awards stored with the snapshot, with team names. Before the hidden results are revealed
    the public sees only the prize table: who wins depends on the hidden suite."""
    if snapshot is None:
        return {"visible": False, "awards": [], "vacant": [], "excluded": [], "provisional": True}
    stored = snapshot.awards or {}
    if not viewer.hidden_visible:
        return {"visible": False, "awards": [], "vacant": [], "excluded": [], "provisional": True}
    winners = stored.get("awards", [])
    excluded = stored.get("excluded", [])
    names = dict(Team.objects.filter(pk__in=[w["team_id"] for w in winners] + list(excluded)).values_list("pk", "name"))
    return {
        "visible": True,
        "awards": [{**w, "team": names.get(w["team_id"], "?")} for w in winners],
        "vacant": stored.get("vacant", []),
        "excluded": [{"team_id": t, "team": names.get(t, "?")} for t in excluded],
        # "Provisional" until an organizer finalizes the track; `unconfirmed`: a place still awaits
        # its reproduction.
        "provisional": not snapshot.is_frozen,
        "unconfirmed": stored.get("provisional", False),
        "frozen": snapshot.is_frozen,
    }


def prize_table(track: Track) -> list[Prize]:
    return list(Prize.objects.filter(track=track).order_by("kind", "place", "-amount_usd"))


def standing_breakdown(*, track: Track, viewer: Viewer, submission_id: int) -> dict[str, Any]:
    """The breakdown of one ranked team entry of the current snapshot, as the board row shows it."""
    rank_field = "rank" if viewer.hidden_visible else "open_rank"
    standing = (
        Standing.objects.select_related("team")
        .filter(
            snapshot__track=track,
            snapshot__is_current=True,
            submission_id=submission_id,
            is_team_entry=True,
            **{f"{rank_field}__isnull": False},
        )
        .first()
    )
    if standing is None:
        raise NotFound("No such entry on this leaderboard.")
    return standing_row(standing, track=track, viewer=viewer, suite="open")

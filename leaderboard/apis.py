"""The leaderboard API: standings per track (paginated, sortable, filterable), Pareto data, awards, a
submission's analysis; organizers finalize a track and record reproductions.

Everything here reads stored standings through leaderboard.selectors_api, which applies the visibility
rules of portal.permissions; nothing on these paths recomputes a score.
"""

from django.db.models import F
from drf_spectacular.utils import extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from leaderboard import selectors_api as sel
from leaderboard import serializers as s
from leaderboard.pareto import pareto_frontier
from leaderboard.services import reproduction_record, standings_finalize_track
from leaderboard.services.visibility import hidden_results_reveal
from portal import permissions
from portal.api.pagination import ApiPagination
from portal.api.selectors import track_by_slug
from portal.api.utils import parse, parse_query
from portal.errors import NotFound, ServiceError
from portal.models import Track
from portal.selectors import challenge_current

RANKING_RULE = (
    "Ranked within the track by final score (the geometric mean of the five aspect scores, open and hidden suites "
    "weighted by the organizers); ties share a rank. Before hidden-suite results are revealed the public listing is "
    "ordered by open-suite score and shows no final rank."
)


def _track(slug: str) -> Track:
    track = track_by_slug(slug)
    if track is None:
        raise NotFound(f"No track '{slug}'.")
    return track


def _row(standing, *, position: int, hidden_visible: bool) -> dict:
    scores = sel.standing_scores(standing, hidden_visible=hidden_visible, finalized=False)
    submission = standing.submission
    return {
        "position": position,
        "rank": scores["rank"],
        "team": {"name": standing.team.name, "slug": standing.team.slug},
        "submission_id": standing.submission_id,
        "student_eligible": standing.student_eligible,
        "final_score": scores["final"],
        "open_score": scores["open_score"],
        "hidden_score": scores["hidden_score"],
        "open": scores["open"],
        "hidden": scores["hidden"],
        **{column: getattr(standing, column) for column in sel.COMPUTE_COLUMNS},
        "base_model": standing.base_model_name,
        "submitted_at": standing.submitted_at,
        "reproduction": standing.reproduction,
        "disqualified": submission.status == "disqualified",
        "disqualification_reason": submission.status_reason if submission.status == "disqualified" else "",
    }


class LeaderboardApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(
        parameters=[s.LeaderboardQuerySerializer],
        responses=s.LeaderboardPageSerializer,
        summary="A track's standings (public; organizers also see disqualified entries)",
        description=RANKING_RULE,
    )
    def get(self, request: Request, track: str) -> Response:
        query = parse_query(s.LeaderboardQuerySerializer, request)
        track_obj = _track(track)
        hidden_visible = permissions.can_see_hidden_scores(request.user, track_obj.challenge)
        queryset = sel.leaderboard_standings(user=request.user, track=track_obj)
        if query.get("student_eligible") is not None:
            queryset = queryset.filter(student_eligible=query["student_eligible"])
        if query.get("base_model"):
            queryset = queryset.filter(base_model_name=query["base_model"])
        ordering = query.get("ordering")
        if ordering:
            column = ordering.lstrip("-")
            allowed = sel.sortable_columns(hidden_visible=hidden_visible)
            if column not in allowed:
                raise ServiceError(f"Sort by one of: {', '.join(allowed)}.", field="ordering")
            expression = F(column).desc(nulls_last=True) if ordering.startswith("-") else F(column).asc(nulls_last=True)
            queryset = queryset.order_by(expression, "id")
        paginator = ApiPagination()
        page = paginator.paginate_queryset(queryset, request, view=self)
        offset = (paginator.page.number - 1) * paginator.get_page_size(request)
        snapshot = sel.current_snapshot(track_obj)
        body = {
            "track": track_obj.slug,
            "provisional": not track_obj.is_finalized,
            "hidden_visible": hidden_visible,
            "computed_at": snapshot.computed_at if snapshot else None,
            "ranking_rule": RANKING_RULE,
            "sortable": list(sel.sortable_columns(hidden_visible=hidden_visible)),
            "count": paginator.page.paginator.count,
            "next": paginator.get_next_link(),
            "previous": paginator.get_previous_link(),
            "results": [
                _row(standing, position=offset + i + 1, hidden_visible=hidden_visible)
                for i, standing in enumerate(page)
            ],
        }
        return Response(s.LeaderboardPageSerializer(body).data)


class ParetoApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(
        parameters=[s.ParetoQuerySerializer],
        responses=s.ParetoSerializer,
        summary="Score against compute for a track, with the non-dominated frontier",
    )
    def get(self, request: Request, track: str) -> Response:
        query = parse_query(s.ParetoQuerySerializer, request)
        track_obj = _track(track)
        hidden_visible = permissions.can_see_hidden_scores(request.user, track_obj.challenge)
        y_choices = sel.pareto_y_columns(hidden_visible=hidden_visible)
        y = query["y"] or ("final_score" if hidden_visible else "open_score")
        if y not in y_choices:
            raise ServiceError(f"y must be one of: {', '.join(y_choices)}.", field="y")
        x = query["x"]
        points = [
            {"submission_id": st.submission_id, "team": st.team.name, "x": getattr(st, x), "y": getattr(st, y)}
            for st in sel.leaderboard_standings(user=request.user, track=track_obj).exclude(
                submission__status="disqualified"
            )
        ]
        frontier = pareto_frontier([{"id": p["submission_id"], "x": p["x"], "y": p["y"]} for p in points])
        on = set(frontier)
        body = {
            "track": track_obj.slug,
            "x": x,
            "y": y,
            "x_choices": list(sel.PARETO_X),
            "y_choices": list(y_choices),
            "points": [{**p, "on_frontier": p["submission_id"] in on} for p in points],
            "frontier": frontier,
        }
        return Response(s.ParetoSerializer(body).data)


def _awards_rows(snapshot, teams: dict[int, str]) -> list[dict]:
    return [{**award, "team": teams.get(award["team_id"], "")} for award in (snapshot.awards or {}).get("awards", [])]


class AwardsApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(responses=s.AwardsSerializer, summary="A track's places and student awards")
    def get(self, request: Request, track: str) -> Response:
        track_obj = _track(track)
        visible = permissions.can_see_hidden_scores(request.user, track_obj.challenge)
        snapshot = sel.current_snapshot(track_obj)
        awards = []
        provisional = True
        vacant = []
        if visible and snapshot is not None:
            team_ids = [a["team_id"] for a in (snapshot.awards or {}).get("awards", [])]
            teams = dict(track_obj.challenge.teams.filter(pk__in=team_ids).values_list("pk", "name"))
            awards = _awards_rows(snapshot, teams)
            provisional = bool((snapshot.awards or {}).get("provisional")) or not track_obj.is_finalized
            vacant = (snapshot.awards or {}).get("vacant", [])
        body = {
            "track": track_obj.slug,
            "visible": visible,
            "finalized": track_obj.is_finalized,
            "provisional": provisional,
            "awards": awards,
            "vacant": vacant,
        }
        return Response(s.AwardsSerializer(body).data)


class SubmissionAnalysisApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(
        responses=s.AnalysisSerializer,
        summary="A scored submission's analysis: aspects against the track median, breakdown, compute",
        description="Public for the team entries on the public board; the team and organizers see all of its "
        "scored submissions. Hidden-suite scenario names only ever reach organizers.",
    )
    def get(self, request: Request, submission_id: int) -> Response:
        standing = sel.submission_public_standing(user=request.user, submission_id=submission_id)
        if standing is None:
            raise NotFound("No scored submission here.")
        track_obj = standing.snapshot.track
        hidden_visible = permissions.can_see_hidden_scores(request.user, track_obj.challenge)
        y = "final_score" if hidden_visible else "open_score"
        entries = sel.leaderboard_standings(user=request.user, track=track_obj).exclude(
            submission__status="disqualified"
        )
        frontier = pareto_frontier(
            [{"id": st.submission_id, "x": st.eval_gpu_seconds, "y": getattr(st, y)} for st in entries]
            + [{"id": standing.submission_id, "x": standing.eval_gpu_seconds, "y": getattr(standing, y)}]
        )
        body = {
            "submission_id": standing.submission_id,
            "track": track_obj.slug,
            "team": standing.team.name,
            "scores": sel.standing_scores(standing, hidden_visible=hidden_visible, finalized=track_obj.is_finalized),
            "track_median": sel.track_medians(track=track_obj, hidden_visible=hidden_visible),
            "breakdown": sel.breakdown_visible(standing.breakdown, user=request.user),
            "compute": {column: getattr(standing, column) for column in sel.COMPUTE_COLUMNS},
            "on_frontier": standing.submission_id in set(frontier),
        }
        return Response(s.AnalysisSerializer(body).data)


class OrganizerTrackFinalizeApi(APIView):
    permission_classes = [permissions.IsOrganizer]

    @extend_schema(
        request=None,
        responses=s.FinalizeOutputSerializer,
        summary="Finalize a track: standings freeze and the winners are announced (organizers)",
    )
    def post(self, request: Request, track: str) -> Response:
        track_obj = _track(track)
        snapshot = standings_finalize_track(track_id=track_obj.pk, actor=request.user)
        track_obj.refresh_from_db()
        team_ids = [a["team_id"] for a in (snapshot.awards or {}).get("awards", [])]
        teams = dict(track_obj.challenge.teams.filter(pk__in=team_ids).values_list("pk", "name"))
        body = {
            "track": track_obj.slug,
            "finalized_at": track_obj.finalized_at,
            "awards": _awards_rows(snapshot, teams),
        }
        return Response(s.FinalizeOutputSerializer(body).data)


class OrganizerReproductionApi(APIView):
    permission_classes = [permissions.IsOrganizer]

    @extend_schema(
        request=s.ReproductionInputSerializer,
        responses=s.ReproductionOutputSerializer,
        summary="Record a top entry's reproduction: pending, verified or failed (organizers)",
    )
    def post(self, request: Request, submission_id: int) -> Response:
        data = parse(s.ReproductionInputSerializer, request)
        reproduction = reproduction_record(submission_id=submission_id, actor=request.user, **data)
        return Response(s.ReproductionOutputSerializer(reproduction).data)


class OrganizerHiddenRevealApi(APIView):
    permission_classes = [permissions.IsOrganizer]

    @extend_schema(
        request=None,
        responses=s.RevealOutputSerializer,
        summary="Reveal the hidden-suite results to everyone: hidden scores, final scores and ranks (organizers)",
        description="Once only: a second call answers 409 `conflict`. Audited.",
    )
    def post(self, request: Request) -> Response:
        current = challenge_current()
        if current is None:
            raise NotFound("No challenge is running.")
        challenge = hidden_results_reveal(challenge_id=current.pk, actor=request.user)
        body = {"challenge": challenge.slug, "hidden_revealed_at": challenge.hidden_revealed_at}
        return Response(s.RevealOutputSerializer(body).data)

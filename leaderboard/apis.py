"""The leaderboard API: standings per track (paginated, sortable, filterable), Pareto data, awards, a
submission's analysis; organizers reveal the hidden results, finalize a track and record reproductions.

Every read goes through the SAME selectors as the leaderboard pages (`leaderboard.selectors`), with the same
viewer, so the pages and the API cannot disagree on order, visibility or numbers. This module only validates
query parameters (the pages fall back silently; the API answers 400) and shapes the answers.
"""

from drf_spectacular.utils import extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param
from rest_framework.views import APIView

from leaderboard import selectors
from leaderboard import serializers as s
from leaderboard.columns import sort_columns
from leaderboard.services import reproduction_record, standings_finalize_track
from leaderboard.services.visibility import hidden_results_reveal
from portal import permissions
from portal.api.utils import parse, parse_query
from portal.errors import NotFound, ServiceError
from portal.selectors import challenge_current


def _api_row(row: dict, position: int) -> dict:
    return {**row, "position": position, "team": {"name": row["team"], "slug": row["team_slug"]}}


def _page_link(request: Request, page: int, pages: int) -> str | None:
    if page < 1 or page > pages:
        return None
    return replace_query_param(request.build_absolute_uri(), "page", page)


class LeaderboardApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(
        parameters=[s.LeaderboardQuerySerializer],
        responses=s.LeaderboardPageSerializer,
        summary="A track's standings, as its leaderboard page shows them to you",
        description="Team entries in rank order: before the hidden-suite results are revealed, the open-suite rank "
        "and score, and no hidden column (sorting by one is refused); afterwards the final rank. Organizers see "
        "everything, and the disqualified submissions in `disqualified`. `ranking_rule` states the rule.",
    )
    def get(self, request: Request, track: str) -> Response:
        query = parse_query(s.LeaderboardQuerySerializer, request)
        track_obj = selectors.track_get(slug=track)
        viewer = selectors.viewer_for(request.user, track_obj.challenge)
        suite = query["suite"]
        if suite == "hidden" and not viewer.hidden_visible:
            raise ServiceError("The hidden-suite results are not revealed yet.", field="suite")
        columns = sort_columns(hidden_visible=viewer.hidden_visible, suite=suite)
        ordering = query.get("ordering") or ""
        if ordering and ordering.lstrip("-") not in columns:
            raise ServiceError(f"Sort by one of: {', '.join(columns)}.", field="ordering")
        board = selectors.leaderboard_board(
            track=track_obj,
            viewer=viewer,
            sort=ordering,
            suite=suite,
            student_only=query["student_only"],
            base_model=query.get("base_model", ""),
            page=query["page"],
            per_page=query["page_size"],
            breakdown=False,
        )
        start = (board.page - 1) * board.per_page
        body = {
            "track": track_obj.slug,
            "provisional": not track_obj.is_finalized,
            "hidden_visible": viewer.hidden_visible,
            "computed_at": board.snapshot.computed_at if board.snapshot else None,
            "ranking_rule": board.ranking_rule,
            "sort": board.sort,
            "suite": board.suite,
            "sortable": list(board.columns),
            "base_models": board.base_models,
            "count": board.total,
            "page": board.page,
            "pages": board.pages,
            "next": _page_link(request, board.page + 1, board.pages),
            "previous": _page_link(request, board.page - 1, board.pages),
            "results": [_api_row(row, start + i + 1) for i, row in enumerate(board.rows)],
            "disqualified": board.disqualified,
        }
        return Response(s.LeaderboardPageSerializer(body).data)


class ParetoApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(
        parameters=[s.ParetoQuerySerializer],
        responses=s.ParetoSerializer,
        summary="Score against compute for a track, with the non-dominated frontier (the Pareto page's data)",
    )
    def get(self, request: Request, track: str) -> Response:
        query = parse_query(s.ParetoQuerySerializer, request)
        track_obj = selectors.track_get(slug=track)
        viewer = selectors.viewer_for(request.user, track_obj.challenge)
        x_options, y_options = selectors.pareto_axes(viewer)
        if query["x"] and query["x"] not in x_options:
            raise ServiceError(f"x must be one of: {', '.join(x_options)}.", field="x")
        if query["y"] and query["y"] not in y_options:
            raise ServiceError(f"y must be one of: {', '.join(y_options)}.", field="y")
        data = selectors.pareto_data(track=track_obj, viewer=viewer, x=query["x"], y=query["y"])
        body = {**data, "x_choices": list(x_options), "y_choices": list(y_options)}
        return Response(s.ParetoSerializer(body).data)


class AwardsApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(responses=s.AwardsSerializer, summary="A track's places and student awards (once revealed)")
    def get(self, request: Request, track: str) -> Response:
        track_obj = selectors.track_get(slug=track)
        viewer = selectors.viewer_for(request.user, track_obj.challenge)
        awards = selectors.awards_for_snapshot(selectors.snapshot_current(track_obj), viewer=viewer)
        body = {**awards, "track": track_obj.slug, "finalized": track_obj.is_finalized}
        return Response(s.AwardsSerializer(body).data)


class SubmissionAnalysisApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(
        responses=s.AnalysisSerializer,
        summary="A scored submission's analysis (the analysis page's data)",
        description="Aspects against the track's median, best entry and frontier; the per-scenario table with the "
        "drop under perturbations; the efficiency figures. Hidden-suite numbers follow the board's rule (the "
        "submission's own team sees its own); hidden-suite scenario names only ever reach organizers.",
    )
    def get(self, request: Request, submission_id: int) -> Response:
        track = selectors.submission_track(submission_id)
        viewer = selectors.viewer_for(request.user, track.challenge)
        data = selectors.submission_analysis(track=track, submission_id=submission_id, viewer=viewer)
        submission, standing = data["submission"], data["standing"]
        body = {
            "submission_id": submission.pk,
            "track": track.slug,
            "team": submission.team.name,
            "disqualified": data["disqualified"],
            "disqualification_reason": data["disqualified_reason"],
            "hidden_visible": data["hidden_visible"],
            "scores": None,
            "comparison": data.get("comparison", []),
            "entries": data.get("entries", 0),
            "scenarios": data.get("scenarios", {}),
            "compute": {e["key"]: e["value"] for e in data.get("efficiency", [])},
            "on_frontier": False,
        }
        if standing is not None:
            body["scores"] = selectors.standing_scores(standing, viewer=viewer, finalized=track.is_finalized)
            frontier = selectors.pareto_data(track=track, viewer=viewer)["frontier"]
            body["on_frontier"] = submission.pk in frontier
        return Response(s.AnalysisSerializer(body).data)


class OrganizerTrackFinalizeApi(APIView):
    permission_classes = [permissions.IsOrganizer]

    @extend_schema(
        request=None,
        responses=s.FinalizeOutputSerializer,
        summary="Finalize a track: standings freeze and the winners are announced (organizers)",
    )
    def post(self, request: Request, track: str) -> Response:
        track_obj = selectors.track_get(slug=track)
        snapshot = standings_finalize_track(track_id=track_obj.pk, actor=request.user)
        track_obj = selectors.track_get(slug=track)
        awards = selectors.awards_for_snapshot(snapshot, viewer=selectors.viewer_for(request.user, track_obj.challenge))
        body = {"track": track_obj.slug, "finalized_at": track_obj.finalized_at, "awards": awards["awards"]}
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

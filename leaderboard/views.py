"""Leaderboard pages, their JSON, the exports and the organizers' buttons.

Views parse and authorise, then call one selector (reads) or one service (writes). Every number
shown comes from the stored current snapshot; nothing is scored on a request.
"""

import csv
import functools

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from portal.errors import PermissionDenied, ServiceError

from . import caching, selectors, services
from .selectors import Viewer


def _wants_json(request: HttpRequest) -> bool:
    return request.path.endswith(".json")


def handle_errors(view):
    """A domain error becomes a page (or JSON) with its message and status, never a 500."""

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except ServiceError as error:
            if _wants_json(request):
                return JsonResponse({"error": {"code": error.code, "message": error.message}}, status=error.status_code)
            return render(request, "leaderboard/error.html", {"message": error.message}, status=error.status_code)

    return wrapper


def _int(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _context(request: HttpRequest, slug: str):
    """The track, and what this viewer may see. Staff can preview the public view with ?view=public."""
    if request.user.is_staff:  # organizers always read the database
        track = selectors.track_get(slug=slug)
    else:
        track = caching.track_state(slug, lambda: selectors.track_get(slug=slug))
    viewer = selectors.viewer_for(request.user, track.challenge, preview_public=request.GET.get("view") == "public")
    return track, viewer


def _board(request: HttpRequest, track, viewer: Viewer, *, breakdown: bool = True):
    return selectors.leaderboard_board(
        track=track,
        viewer=viewer,
        sort=request.GET.get("sort", ""),
        suite=request.GET.get("suite", "open"),
        student_only=request.GET.get("student") in ("1", "true", "on"),
        base_model=request.GET.get("base", "")[:200],
        page=_int(request.GET.get("page"), 1),
        per_page=_int(request.GET.get("per_page"), selectors.board.PER_PAGE),
        breakdown=breakdown,
    )


@require_GET
@handle_errors
def index(request: HttpRequest) -> HttpResponse:
    challenge = selectors.current_challenge()
    viewer = selectors.viewer_for(request.user, challenge)
    tracks = selectors.tracks_with_leaders(challenge=challenge, viewer=viewer)
    return render(request, "leaderboard/index.html", {"challenge": challenge, "tracks": tracks, "viewer": viewer})


@require_GET
@handle_errors
def board(request: HttpRequest, slug: str) -> HttpResponse:
    track, viewer = _context(request, slug)
    key = caching.answer_key("page", request, track, viewer)
    cached = caching.get(key)
    if cached is not None:
        return HttpResponse(cached)
    data = _board(request, track, viewer, breakdown=False)
    context = {"board": data, "track": track, "viewer": viewer, "prizes": selectors.prize_table(track)}
    if request.headers.get("HX-Request") == "true":
        response = render(request, "leaderboard/partials/board_table.html", context)
    else:
        # The plot's points come from pareto.json (cached on its own), not from this page.
        x_options, y_options = selectors.pareto_axes(viewer)
        context["pareto"] = {
            "x": "eval_gpu_seconds",
            "y": next(iter(y_options)),
            "x_options": x_options,
            "y_options": y_options,
            "lazy": True,
        }
        response = render(request, "leaderboard/board.html", context)
    caching.put(key, response.content)
    return response


def _row_json(row: dict) -> dict:
    out = dict(row)
    if out.get("submitted_at") is not None:
        out["submitted_at"] = out["submitted_at"].isoformat()
    return out


@require_GET
@handle_errors
def board_json(request: HttpRequest, slug: str) -> JsonResponse:
    track, viewer = _context(request, slug)
    key = caching.answer_key("json", request, track, viewer)
    cached = caching.get(key)
    if cached is not None:
        return HttpResponse(cached, content_type="application/json")
    data = _board(request, track, viewer, breakdown=request.GET.get("breakdown") in ("1", "true"))
    response = JsonResponse(
        {
            "track": track.slug,
            "provisional": not track.is_finalized,
            "hidden_revealed": viewer.hidden_visible,
            "ranking_rule": data.ranking_rule,
            "computed_at": data.snapshot.computed_at.isoformat() if data.snapshot else None,
            "sort": data.sort,
            "page": data.page,
            "pages": data.pages,
            "count": data.total,
            "results": [_row_json(r) for r in data.rows],
            "awards": data.awards,
        }
    )
    caching.put(key, response.content)
    return response


@require_GET
@handle_errors
def pareto_page(request: HttpRequest, slug: str) -> HttpResponse:
    track, viewer = _context(request, slug)
    pareto = selectors.pareto_data(track=track, viewer=viewer, x=request.GET.get("x", ""), y=request.GET.get("y", ""))
    return render(request, "leaderboard/pareto.html", {"track": track, "viewer": viewer, "pareto": pareto})


@require_GET
@handle_errors
def pareto_json(request: HttpRequest, slug: str) -> JsonResponse:
    track, viewer = _context(request, slug)
    key = caching.answer_key("pareto", request, track, viewer)
    cached = caching.get(key)
    if cached is not None:
        return HttpResponse(cached, content_type="application/json")
    response = JsonResponse(
        selectors.pareto_data(track=track, viewer=viewer, x=request.GET.get("x", ""), y=request.GET.get("y", ""))
    )
    caching.put(key, response.content)
    return response


@require_GET
@handle_errors
def analysis(request: HttpRequest, slug: str, submission_id: int) -> HttpResponse:
    track, viewer = _context(request, slug)
    data = selectors.submission_analysis(track=track, submission_id=submission_id, viewer=viewer)
    pareto = selectors.pareto_data(track=track, viewer=viewer) if data.get("standing") else None
    return render(request, "leaderboard/analysis.html", {**data, "track": track, "viewer": viewer, "pareto": pareto})


@require_GET
@handle_errors
def export(request: HttpRequest, slug: str, fmt: str) -> HttpResponse:
    track, viewer = _context(request, slug)
    columns, rows, snapshot = selectors.standings_export(track=track, viewer=viewer)
    name = f"standings-{track.slug}{'-organizers' if viewer.organizer else ''}"
    if fmt == "json":
        response = JsonResponse(
            {
                "track": track.slug,
                "computed_at": snapshot.computed_at.isoformat() if snapshot else None,
                "provisional": not track.is_finalized,
                "columns": columns,
                "rows": rows,
            }
        )
    else:
        response = HttpResponse(content_type="text/csv; charset=utf-8")
        writer = csv.DictWriter(response, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    response["Content-Disposition"] = f'attachment; filename="{name}.{fmt}"'
    return response


def _require_organizer(request: HttpRequest) -> None:
    if not (request.user.is_authenticated and request.user.is_staff):
        raise PermissionDenied("Only organizers can do that.")


@require_POST
@handle_errors
def reveal(request: HttpRequest, slug: str) -> HttpResponse:
    _require_organizer(request)
    track = selectors.track_get(slug=slug)
    services.hidden_results_reveal(challenge_id=track.challenge_id, actor=request.user)
    messages.success(request, "The hidden-suite results are now public.")
    return redirect("leaderboard:board", slug=slug)


@require_POST
@handle_errors
def finalize(request: HttpRequest, slug: str) -> HttpResponse:
    _require_organizer(request)
    track = selectors.track_get(slug=slug)
    services.standings_finalize_track(track_id=track.pk, actor=request.user)
    messages.success(request, f"{track} is finalized: its standings are frozen and the winners announced.")
    return redirect("leaderboard:board", slug=slug)


@require_POST
@handle_errors
def reproduction(request: HttpRequest, slug: str, submission_id: int) -> HttpResponse:
    _require_organizer(request)
    track = selectors.track_get(slug=slug)
    if not track.submissions.filter(pk=submission_id).exists():
        raise ServiceError("That submission is not in this track.", status_code=404)
    services.reproduction_record(
        submission_id=submission_id,
        status=request.POST.get("status", ""),
        notes=request.POST.get("notes", "")[:2000],
        actor=request.user,
    )
    messages.success(request, f"Reproduction of #{submission_id} recorded; the standings are being recomputed.")
    return redirect("leaderboard:board", slug=slug)


@require_GET
@handle_errors
def breakdown(request: HttpRequest, slug: str, submission_id: int) -> HttpResponse:
    """One row's per-scenario breakdown, loaded when the row is expanded."""
    track, viewer = _context(request, slug)
    row = selectors.standing_breakdown(track=track, viewer=viewer, submission_id=submission_id)
    return render(request, "leaderboard/partials/breakdown.html", {"row": row, "track": track})

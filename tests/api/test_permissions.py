"""The permission matrix: every API endpoint × {anonymous, member of another team, member, captain, organizer}.

Each row names an endpoint (its URL name), how to call it and the status each role gets. Every answer is
also searched for the world's sentinel secrets (e-mails, evidence bytes, invitation and token secrets,
hidden-suite details): a sentinel in an answer to a role not allowed to see it fails the test.
A new endpoint joins the matrix by adding a row; `test_every_api_endpoint_is_in_the_matrix` fails until it does.
"""

from dataclasses import dataclass, field

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from tests.api.world import INVITEE_EMAIL, ROLES, World, build_world

pytestmark = pytest.mark.django_db

A, O, M, C, Z = ROLES  # noqa: E741 (anonymous, outsider from another team, member, captain, organizer)


def _all(status: int, **overrides: int) -> dict[str, int]:
    return {**dict.fromkeys(ROLES, status), **overrides}


def _auth(status: int, **overrides: int) -> dict[str, int]:
    """401 for anonymous, `status` for everyone else unless overridden."""
    return {A: 401, **dict.fromkeys(ROLES[1:], status), **overrides}


def _organizer_only(status: int) -> dict[str, int]:
    return {A: 401, O: 403, M: 403, C: 403, Z: status}


TUS = {"Tus-Resumable": "1.0.0"}
TEAM_A_ONLY = {A: 401, O: 404, M: 200, C: 200, Z: 200}
SUBMISSION = {
    "track": "4090",
    "base_model": "tiny-llama",
    "datasets": "offline arithmetic (CC-BY-4.0)",
    "finetune_gpu_hours": 1.5,
    "recipe_url": "https://example.org/recipe/commit/abc",
}


@dataclass(frozen=True)
class Row:
    url_name: str
    method: str
    path: str
    expect: dict[str, int]
    body: dict | None = None
    note: str = ""
    # Sentinels this call may show to anyone: whoever holds an invitation token was sent it, so naming the
    # address it was sent to ("log in with that address") tells them nothing new.
    holder_sees: tuple[str, ...] = field(default_factory=tuple)
    headers: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}{' ' + self.note if self.note else ''}"


ROWS: list[Row] = [
    # Public.
    Row("api-challenge", "GET", "challenge/", _all(200)),
    Row("api-track-list", "GET", "tracks/", _all(200)),
    Row("api-track-detail", "GET", "tracks/{track}/", _all(200)),
    Row("api-schema", "GET", "schema/", _all(200)),
    Row("api-docs", "GET", "docs/", _all(200)),
    Row("api-redoc", "GET", "redoc/", _all(200)),
    # Me.
    Row("api-me", "GET", "me/", _auth(200)),
    Row("api-me", "PATCH", "me/", _auth(200), body={"display_name": "Renamed"}),
    Row("api-me-evidence", "POST", "me/student-evidence/", _auth(400), note="(no file)"),
    Row("api-token-list", "GET", "me/tokens/", _auth(200)),
    Row("api-token-list", "POST", "me/tokens/", _auth(403), body={"name": "more"}, note="(tokens cannot mint)"),
    Row("api-token-revoke", "DELETE", "me/tokens/{own_token_id}/", _auth(204)),
    Row("api-token-revoke", "DELETE", "me/tokens/{captain_token_id}/", _auth(404, captain=204), note="(another's)"),
    Row("api-my-invitations", "GET", "me/invitations/", _auth(200)),
    Row("api-my-invitation-accept", "POST", "me/invitations/{invitation_id}/accept/", _auth(404)),
    Row("api-my-invitation-decline", "POST", "me/invitations/{invitation_id}/decline/", _auth(404)),
    Row("api-evidence", "GET", "profiles/{member_profile}/evidence/", {A: 401, O: 404, M: 200, C: 404, Z: 200}),
    # Teams.
    Row("api-my-team", "GET", "team/", _auth(200, organizer=404)),
    Row("api-my-team", "POST", "team/", _auth(409, organizer=201), body={"name": "Gamma"}),
    Row("api-team-detail", "GET", "teams/{team}/", _all(200)),
    Row("api-team-detail", "GET", "teams/{other_team}/", _all(200), note="(other team)"),
    Row("api-team-invitations", "GET", "teams/{team}/invitations/", _auth(403, captain=200, organizer=200)),
    Row(
        "api-team-invitations",
        "POST",
        "teams/{team}/invitations/",
        _auth(403, captain=201, organizer=201),
        body={"email": "new.person@example.org"},
    ),
    Row(
        "api-team-invitation-revoke",
        "DELETE",
        "teams/{team}/invitations/{invitation_id}/",
        _auth(403, captain=204, organizer=204),
    ),
    Row("api-team-leave", "POST", "teams/{team}/leave/", {A: 401, O: 403, M: 204, C: 400, Z: 404}),
    Row(
        "api-team-member-remove",
        "POST",
        "teams/{team}/members/{member_id}/remove/",
        _auth(403, captain=200, organizer=200),
    ),
    Row(
        "api-team-captain",
        "POST",
        "teams/{team}/captain/",
        _auth(403, captain=200, organizer=200),
        body={"user_id": "{member_id}"},
    ),
    # Invitations by token (an e-mail invitation to someone else, and a shareable link).
    Row("api-invitation", "GET", "invitations/{invitation_token}/", _auth(200)),
    Row(
        "api-invitation-accept",
        "POST",
        "invitations/{invitation_token}/accept/",
        _auth(403),
        note="(not yours)",
        holder_sees=(INVITEE_EMAIL,),
    ),
    Row(
        "api-invitation-decline",
        "POST",
        "invitations/{invitation_token}/decline/",
        _auth(403),
        note="(not yours)",
        holder_sees=(INVITEE_EMAIL,),
    ),
    Row("api-invitation-accept", "POST", "invitations/{link_token}/accept/", _auth(409, organizer=200), note="(link)"),
    Row("api-invitation-decline", "POST", "invitations/{link_token}/decline/", _auth(200), note="(link)"),
    # Submissions.
    Row("api-submission-list", "GET", "submissions/", _auth(200)),
    Row("api-submission-list", "POST", "submissions/", _auth(201, organizer=403), body=SUBMISSION),
    Row("api-submission-quota", "GET", "submissions/quota/", _auth(200, organizer=404)),
    Row("api-submission-detail", "GET", "submissions/{scored_a}/", TEAM_A_ONLY),
    Row("api-submission-detail", "GET", "submissions/{running_a}/", TEAM_A_ONLY, note="(hidden suite running)"),
    Row("api-submission-detail", "GET", "submissions/{scored_b}/", {A: 401, O: 200, M: 404, C: 404, Z: 200}),
    Row("api-submission-cancel", "POST", "submissions/{running_a}/cancel/", TEAM_A_ONLY),
    Row("api-submission-final", "POST", "submissions/{scored_a}/final/", TEAM_A_ONLY),
    Row("api-submission-analysis", "GET", "submissions/{scored_a}/analysis/", _all(200)),
    Row("api-submission-analysis", "GET", "submissions/{running_a}/analysis/", _all(404), note="(not scored)"),
    # tus uploads (evaluation.uploads_views): a team's own unfinished upload.
    Row("tus-uploads", "OPTIONS", "uploads/", _all(204)),
    Row(
        "tus-uploads",
        "POST",
        "uploads/",
        {A: 401, O: 404, M: 201, C: 201, Z: 403},
        headers={**TUS, "Upload-Length": "10", "Upload-Metadata": "submission {uploading_a_b64}"},
    ),
    Row("tus-upload", "HEAD", "uploads/{upload_a}/", {A: 401, O: 404, M: 200, C: 200, Z: 404}, headers=TUS),
    Row("tus-upload", "DELETE", "uploads/{upload_a}/", {A: 401, O: 404, M: 204, C: 204, Z: 404}, headers=TUS),
    # Leaderboards (public; hidden-suite results not revealed in this world).
    Row("api-leaderboard", "GET", "leaderboards/{track}/", _all(200)),
    Row(
        "api-leaderboard",
        "GET",
        "leaderboards/{track}/?ordering=-hidden_score",
        _all(400, organizer=200),
        note="(hidden sort)",
    ),
    Row("api-leaderboard-pareto", "GET", "leaderboards/{track}/pareto/", _all(200)),
    Row("api-leaderboard-awards", "GET", "leaderboards/{track}/awards/", _all(200)),
    # Organizers.
    Row("api-organizer-rerun", "POST", "organizer/submissions/{scored_a}/rerun/", _organizer_only(200)),
    Row("api-organizer-cancel", "POST", "organizer/submissions/{running_a}/cancel/", _organizer_only(200)),
    Row(
        "api-organizer-disqualify",
        "POST",
        "organizer/submissions/{scored_b}/disqualify/",
        _organizer_only(200),
        body={"reason": "Used generated data."},
    ),
    Row(
        "api-organizer-priority",
        "POST",
        "organizer/submissions/{running_a}/priority/",
        _organizer_only(200),
        body={"priority": 5},
    ),
    Row("api-organizer-finalize", "POST", "organizer/tracks/{track}/finalize/", _organizer_only(200)),
    Row("api-organizer-reveal", "POST", "organizer/challenge/reveal/", _organizer_only(200)),
    Row(
        "api-organizer-reproduction",
        "POST",
        "organizer/submissions/{scored_a}/reproduction/",
        _organizer_only(200),
        body={"status": "verified"},
    ),
    Row("api-organizer-profiles", "GET", "organizer/profiles/", _organizer_only(200)),
    Row(
        "api-organizer-student-review",
        "POST",
        "organizer/profiles/{member_profile}/student-status/",
        _organizer_only(200),
        body={"decision": "verify"},
    ),
]


def _values(world: World, role: str) -> dict[str, object]:
    from portal.services import invitation_create

    if "link_token" not in world.extra:
        world.extra["link_token"] = invitation_create(actor=world.team.captain, team=world.team)[1]
        world.extra.setdefault("sentinels", {})[world.extra["link_token"]] = {"captain", "organizer"}
    users = world.users
    return {
        "track": world.track.slug,
        "team": world.team.slug,
        "other_team": world.other_team.slug,
        "member_id": users["member"].pk,
        "member_profile": users["member"].profile.pk,
        "invitation_id": world.invitation.pk,
        "invitation_token": world.invitation_token,
        "link_token": world.extra["link_token"],
        "own_token_id": users[role].api_tokens.first().pk if role != "anonymous" else 0,
        "captain_token_id": users["captain"].api_tokens.first().pk,
        **world.extra.get("path_values", {}),
    }


def _fill(value, values: dict):
    if isinstance(value, str) and value.startswith("{") and value.endswith("}") and value[1:-1] in values:
        return values[value[1:-1]]
    if isinstance(value, str):
        return value.format(**values)
    if isinstance(value, dict):
        return {key: _fill(item, values) for key, item in value.items()}
    return value


def _body_text(response) -> str:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content).decode("utf-8", "replace")
    return response.content.decode("utf-8", "replace")


def call(world: World, role: str, row: Row):
    values = _values(world, role)
    path = "/api/v1/" + row.path.format(**values)
    client = world.client(role)
    body = _fill(row.body, values) if row.body is not None else None
    headers = {f"HTTP_{k.upper().replace('-', '_')}": _fill(v, values) for k, v in row.headers.items()}
    method = getattr(client, row.method.lower())
    return method(path, body, format="json", **headers) if body is not None else method(path, **headers)


def assert_no_leak(world: World, role: str, text: str, where: str, exempt: tuple[str, ...] = ()) -> None:
    for secret, allowed in world.sentinels.items():
        if secret and role not in allowed and secret not in exempt:
            assert secret not in text, f"{where}: {role} sees {secret!r}"


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.id)
def test_matrix(row: Row, role: str):
    world = build_world()
    response = call(world, role, row)
    text = _body_text(response)
    assert response.status_code == row.expect[role], f"{row.id} as {role}: {response.status_code} {text[:300]}"
    assert_no_leak(world, role, text, f"{row.id} as {role}", row.holder_sees)
    if response.status_code >= 400 and row.method != "HEAD":  # answers to HEAD carry no body
        assert response.get("Content-Type", "").startswith("application/json"), text[:300]
        assert set(response.json()) == {"error"}, text[:300]


def _api_url_names(resolver=None, prefix: str = "") -> set[str]:
    names: set[str] = set()
    resolver = resolver or get_resolver()
    for pattern in resolver.url_patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            names |= _api_url_names(pattern, route)
        elif isinstance(pattern, URLPattern) and route.startswith("api/v1/") and pattern.name:
            names.add(pattern.name)
    return names


def test_every_api_endpoint_is_in_the_matrix():
    missing = _api_url_names() - {row.url_name for row in ROWS} - EXEMPT
    assert not missing, f"Add rows to the permission matrix for: {sorted(missing)}"


EXEMPT: set[str] = set()


def test_public_team_view_hides_contacts_and_private_sections():
    world = build_world()
    public = world.client(O).get(f"/api/v1/teams/{world.team.slug}/").json()
    assert set(public) == {"id", "name", "slug", "created_at", "captain_id", "student_eligible", "members"}
    assert all(
        set(member) == {"user_id", "name", "affiliation", "is_captain", "joined_at"} for member in public["members"]
    )
    private = world.client(M).get(f"/api/v1/teams/{world.team.slug}/").json()
    assert private["eligibility"]["summary"] == "0 of 2 members verified"
    assert private["pending_invitations"] == []  # members do not manage invitations
    captain = world.client(C).get(f"/api/v1/teams/{world.team.slug}/").json()
    assert [i["email"] for i in captain["pending_invitations"]] == ["invitee.sentinel@elsewhere.example"]


def test_sentinels_are_really_there_for_those_allowed():
    """The leak checks above mean something only if the allowed roles do see each private value."""
    world = build_world()
    v = world.extra["path_values"]
    seen: dict[str, str] = {}
    for role, path in [
        (Z, f"/api/v1/submissions/{v['running_a']}/"),
        (Z, f"/api/v1/submissions/{v['scored_a']}/analysis/"),
        (Z, f"/api/v1/submissions/{v['scored_b']}/"),
        (Z, f"/api/v1/leaderboards/{world.track.slug}/"),
        (C, f"/api/v1/teams/{world.team.slug}/"),
        (M, f"/api/v1/profiles/{world.users['member'].profile.pk}/evidence/"),
    ]:
        response = world.client(role).get(path)
        assert response.status_code == 200, path
        seen[path] = _body_text(response)
    everything = "\n".join(seen.values())
    from tests.api import world as w

    for sentinel in (
        w.HIDDEN_RUN,
        w.HIDDEN_LOG,
        w.HIDDEN_SCENARIO,
        str(w.HIDDEN_SCORE),
        str(w.FINAL_SCORE),
        w.TEAM_A_NOTES,
        w.TEAM_A_RECIPE,
        w.TEAM_B_NOTES,
        w.INVITEE_EMAIL,
        w.MEMBER_EMAIL,
        w.EVIDENCE_BYTES.decode(),
    ):
        assert sentinel in everything, sentinel


def test_participants_see_hidden_progress_redacted():
    world = build_world()
    body = world.client(M).get(f"/api/v1/submissions/{world.extra['path_values']['running_a']}/").json()
    assert body["progress"]["hidden_redacted"] is True
    assert body["progress"]["current_run"] is None and body["log_tail"] == ""
    assert body["progress"]["runs_done"] == 3 and body["progress"]["runs_total"] == 9


def test_reveal_twice_is_a_conflict_and_reveals_hidden_scores_to_everyone():
    from tests.api import world as w

    world = build_world()
    path = f"/api/v1/leaderboards/{world.track.slug}/"
    assert str(w.HIDDEN_SCORE) not in _body_text(world.client(A).get(path))
    first = world.client(Z).post("/api/v1/organizer/challenge/reveal/")
    assert first.status_code == 200
    assert first.json()["challenge"] == world.challenge.slug and first.json()["hidden_revealed_at"]
    world.challenge.refresh_from_db()
    assert world.challenge.hidden_revealed
    assert str(w.HIDDEN_SCORE) in _body_text(world.client(A).get(path))
    again = world.client(Z).post("/api/v1/organizer/challenge/reveal/")
    assert again.status_code == 409
    assert again.json() == {
        "error": {"code": "conflict", "message": "The hidden-suite results are already public.", "fields": {}}
    }
    from portal.models import AuditEvent

    assert AuditEvent.objects.filter(action="challenge.reveal_hidden").count() == 1

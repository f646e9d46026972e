"""Stored standings: recomputation, history, entries, awards, reproductions, freezing."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from evaluation.models import Submission
from evaluation.services import submission_transition
from leaderboard import selectors
from leaderboard.models import Reproduction, Standing, StandingsSnapshot, TrackScoringSettings
from leaderboard.services import reproduction_record, standings_finalize_track, standings_recompute_for_track
from leaderboard.tasks import standings_recompute
from portal.errors import Conflict
from portal.models import Prize, Profile
from tests.factories import (
    MembershipFactory,
    ProfileFactory,
    ScoredSubmissionFactory,
    TeamFactory,
    TrackFactory,
    UserFactory,
)

from .builders import ANAT, GSM, result, worked_example

pytestmark = pytest.mark.django_db


@pytest.fixture
def stored_results(monkeypatch):
    """Stands in for the evaluation app's stored results until the pipeline stores them (the adapter seam)."""
    store: dict[int, dict] = {}
    monkeypatch.setattr(
        selectors,
        "track_scored_results",
        lambda track_id: [
            {"submission_id": sid, "team_id": r["team_id"], "suites": r["suites"]}
            for sid, r in store.items()
            if r["track_id"] == track_id
        ],
    )
    return store


def add(store, submission, suites):
    store[submission.pk] = {"team_id": submission.team_id, "track_id": submission.track_id, "suites": suites}


@pytest.fixture
def example(stored_results):
    """The worked example of docs/scoring.md, stored: teams A, B, C and A's second submission."""
    track = TrackFactory()
    teams = {name: TeamFactory(challenge=track.challenge, name=f"Team {name}") for name in "ABC"}
    now = timezone.now()
    subs = {}
    for i, e in enumerate(worked_example()):
        team = teams[e["team_id"]]
        subs[e["submission_id"]] = ScoredSubmissionFactory(
            track=track, team=team, is_final=e["is_team_entry"], created_at=now - timedelta(hours=10 - i)
        )
        add(stored_results, subs[e["submission_id"]], e["suites"])
    for place, amount in ((1, 5000), (2, 2500), (3, 1000)):
        Prize.objects.create(track=track, kind=Prize.Kind.PLACE, place=place, amount_usd=amount)
    return track, teams, subs


def test_recompute_stores_the_worked_example(example):
    track, teams, subs = example
    snapshot = standings_recompute_for_track(track.pk, trigger="test")
    rows = {s.submission_id: s for s in snapshot.standings.all()}
    a, b, c, a2 = (rows[subs[i].pk] for i in (1, 2, 3, 11))
    assert (a.rank, b.rank, c.rank, a2.rank) == (2, 1, 3, None)
    assert a2.rank_if_entry == 2 and not a2.is_team_entry
    assert a.final_score == pytest.approx(0.5647, abs=5e-5)
    assert a.open_score == pytest.approx(0.6941, abs=5e-5) and a.hidden_score == pytest.approx(0.5)
    assert (a.open_accuracy, a.open_robustness, a.open_fairness, a.open_bias, a.open_efficiency) == (
        0.6875,
        0.625,
        0.5,
        1.0,
        0.75,
    )
    assert a.hidden_robustness is None and a.hidden_efficiency == 0.5
    assert a.breakdown["open"]["scenarios"]["mmlu"]["scores"]["accuracy"] == 0.375
    assert a.breakdown["hidden"]["weight"] == pytest.approx(2 / 3)
    # Compute columns copied from the results and the submission.
    assert a.eval_gpu_seconds == 400 and a.output_tokens_per_second == 50
    assert a.finetune_gpu_hours == 2.5 and a.base_model_name == "tiny-gpt2" and a.parameter_count == 1_000_000
    assert snapshot.entry_count == 3 and snapshot.scoring_mode == "win_rate"
    places = [(w["place"], w["team_id"], w["confirmed"]) for w in snapshot.awards["awards"]]
    assert places == [(1, teams["B"].pk, False), (2, teams["A"].pk, False), (3, teams["C"].pk, False)]
    assert snapshot.awards["provisional"] is True
    ranked = list(selectors.standings_current_for_track(track.pk))
    assert [s.team.name for s in ranked] == ["Team B", "Team A", "Team C"]


def test_each_recompute_is_a_new_current_snapshot_and_the_old_ones_stay(example, stored_results):
    track, teams, subs = example
    first = standings_recompute_for_track(track.pk, trigger="first")
    # Team C fixes its failed run: it is rescored and the whole track changes.
    add(stored_results, subs[3], {**worked_example()[1]["suites"]})
    second = standings_recompute_for_track(track.pk, trigger="second")
    first.refresh_from_db()
    assert not first.is_current and second.is_current
    assert list(selectors.standings_history_for_track(track.pk)) == [second, first]
    assert Standing.objects.filter(snapshot=first).count() == Standing.objects.filter(snapshot=second).count() == 4
    old_a = Standing.objects.get(snapshot=first, submission=subs[1])
    new_a = Standing.objects.get(snapshot=second, submission=subs[1])
    assert old_a.final_score != new_a.final_score  # relative scores moved when C changed


def test_only_scored_submissions_of_the_track_count(example, stored_results):
    track, teams, subs = example
    failed = ScoredSubmissionFactory(track=track, team=teams["C"], status=Submission.Status.FAILED)
    add(stored_results, failed, {"open": result({ANAT: 1.0})})
    snapshot = standings_recompute_for_track(track.pk)
    assert failed.pk not in set(snapshot.standings.values_list("submission_id", flat=True))
    assert snapshot.standings.count() == 4


def test_a_team_without_a_chosen_entry_is_represented_by_its_latest_scored_submission(stored_results):
    track = TrackFactory()
    team, other = TeamFactory(challenge=track.challenge), TeamFactory(challenge=track.challenge)
    now = timezone.now()
    old = ScoredSubmissionFactory(track=track, team=team, created_at=now - timedelta(days=1))
    new = ScoredSubmissionFactory(track=track, team=team, created_at=now)
    rival = ScoredSubmissionFactory(track=track, team=other, is_final=True)
    for sub, acc in ((old, 0.9), (new, 0.1), (rival, 0.5)):
        add(stored_results, sub, {"open": result({ANAT: acc})})
    rows = {s.submission_id: s for s in standings_recompute_for_track(track.pk).standings.all()}
    assert rows[new.pk].is_team_entry and not rows[old.pk].is_team_entry
    assert (rows[rival.pk].rank, rows[new.pk].rank) == (1, 2)
    assert rows[old.pk].rank_if_entry == 1 and rows[old.pk].final_score == 1.0


def test_student_awards_and_a_failed_reproduction(stored_results):
    track = TrackFactory()
    Prize.objects.create(track=track, kind=Prize.Kind.PLACE, place=1, amount_usd=5000)
    Prize.objects.create(track=track, kind=Prize.Kind.STUDENT, amount_usd=500, count=1)
    teams, subs = [], []
    for acc in (0.9, 0.8, 0.7):
        team = TeamFactory(challenge=track.challenge)
        ProfileFactory(user=team.captain, student_status=Profile.StudentStatus.VERIFIED)
        teams.append(team)
        subs.append(ScoredSubmissionFactory(track=track, team=team, is_final=True))
        add(stored_results, subs[-1], {"open": result({ANAT: acc})})
    # Team 0 has a member who is not a verified student: not eligible.
    MembershipFactory(team=teams[0], user=UserFactory())
    snapshot = standings_recompute_for_track(track.pk)
    assert [(w["kind"], w["team_id"]) for w in snapshot.awards["awards"]] == [
        ("place", teams[0].pk),
        ("student", teams[1].pk),
    ]
    organizer = UserFactory()
    reproduction_record(submission_id=subs[0].pk, status=Reproduction.Status.FAILED, notes="ran 31 h", actor=organizer)
    snapshot = standings_recompute_for_track(track.pk, trigger="reproduction")
    assert [(w["kind"], w["team_id"]) for w in snapshot.awards["awards"]] == [
        ("place", teams[1].pk),
        ("student", teams[2].pk),
    ]
    assert snapshot.awards["excluded"] == [teams[0].pk]
    assert Standing.objects.get(snapshot=snapshot, submission=subs[0]).reproduction == "failed"


def test_reproduction_recording_recomputes_after_commit(example, django_capture_on_commit_callbacks, monkeypatch):
    track, teams, subs = example
    sent = []
    monkeypatch.setattr(standings_recompute, "delay", lambda *args: sent.append(args))
    with django_capture_on_commit_callbacks(execute=True):
        reproduction_record(submission_id=subs[2].pk, status="verified", actor=UserFactory())
    assert sent == [(track.pk, f"reproduction of #{subs[2].pk}: verified")]
    with pytest.raises(Conflict):
        reproduction_record(submission_id=subs[2].pk, status="maybe", actor=None)


def test_finalized_standings_are_frozen(example, stored_results):
    track, teams, subs = example
    organizer = UserFactory()
    frozen = standings_finalize_track(track_id=track.pk, actor=organizer)
    track.refresh_from_db()
    assert frozen.is_frozen and track.is_finalized and track.finalized_by == organizer
    add(stored_results, subs[3], {"open": result({ANAT: 1.0, GSM: 1.0})})
    assert standings_recompute_for_track(track.pk, trigger="late") == frozen
    assert StandingsSnapshot.objects.filter(track=track).count() == 1
    with pytest.raises(Conflict):
        reproduction_record(submission_id=subs[1].pk, status="verified", actor=organizer)
    with pytest.raises(Conflict):
        standings_finalize_track(track_id=track.pk, actor=organizer)


def test_absolute_mode_and_the_track_reference_come_from_the_database(stored_results):
    track = TrackFactory(challenge__scoring_mode="absolute")
    TrackScoringSettings.objects.create(track=track, efficiency_references={"gpu_seconds": 100})
    sub = ScoredSubmissionFactory(track=track, is_final=True)
    add(stored_results, sub, {"open": result({ANAT: 0.6}, efficiency={"gpu_seconds": 200})})
    standing = standings_recompute_for_track(track.pk).standings.get()
    assert standing.open_accuracy == 0.6 and standing.open_efficiency == 0.5
    assert standing.final_score == pytest.approx((0.6 * 0.5) ** 0.5)


def test_the_task_recomputes(example):
    track, _, _ = example
    snapshot_id = standings_recompute.apply(args=(track.pk, "task")).get()
    assert StandingsSnapshot.objects.get(pk=snapshot_id).trigger == "task"


def test_recompute_query_count_does_not_grow_with_submissions(stored_results):
    def make_track(n):
        track = TrackFactory()
        for i in range(n):
            sub = ScoredSubmissionFactory(track=track, is_final=True)
            add(stored_results, sub, {"open": result({ANAT: i / n})})
        return track

    small, large = make_track(2), make_track(12)
    with CaptureQueriesContext(connection) as few:
        standings_recompute_for_track(small.pk)
    with CaptureQueriesContext(connection) as many:
        standings_recompute_for_track(large.pk)
    assert len(many) == len(few)


def test_a_submission_entering_or_leaving_the_scored_state_recomputes_its_track(
    django_capture_on_commit_callbacks, monkeypatch
):
    sent = []
    monkeypatch.setattr(standings_recompute, "delay", lambda *args: sent.append(args))
    sub = ScoredSubmissionFactory(status=Submission.Status.RUNNING)
    with django_capture_on_commit_callbacks(execute=True):
        submission_transition(submission_id=sub.pk, to=Submission.Status.SCORED)
    with django_capture_on_commit_callbacks(execute=True):
        submission_transition(submission_id=sub.pk, to=Submission.Status.DISQUALIFIED, reason="data")
    assert sent == [
        (sub.track_id, f"submission #{sub.pk}: running → scored"),
        (sub.track_id, f"submission #{sub.pk}: scored → disqualified"),
    ]

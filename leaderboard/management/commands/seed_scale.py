"""Seed a challenge at scale: N teams × M scored submissions per track with stored results, then
recompute the standings for real. For the leaderboard benchmark and query-count tests.

    manage.py seed_scale --teams 1000 --per-team 10

Stored results are synthetic metric records (what the pipeline would have stored); every score on
the board is computed from them by the real scoring. Bulk inserts keep 10,000 submissions per track
to about a minute on PostgreSQL.
"""

import random
import time
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from evaluation.models import BaseModel, Submission
from leaderboard.seeding import store_results_bulk
from leaderboard.services import standings_recompute_for_track
from portal.models import Challenge, Membership, Prize, Profile, Team, Track

BASES = [("scale-pythia-410m", 410_000_000), ("scale-mistral-7b", 7_240_000_000), ("scale-llama2-13b", 13_000_000_000)]
OPEN = ["mmlu:subject=anatomy", "mmlu:subject=law", "gsm", "truthful_qa:task=mc_single", "bbq:subject=all"]
UNUSABLE = make_password(None)
HIDDEN = ["samsum", "ethics:subset=justice"]
BIAS = "bias_metric:mode=representation,demographic_category=gender"


def _clip(v: float) -> float:
    return max(0.0, min(1.0, v))


def result_document(rng: random.Random, skill: float, compute: float, runs: list[str], hidden: bool = False) -> dict:
    """A plausible suite result: more compute buys accuracy, at a cost in GPU time and memory."""
    records, run_rows = [], []
    for run in runs:
        scenario = run.split(":", 1)[0]
        acc = _clip(0.15 + 0.5 * skill + 0.2 * compute + rng.gauss(0, 0.05))
        metric = "rouge_2" if scenario == "samsum" else "exact_match"
        run_rows.append({"name": run, "scenario": scenario, "main_metric": metric, "status": "ok"})
        base = {"run": run, "scenario": scenario, "metric": metric, "split": "test", "count": 100}
        records.append({**base, "value": round(acc, 4)})
        if not hidden:
            records.append(
                {
                    **base,
                    "perturbation": "robustness",
                    "computed_on": "worst",
                    "value": round(_clip(acc - abs(rng.gauss(0.08, 0.04))), 4),
                }
            )
            records.append(
                {
                    **base,
                    "perturbation": "fairness",
                    "computed_on": "worst",
                    "value": round(_clip(acc - abs(rng.gauss(0.05, 0.03))), 4),
                }
            )
            records.append({**base, "metric": BIAS, "value": round(_clip(rng.gauss(0.3, 0.1)), 4)})
    efficiency = {
        "gpu_seconds": round(600 * (0.4 + 2.5 * compute) * rng.uniform(0.9, 1.1), 1),
        "peak_gpu_memory_bytes": int((4 + 20 * compute) * 1024**3),
        "output_tokens_per_second": round(80 / (0.5 + compute) * rng.uniform(0.9, 1.1), 2),
        "latency_mean_s": round(0.2 + compute, 3),
    }
    return {"runs": run_rows, "records": records, "efficiency": efficiency}


class Command(BaseCommand):
    help = "Seed N teams × M scored submissions per track with stored results, then recompute standings."

    def add_arguments(self, parser):
        parser.add_argument("--teams", type=int, default=1000)
        parser.add_argument("--per-team", type=int, default=10, help="Scored submissions per team per track.")
        parser.add_argument("--tracks", default="", help="Comma-separated track slugs (default: all of the challenge).")
        parser.add_argument("--seed", type=int, default=7)
        parser.add_argument("--prefix", default="scale", help="Names of seeded users and teams start with this.")

    def handle(self, *args, teams: int, per_team: int, tracks: str, seed: int, prefix: str, **options):
        rng = random.Random(seed)
        started = time.monotonic()
        challenge = Challenge.objects.current() or self._challenge()
        track_qs = Track.objects.filter(challenge=challenge)
        if tracks:
            track_qs = track_qs.filter(slug__in=tracks.split(","))
        track_list = list(track_qs)
        bases = [
            BaseModel.objects.get_or_create(
                name=name, defaults={"architecture": "LlamaForCausalLM", "parameter_count": n, "licence": "apache-2.0"}
            )[0]
            for name, n in BASES
        ]
        team_list = self._teams(challenge, teams, prefix, rng)
        self.stdout.write(f"{len(team_list)} teams ready ({time.monotonic() - started:.1f}s)")
        for track in track_list:
            self._track(track, team_list, bases, per_team, rng)
            t0 = time.monotonic()
            snapshot = standings_recompute_for_track(track.pk, trigger="seed_scale")
            self.stdout.write(
                f"{track.slug}: {snapshot.standings.count()} standings, {snapshot.entry_count} ranked "
                f"(recompute {time.monotonic() - t0:.1f}s)"
            )
        self.stdout.write(self.style.SUCCESS(f"Seeded in {time.monotonic() - started:.1f}s"))

    def _challenge(self) -> Challenge:
        now = timezone.now()
        challenge = Challenge.objects.create(
            name="LLM Efficiency Challenge (scale)",
            slug="scale",
            starts_at=now - timedelta(days=60),
            submissions_open_at=now - timedelta(days=30),
            submission_deadline=now + timedelta(days=30),
            winners_notified_at=now + timedelta(days=60),
            presentation_at=now + timedelta(days=90),
        )
        for order, (slug, name, gpu, mem) in enumerate(
            [("4090", "NVIDIA RTX 4090", "NVIDIA RTX 4090", 24), ("a100", "NVIDIA A100", "NVIDIA A100", 80)]
        ):
            track = Track.objects.create(
                challenge=challenge, slug=slug, name=name, gpu_model=gpu, gpu_memory_gb=mem, order=order
            )
            for place, amount in ((1, 5000), (2, 2500), (3, 1000)):
                Prize.objects.create(track=track, kind=Prize.Kind.PLACE, place=place, amount_usd=amount)
            Prize.objects.create(track=track, kind=Prize.Kind.STUDENT, amount_usd=500, count=2)
        return challenge

    @transaction.atomic
    def _teams(self, challenge: Challenge, n: int, prefix: str, rng: random.Random) -> list[Team]:
        User = get_user_model()
        existing = list(Team.objects.filter(challenge=challenge, slug__startswith=f"{prefix}-"))
        if len(existing) >= n:
            return existing[:n]
        start = len(existing)
        users = User.objects.bulk_create(
            [
                User(
                    username=f"{prefix}{challenge.pk}-{i}",
                    email=f"{prefix}{challenge.pk}-{i}@example.org",
                    password=UNUSABLE,
                )
                for i in range(start, n)
            ],
            batch_size=2000,
        )
        Profile.objects.bulk_create(
            [
                Profile(
                    user=u,
                    display_name=f"Member {u.username}",
                    student_status=Profile.StudentStatus.VERIFIED
                    if rng.random() < 0.3
                    else Profile.StudentStatus.NOT_STUDENT,
                )
                for u in users
            ],
            batch_size=2000,
        )
        created = Team.objects.bulk_create(
            [
                Team(challenge=challenge, name=f"{prefix.title()} team {i:04d}", slug=f"{prefix}-{i:04d}", captain=u)
                for i, u in zip(range(start, n), users, strict=True)
            ],
            batch_size=2000,
        )
        Membership.objects.bulk_create(
            [Membership(team=t, user=t.captain, challenge=challenge) for t in created], batch_size=2000
        )
        return existing + created

    @transaction.atomic
    def _track(
        self, track: Track, teams: list[Team], bases: list[BaseModel], per_team: int, rng: random.Random
    ) -> None:
        now = timezone.now()
        rows = []
        for team in teams:
            skill = rng.random()
            base = rng.choice(bases)
            for j in range(per_team):
                compute = _clip(rng.betavariate(2, 3))
                rows.append(
                    (
                        Submission(
                            team=team,
                            track=track,
                            created_by_id=team.captain_id,
                            created_at=now - timedelta(minutes=rng.randint(0, 60 * 24 * 60)),
                            base_model=base,
                            datasets="seeded",
                            finetune_gpu_hours=round(24 * compute, 2),
                            recipe_url="https://example.org/recipe",
                            status=Submission.Status.SCORED,
                            parameter_count=base.parameter_count,
                            is_final=j == per_team - 1,
                        ),
                        skill,
                        compute,
                    )
                )
        subs = Submission.objects.bulk_create([r[0] for r in rows], batch_size=2000)
        count = store_results_bulk(
            (
                s,
                {
                    "open": result_document(rng, skill, compute, OPEN),
                    "hidden": result_document(rng, skill, compute, HIDDEN, hidden=True),
                },
            )
            for s, (_, skill, compute) in zip(subs, rows, strict=True)
        )
        self.stdout.write(f"{track.slug}: {len(subs)} submissions, {count} metric records stored")

from django.core.management.base import BaseCommand

from evaluation.demo import seed_demo_submissions


class Command(BaseCommand):
    help = (
        "Upload a tiny, really built model for each demo team through the tus services; the demo worker "
        "validates and evaluates them on CPU. Run after seed_demo."
    )

    def add_arguments(self, parser):
        parser.add_argument("--per-team", type=int, default=1)
        parser.add_argument("--track", default=None, help="Track slug (default: the first track).")
        parser.add_argument("--teams", type=int, default=None, help="At most this many teams.")

    def handle(self, *args, per_team: int, track: str | None, teams: int | None, **options):
        created = seed_demo_submissions(per_team=per_team, track_slug=track, teams=teams)
        for submission in created:
            self.stdout.write(f"  #{submission.pk} {submission.team} → {submission.get_status_display()}")
        self.stdout.write(
            self.style.SUCCESS(f"{len(created)} demo submission(s) uploaded; the worker validates and evaluates them.")
        )

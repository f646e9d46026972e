from django.core.management.base import BaseCommand

from portal import demo


class Command(BaseCommand):
    help = "Create (or bring up to date) the demo challenge, its tracks and prizes, an organizer and a few teams."

    def add_arguments(self, parser):
        parser.add_argument(
            "--announced-dates",
            action="store_true",
            help="Keep the 2023 dates exactly as announced (the challenge is then over). By default the same "
            "calendar is moved so that submissions are open today.",
        )

    def handle(self, *args, announced_dates: bool = False, **options):
        result = demo.seed_demo(announced_dates=announced_dates)
        challenge = result["challenge"]
        self.stdout.write(self.style.SUCCESS(f"Seeded “{challenge.name}” with {challenge.tracks.count()} tracks."))
        for label, when in challenge.important_dates():
            self.stdout.write(f"  {label:<22} {when.astimezone(challenge.tz):%Y-%m-%d %H:%M} AoE")
        self.stdout.write("Accounts (e-mail verified):")
        self.stdout.write(f"  organizer    {demo.ORGANIZER_EMAIL} / {demo.ORGANIZER_PASSWORD}  (admin at /admin/)")
        for email in result["people"]:
            self.stdout.write(f"  participant  {email} / {demo.PARTICIPANT_PASSWORD}")

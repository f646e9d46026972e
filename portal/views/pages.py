from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from portal import selectors


def home(request: HttpRequest) -> HttpResponse:
    challenge = selectors.challenge_current()
    context: dict = {"challenge": challenge}
    if challenge is not None:
        now = timezone.now()
        context.update(
            tracks=selectors.challenge_tracks(challenge),
            next_date=challenge.next_date(now),
            dates=[
                {"label": label, "when": when, "past": when <= now, "local": when.astimezone(challenge.tz)}
                for label, when in challenge.important_dates()
            ],
            my_team=selectors.team_of_user(request.user, challenge),
            description_paragraphs=[p.strip() for p in challenge.description.split("\n\n") if p.strip()],
            rules_paragraphs=[p.strip() for p in challenge.rules.split("\n\n") if p.strip()],
        )
    return render(request, "portal/home.html", context)

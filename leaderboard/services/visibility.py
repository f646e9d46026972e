"""Organizers make the hidden-suite results public (audited)."""

from django.db import transaction
from django.utils import timezone

from portal.errors import Conflict, NotFound
from portal.models import Challenge, Track
from portal.services.audit import audit_record

from ..caching import forget_track_state


@transaction.atomic
def hidden_results_reveal(*, challenge_id: int, actor) -> Challenge:
    """From now on everyone sees hidden-suite scores, the final scores and the final ranking.

    Standings are not recomputed: they already hold both suites; only what pages show changes."""
    challenge = Challenge.objects.select_for_update().filter(pk=challenge_id).first()
    if challenge is None:
        raise NotFound(f"Challenge {challenge_id} does not exist.")
    if challenge.hidden_revealed_at is not None:
        raise Conflict("The hidden-suite results are already public.")
    challenge.hidden_revealed_at = timezone.now()
    challenge.save(update_fields=["hidden_revealed_at"])
    forget_track_state(*Track.objects.filter(challenge=challenge).values_list("slug", flat=True))
    audit_record(
        actor=actor,
        action="challenge.reveal_hidden",
        obj=challenge,
        data={"revealed_at": challenge.hidden_revealed_at.isoformat()},
    )
    return challenge

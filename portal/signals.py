"""Every user has a Profile from the moment the account exists."""

from django.conf import settings
from django.db.models.signals import post_save
from django.dispatch import receiver

from portal.models import Profile


@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="portal_profile_for_user")
def profile_for_new_user(sender, instance, created: bool, raw: bool = False, **kwargs) -> None:
    if created and not raw:
        Profile.objects.get_or_create(user=instance)

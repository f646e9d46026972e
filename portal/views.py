from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from portal.models import Challenge


def home(request):
    challenge = Challenge.objects.current()
    return render(request, "portal/home.html", {"challenge": challenge})


@login_required
def profile(request):
    return render(request, "portal/home.html", {"challenge": Challenge.objects.current()})


@login_required
def my_team(request):
    return render(request, "portal/home.html", {"challenge": Challenge.objects.current()})

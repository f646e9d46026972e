from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from portal import selectors, services
from portal.errors import NotFound, ServiceError
from portal.forms import ProfileForm
from portal.models import Profile
from portal.views.base import service_errors


@login_required
def profile(request: HttpRequest) -> HttpResponse:
    prof = services.profile_ensure(user=request.user)
    if request.method == "POST":
        form = ProfileForm(request.POST, request.FILES)
        if form.is_valid():
            data = form.cleaned_data
            try:
                services.profile_update(
                    user=request.user,
                    display_name=data["display_name"],
                    affiliation=data["affiliation"],
                    country=data["country"],
                    is_student=data["is_student"],
                    evidence=data["student_evidence"] or None,
                )
            except ServiceError as error:
                form.add_error(error.field if error.field in form.fields else None, error.message)
            else:
                messages.success(request, "Your profile is saved.")
                return redirect("profile")
    else:
        form = ProfileForm(
            initial={
                "display_name": prof.display_name,
                "affiliation": prof.affiliation,
                "country": prof.country,
                "is_student": prof.student_status != Profile.StudentStatus.NOT_STUDENT,
            }
        )
    challenge = selectors.challenge_current()
    return render(
        request,
        "portal/profile.html",
        {"form": form, "profile": prof, "team": selectors.team_of_user(request.user, challenge)},
    )


@login_required
@service_errors
def evidence_download(request: HttpRequest, profile_id: int) -> HttpResponse:
    """Streams a student's evidence to its owner and organizers only; there is no public URL for it."""
    prof = selectors.evidence_profile_for(request.user, profile_id)
    name = prof.student_evidence.name
    try:
        handle = prof.student_evidence.open("rb")
    except OSError:
        raise NotFound("The evidence file is missing from storage; upload it again.")
    response = FileResponse(handle, content_type=services.evidence_content_type(name))
    response["Content-Disposition"] = f'inline; filename="student-evidence-{prof.pk}.{name.rsplit(".", 1)[-1]}"'
    response["Cache-Control"] = "private, no-store"
    response["X-Content-Type-Options"] = "nosniff"
    return response

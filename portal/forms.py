"""Input forms. They parse and check shapes; the rules live in portal.services."""

from django import forms
from django.conf import settings
from django_countries.data import COUNTRIES


def _country_choices() -> list[tuple[str, str]]:
    return [("", "—")] + sorted(((code, str(name)) for code, name in COUNTRIES.items()), key=lambda c: c[1])


class ProfileForm(forms.Form):
    display_name = forms.CharField(max_length=100, required=False, help_text="Shown on team pages and leaderboards.")
    affiliation = forms.CharField(max_length=200, required=False, help_text="University, lab or company.")
    country = forms.ChoiceField(choices=_country_choices, required=False)
    is_student = forms.BooleanField(
        required=False,
        label="I am a student matriculating in a university or graduate program",
        help_text="Teams made up entirely of verified students compete for the student awards.",
    )
    student_evidence = forms.FileField(
        required=False,
        label="Evidence of enrolment",
        help_text="A student ID or enrolment letter: PDF, PNG or JPEG.",
        widget=forms.FileInput(attrs={"accept": ".pdf,.png,.jpg,.jpeg,application/pdf,image/png,image/jpeg"}),
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        limit_mb = settings.STUDENT_EVIDENCE_MAX_BYTES / 1024 / 1024
        self.fields["student_evidence"].help_text += f" At most {limit_mb:g} MB."


class TeamCreateForm(forms.Form):
    name = forms.CharField(max_length=80, min_length=2, label="Team name")


class InviteEmailForm(forms.Form):
    email = forms.EmailField(label="E-mail address")


class RejectEvidenceForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="The participant sees this text on their profile page.",
    )

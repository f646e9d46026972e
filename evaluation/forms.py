from django import forms

from evaluation.models import BaseModel
from portal.models import Track


class SubmissionForm(forms.Form):
    track = forms.ModelChoiceField(queryset=Track.objects.none(), empty_label=None)
    base_model = forms.ModelChoiceField(
        queryset=BaseModel.objects.filter(is_active=True),
        label="Base model",
        help_text="From the organizers' allow-list.",
    )
    datasets = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Datasets used for fine-tuning, with their licences, one per line. Open datasets only.",
    )
    finetune_gpu_hours = forms.FloatField(
        label="Fine-tuning GPU-hours", min_value=0, help_text="On the track's GPU; at most the track's limit."
    )
    recipe_url = forms.URLField(
        label="Training recipe", max_length=500, help_text="Link to the repository and commit that trains this model."
    )
    notes = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)

    def __init__(self, *args, challenge=None, **kwargs):
        super().__init__(*args, **kwargs)
        if challenge is not None:
            self.fields["track"].queryset = Track.objects.filter(challenge=challenge, finalized_at__isnull=True)
            self.fields["base_model"].label_from_instance = lambda b: f"{b} ({b.name}, {b.licence})"
            self.fields["track"].label_from_instance = lambda t: (
                f"{t.name} (≤ {t.finetune_hours_limit:g} GPU-hours, {t.gpu_memory_gb} GB)"
            )

    def clean(self):
        data = super().clean()
        track, hours = data.get("track"), data.get("finetune_gpu_hours")
        if track and hours is not None and hours > track.finetune_hours_limit:
            self.add_error("finetune_gpu_hours", f"At most {track.finetune_hours_limit:g} GPU-hours on {track.name}.")
        return data

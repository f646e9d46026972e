"""What validation reports. Every rejection names the file, the rule and the fix."""


class ValidationFailed(Exception):
    """The submission breaks a rule: the participant's to fix. `message` is shown to the team as is."""

    def __init__(self, file: str, rule: str, fix: str):
        self.file = file
        self.rule = rule
        self.fix = fix
        self.message = f"{file}: {rule} {fix}".strip()
        super().__init__(self.message)


class ValidatorUnavailable(Exception):
    """Validation could not run for a reason of ours (a base model's files missing): retry, never the team's fault."""

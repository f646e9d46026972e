"""Small helpers every `apis.py` shares."""

from rest_framework import serializers
from rest_framework.request import Request


def _refuse_nul_characters(data, path: str = "") -> None:
    """PostgreSQL cannot store or even compare text holding NUL; say so before a query fails with a 500.

    DRF's CharField already refuses it, but lookups (slug and primary-key related fields) do not.
    """
    if isinstance(data, str):
        if "\x00" in data:
            raise serializers.ValidationError({path or "non_field_errors": ["Text may not contain NUL characters."]})
    elif isinstance(data, dict) or hasattr(data, "lists"):
        items = data.lists() if hasattr(data, "lists") else data.items()
        for key, value in items:
            _refuse_nul_characters(str(key), path)
            _refuse_nul_characters(value, str(key))
    elif isinstance(data, (list, tuple)):
        for value in data:
            _refuse_nul_characters(value, path)


def parse(serializer_class: type[serializers.Serializer], request: Request, *, partial: bool = False) -> dict:
    """Validated input, or a 400 in the one error format."""
    _refuse_nul_characters(request.data)
    serializer = serializer_class(data=request.data, partial=partial)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def parse_query(serializer_class: type[serializers.Serializer], request: Request) -> dict:
    serializer = serializer_class(data=request.query_params)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data

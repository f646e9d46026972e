"""Small helpers every `apis.py` shares."""

from rest_framework import serializers
from rest_framework.request import Request


def parse(serializer_class: type[serializers.Serializer], request: Request, *, partial: bool = False) -> dict:
    """Validated input, or a 400 in the one error format."""
    serializer = serializer_class(data=request.data, partial=partial)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def parse_query(serializer_class: type[serializers.Serializer], request: Request) -> dict:
    serializer = serializer_class(data=request.query_params)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data

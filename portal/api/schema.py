"""OpenAPI additions: the token scheme, and the one error shape on every operation."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension

ERROR_COMPONENT = "Error"
_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "description": "Stable, machine-readable, e.g. `invalid`, `not_found`."},
                "message": {"type": "string", "description": "One human sentence, safe to show as is."},
                "fields": {
                    "type": "object",
                    "additionalProperties": {"type": "array", "items": {"type": "string"}},
                    "description": "Messages per input field (dotted paths for nested fields).",
                },
            },
            "required": ["code", "message", "fields"],
        }
    },
    "required": ["error"],
}
_ERRORS = {
    "400": "Invalid input or a request the rules refuse.",
    "401": "Not authenticated, or the token is unknown, revoked or expired.",
    "403": "Authenticated but not allowed.",
    "404": "No such object, or not visible to you.",
    "405": "Method not allowed.",
    "409": "Conflicts with the object's current state.",
    "415": "Unsupported media type.",
    "429": "Too many requests.",
}


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "portal.api.authentication.ApiTokenAuthentication"
    name = "apiToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A personal API token from your profile page: `Authorization: Bearer llmec_…`.",
        }


def add_error_responses(result: dict, generator, request, public) -> dict:
    """Postprocessing hook: document the error shape for every status an operation can answer."""
    result.setdefault("components", {}).setdefault("schemas", {})[ERROR_COMPONENT] = _ERROR_SCHEMA
    ref = {"$ref": f"#/components/schemas/{ERROR_COMPONENT}"}
    for path_item in result.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            for code, description in _ERRORS.items():
                operation["responses"].setdefault(
                    code, {"description": description, "content": {"application/json": {"schema": ref}}}
                )
    return result

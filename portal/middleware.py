"""Request checks that hold for every page and API call."""

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse


class RefuseNulCharactersMiddleware:
    """A NUL character in the address or the query string is a 400, never a database error.

    PostgreSQL cannot compare text holding NUL, so a filter like `?base=%00` would otherwise answer 500.
    Bodies are checked where they are parsed (Django form fields, `portal.api.utils.parse`).
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if "\x00" in request.path or any("\x00" in k or "\x00" in v for k, vs in request.GET.lists() for v in vs):
            message = "The address may not contain NUL characters."
            if request.path.startswith("/api/"):
                return JsonResponse({"error": {"code": "invalid", "message": message, "fields": {}}}, status=400)
            return HttpResponseBadRequest(message)
        return self.get_response(request)

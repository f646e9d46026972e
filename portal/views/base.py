"""The one place where a refused action becomes an HTTP answer."""

import functools
from collections.abc import Callable

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from portal.errors import ServiceError


def error_page(request: HttpRequest, error: ServiceError) -> HttpResponse:
    return render(request, "portal/error.html", {"error": error}, status=error.status_code)


def service_errors(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A ServiceError escaping a page view renders as a page with its message and status code (never a 500)."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except ServiceError as error:
            return error_page(request, error)

    return wrapper


def run_action(request: HttpRequest, action: Callable[[], object], *, success: str, back: str, **back_kwargs):
    """POST handlers: do one service call, flash its outcome, go back to where the user was."""
    try:
        action()
    except ServiceError as error:
        messages.error(request, error.message)
    else:
        if success:
            messages.success(request, success)
    return redirect(back, **back_kwargs)

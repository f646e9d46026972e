"""A thin client for the portal's /api/v1/ that turns every error answer into one readable line."""

from __future__ import annotations

from typing import Any

import requests

from llmec import __version__

API_PREFIX = "/api/v1"


class ApiError(Exception):
    """An error answer in the portal's format `{"error": {"code", "message", "fields"}}`, or no answer."""

    def __init__(self, status: int, code: str, message: str, fields: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or {}

    def __str__(self) -> str:
        details = "; ".join(
            f"{name}: {' '.join(messages)}"
            for name, messages in self.fields.items()
            if not self.message.startswith(f"{name}:")
        )
        where = f" (HTTP {self.status})" if self.status else ""
        return f"{self.message}{' — ' + details if details else ''}{where}"

    @classmethod
    def from_response(cls, response: requests.Response) -> ApiError:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            error = body["error"]
            return cls(
                response.status_code,
                str(error.get("code", "error")),
                str(error.get("message") or response.reason),
                error.get("fields") or {},
            )
        text = response.text.strip() if response.headers.get("Content-Type", "").startswith("text/plain") else ""
        if text and len(text) < 500:
            return cls(response.status_code, "http_error", text)
        hints = {
            401: "Not logged in: set LLMEC_TOKEN or run `llmec login`.",
            403: "Not allowed.",
            404: "Not found: is LLMEC_SERVER the portal's address?",
            413: "The request is too large for the server.",
            502: "The server is unreachable behind its proxy; retry later.",
            503: "The server is unavailable; retry later.",
        }
        message = hints.get(response.status_code, f"The server answered {response.status_code} {response.reason}.")
        return cls(response.status_code, "http_error", message)


class Client:
    def __init__(self, server: str, token: str | None = None, timeout: float = 60.0):
        self.server = server.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["User-Agent"] = f"llmec/{__version__}"
        self.session.headers["Accept"] = "application/json"
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def url(self, path: str) -> str:
        if path.startswith("http://") or path.startswith("https://"):
            return path
        if not path.startswith(API_PREFIX) and not path.startswith("/"):
            path = f"{API_PREFIX}/{path}"
        return self.server + path

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.session.request(method, self.url(path), timeout=self.timeout, **kwargs)
        except requests.exceptions.SSLError as error:
            raise ApiError(0, "connection_error", f"TLS error talking to {self.server}: {error}") from error
        except requests.exceptions.ConnectionError as error:
            raise ApiError(
                0, "connection_error", f"Cannot reach {self.server}: is the server address right?"
            ) from error
        except requests.exceptions.Timeout as error:
            raise ApiError(0, "timeout", f"{self.server} did not answer within {self.timeout:.0f} s.") from error
        if response.status_code >= 400:
            raise ApiError.from_response(response)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as error:
            raise ApiError(
                response.status_code, "bad_response", f"{self.server} did not answer JSON: is it the portal?"
            ) from error

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, data: dict | None = None) -> Any:
        return self.request("POST", path, json=data or {})

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

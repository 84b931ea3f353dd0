"""The web's answers in its two shapes: plain text for Twilio and load balancers, JSON errors for the admin API."""

from __future__ import annotations

from flask import Response, jsonify, request


def plain_text(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """``message`` as one line of text."""
    return Response(message + "\n", status=status, headers=headers, content_type="text/plain; charset=utf-8")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """An error: ``{"error": {"code", "message"}}`` under ``/admin`` (the admin API's contract), else a text line."""
    if not request.path.startswith("/admin"):
        return plain_text(status, message, headers)
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    response.headers.update(headers or {})
    return response

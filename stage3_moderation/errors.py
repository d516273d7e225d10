"""Week 10: errors the client sees, in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

Framework-free: the FastAPI app (app.py) and any other front end turn an `ApiError` (or one of
the few other exceptions `as_api_error` knows) into a response with this body, so a client
gets one error shape from every endpoint, for every status.
"""

import asyncio
from typing import Optional

from pydantic import BaseModel, Field

from stage3_moderation.batching import Overloaded


class ApiError(Exception):
    """An error the client should see: HTTP status, a message that says what to fix, a short code,
    the request field at fault (param) and extra headers (Retry-After, WWW-Authenticate, Allow)."""

    def __init__(self, message, status=500, code="internal_error", param=None, headers=None):
        super().__init__(message)
        self.message, self.status, self.code, self.param, self.headers = message, status, code, param, headers


class BadInput(ApiError):
    """A client mistake: 4xx (400 unless said otherwise)."""

    def __init__(self, message, status=400, code="invalid_input", param=None, headers=None):
        super().__init__(message, status, code, param, headers)


def retry_later(message, code, seconds):
    """503 + Retry-After: the request was fine, the server cannot take it now."""
    return ApiError(message, 503, code, headers={"Retry-After": str(seconds)})


def as_api_error(exc):
    """The ApiError a client should see for an exception the service raises on purpose, else None."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, Overloaded):
        return retry_later(f"{exc}: retry shortly", "overloaded", 1)
    if isinstance(exc, asyncio.TimeoutError):
        return ApiError("the request took longer than the server's timeout", 504, "timeout")
    return None


def body(error):
    """The JSON body of an ApiError."""
    kind = "invalid_request_error" if error.status < 500 else "server_error"
    return {"error": {"message": error.message, "type": kind, "param": error.param, "code": error.code}}


# ---------------------------------------------------------------- the shape, for the OpenAPI document
class ErrorDetail(BaseModel):
    message: str = Field(description="what went wrong and how to fix it, in one line")
    type: str = Field(description="invalid_request_error (4xx) or server_error (5xx)")
    param: Optional[str] = Field(description="the request field at fault, e.g. input[2]")
    code: Optional[str] = Field(description="a short machine-readable code, e.g. invalid_image")


class ErrorResponse(BaseModel):
    error: ErrorDetail

"""Every error answer is JSON {"error": "one line"}; every answer says nosniff."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("artcap.server")


class ApiError(Exception):
    """An HTTP error whose JSON body is {"error": message}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ErrorBody(BaseModel):
    error: str = Field(description="One line: what was wrong and what to do.")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_middleware(SecurityHeaders)


async def _api_error(_: Request, err: ApiError) -> JSONResponse:
    return JSONResponse({"error": err.message}, status_code=err.status)


async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
    message = {
        404: f"nothing at {request.url.path}; the page is at /, the API at POST /v1/captions (see /docs)",
        405: f"{request.method} is not allowed on {request.url.path}; see /docs for the API",
    }.get(err.status_code, str(err.detail))
    return JSONResponse({"error": one_line(message, 500)}, status_code=err.status_code, headers=err.headers)


async def _validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
    problems = "; ".join(
        f"{' '.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in err.errors()
    )
    return JSONResponse({"error": one_line(f"bad request parameter ({problems}); see /docs", 500)}, status_code=422)


class SecurityHeaders:
    """Pure ASGI middleware: `X-Content-Type-Options: nosniff` on every answer (pages, static files,
    JSON), and an unexpected exception becomes a JSON 500 that carries the header too (Starlette's
    own 500 handler sits outside every middleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                MutableHeaders(scope=message).setdefault("X-Content-Type-Options", "nosniff")
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as err:
            log.exception("unexpected error while serving a request")
            if started:  # too late for an error answer: let the server drop the connection
                raise
            response = JSONResponse(
                {"error": f"internal error ({type(err).__name__}); the server log has details, please report it"},
                status_code=500,
            )
            await response(scope, receive, send_with_headers)


def one_line(text: str, max_chars: int) -> str:
    return " ".join(text.split())[:max_chars]

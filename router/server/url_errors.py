"""404 and 405 answers for paths under `/v1/` in the API's own error shape, so an SDK
pointed at a path or method the server does not serve reports a readable error rather
than failing to parse a bare-text `Not Found`: Anthropic's shape under `/v1/messages`,
OpenAI's (`{"error": {"message", "type", "param", "code"}}`) elsewhere. Other paths keep
Starlette's plain answers.
"""

from __future__ import annotations

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from router.server.openai_errors import error_response


def _anthropic(status: int, type_: str, message: str, headers: dict[str, str]) -> Response:
    body = {"type": "error", "error": {"type": type_, "message": message}}
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")


async def url_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    path = request.url.path
    headers = dict(exc.headers or {})
    if not path.startswith("/v1/"):
        return PlainTextResponse(exc.detail, exc.status_code, headers=headers)
    if exc.status_code == 405:
        allowed = headers.get("Allow", headers.get("allow", ""))
        message = f"Method {request.method} is not allowed on {path} (allowed: {allowed})."
        type_, code = "invalid_request_error", "method_not_allowed"
    else:
        message = f"Invalid URL ({request.method} {path})."
        type_, code = "invalid_request_error", "not_found"
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        kind = "not_found_error" if exc.status_code == 404 else type_
        return _anthropic(exc.status_code, kind, message, headers)
    response = error_response(exc.status_code, message, type_, None, code)
    response.headers.update(headers)
    return response


exception_handlers = {404: url_error, 405: url_error}

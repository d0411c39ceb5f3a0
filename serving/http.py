"""ASGI middleware of the HTTP service: API key, JSON-only bodies, one error-body shape."""

from __future__ import annotations

import hmac
import json
import os
from http import HTTPStatus

ENV_API_KEY = "CHURNLENS_API_KEY"
# "/" is the workspace page: it holds no data and asks for the key itself.
OPEN_PATHS = frozenset({"/livez", "/healthz", "/readyz", "/"})


class HttpGuard:
    """ASGI middleware: API key, JSON-only bodies and one error-body shape.

    BentoML 1.4.39 answers its own 4xx exceptions with a JSON list and pydantic errors with
    a count ("1 validation error for ...") and a `detail` list its own OpenAPI document says
    is a string; both are rewritten here to {"error": message naming the field}. Any 5xx body is replaced by a generic one, so no exception text or
    stack trace ever leaves the server.
    """

    def __init__(self, app) -> None:
        self.app = app
        self.key = os.environ.get(ENV_API_KEY) or None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope["headers"]}
        if self.key and scope["path"] not in OPEN_PATHS and not self._authorised(headers):
            await _send_json(send, 401, {"error": "missing or wrong API key: send "
                                                  "'Authorization: Bearer KEY' or 'X-API-Key: KEY'"})
            return
        media = headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if scope["method"] == "POST" and media != "application/json":
            await _send_json(send, 415, {"error": f"content-type: {media!r} is not accepted; "
                                                  "send application/json"})
            return
        await self.app(scope, receive, _ErrorBodies(send))

    def _authorised(self, headers: dict[str, str]) -> bool:
        bearer = headers.get("authorization", "")
        given = bearer[7:] if bearer.lower().startswith("bearer ") else headers.get("x-api-key")
        return given is not None and hmac.compare_digest(given.encode(), self.key.encode())


class _ErrorBodies:
    """An ASGI `send` that passes successes through and rewrites error bodies."""

    def __init__(self, send) -> None:
        self.send = send
        self.start: dict | None = None
        self.chunks: list[bytes] = []

    async def __call__(self, message) -> None:
        if message["type"] == "http.response.start" and message["status"] >= 400:
            self.start = message
            return
        if self.start is None or message["type"] != "http.response.body":
            await self.send(message)
            return
        self.chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            status = self.start["status"]
            await _send_json(self.send, status, error_body(status, b"".join(self.chunks)),
                             [(k, v) for k, v in self.start["headers"]
                              if k.lower() not in (b"content-length", b"content-type")])


def error_body(status: int, raw: bytes) -> dict:
    """The body for an error response of STATUS whose original body was RAW."""
    if status >= 500:
        reason = {503: "the service is busy or not ready; retry shortly",
                  504: "scoring took too long; retry with fewer customers"}
        return {"error": reason.get(status, "internal error: the request was not scored; "
                                            "the server log has the details")}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {"error": raw.decode("utf-8", "replace").strip() or HTTPStatus(status).phrase}
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]  # BentoML 1.4.39 wraps its exceptions' bodies in a list
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        return {"error": HTTPStatus(status).phrase}
    if isinstance(body.get("detail"), list):
        return {"error": validation_message(body["detail"])}
    return {"error": body["error"]}


def validation_message(detail: list[dict]) -> str:
    """pydantic's errors as one line, each led by the field path ("rows.0.as_of: ...")."""
    parts = []
    for err in detail[:5]:
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}"
                      for p in err.get("loc", ()) if p != "root").lstrip(".") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = f" (and {len(detail) - 5} more)" if len(detail) > 5 else ""
    return "; ".join(parts) + more


async def _send_json(send, status: int, body: dict, headers: list | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [*(headers or []), (b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})

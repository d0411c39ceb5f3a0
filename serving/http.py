"""ASGI middleware of the HTTP service: API key, body limit, JSON-only bodies, one
error-body shape, the API docs page and a valid OpenAPI document; and the log filter that
keeps a client error to its access-log line."""

from __future__ import annotations

import hmac
import json
import logging
import os
from http import HTTPStatus
from urllib.parse import urlsplit

from churnlens.serving.openapi import DOCS_PAGE, fix_spec

ENV_API_KEY = "CHURNLENS_API_KEY"
ENV_MAX_BODY = "CHURNLENS_MAX_BODY_BYTES"
MAX_BODY_BYTES = 16 * 2**20  # a page of 1000 explicit feature rows is about 2.5 MB
# "/" is the workspace page and /docs the API docs: static pages that hold no data and ask
# for the key themselves (a browser cannot send a key header when it loads a page or its
# scripts); BentoML's Swagger UI files are /static_content/.
OPEN_PATHS = frozenset({"/livez", "/healthz", "/readyz", "/", "/docs"})
OPEN_PREFIXES = ("/static_content/",)


class HttpGuard:
    """ASGI middleware: API key, JSON-only bodies and one error-body shape.

    BentoML 1.4.39 answers its own 4xx exceptions with a JSON list and pydantic errors with
    a count ("1 validation error for ...") and a `detail` list its own OpenAPI document says
    is a string; both are rewritten here to {"error": message naming the field}. Any 5xx
    body is replaced by a generic one, so no exception text or stack trace ever leaves the
    server. A body over CHURNLENS_MAX_BODY_BYTES gets 413 before it is read; a redirect's
    Location is a path, never built from the Host header; /docs.json is made valid
    OpenAPI 3.0 (`churnlens.serving.openapi`) and /docs shows it.
    """

    def __init__(self, app) -> None:
        self.app = app
        self.key = os.environ.get(ENV_API_KEY) or None
        self.max_body = int(os.environ.get(ENV_MAX_BODY) or MAX_BODY_BYTES)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope["headers"]}
        path = scope["path"]
        if path == "/docs" and scope["method"] in ("GET", "HEAD"):
            await _send(send, 200, DOCS_PAGE.encode(), b"text/html; charset=utf-8")
            return
        if (self.key and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES)
                and not self._authorised(headers)):
            await _send_json(send, 401, {"error": "missing or wrong API key: send "
                                                  "'Authorization: Bearer KEY' or 'X-API-Key: KEY'"})
            return
        if scope["method"] == "POST":
            media = headers.get("content-type", "application/json").split(";")[0].strip().lower()
            if media != "application/json":
                await _send_json(send, 415, {"error": f"content-type: {media!r} is not "
                                                      "accepted; send application/json"})
                return
            receive = await self._limited(headers.get("content-length"), receive, send)
            if receive is None:
                return
        await self.app(scope, receive, _Responses(send, spec=path == "/docs.json"))

    async def _limited(self, declared: str | None, receive, send):
        """RECEIVE, or None after answering 413 (or 400 for a bad length): a declared length
        is checked before any byte is read; a chunked body is read up to the limit."""
        if declared is not None:
            if not declared.isdigit():
                await _send_json(send, 400, {"error": f"content-length: {declared!r} is not "
                                                      "a number of bytes"})
                return None
            if int(declared) <= self.max_body:
                return receive
            size = int(declared)
        else:
            chunks, size, more = [], 0, True
            while more and size <= self.max_body:
                message = await receive()
                if message["type"] != "http.request":
                    return _replay([message])
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                more = message.get("more_body", False)
            if size <= self.max_body:
                return _replay([{"type": "http.request", "body": b"".join(chunks),
                                 "more_body": False}])
        await _send_json(send, 413, {"error": f"request body: {size:,} bytes or more is over "
                                              f"the limit of {self.max_body:,}; split the "
                                              "request into smaller pages"})
        return None

    def _authorised(self, headers: dict[str, str]) -> bool:
        bearer = headers.get("authorization", "")
        given = bearer[7:] if bearer.lower().startswith("bearer ") else headers.get("x-api-key")
        return given is not None and hmac.compare_digest(given.encode(), self.key.encode())


def json_response(body):
    """BODY (score records: dicts of str, finite float, int and None) as a JSON response.

    A scoring endpoint returns this instead of its pydantic models: BentoML then sends it
    as is, instead of validating every record into models and dumping them again, which
    took longer than scoring a page. The records' shape is the published schema's (the
    OpenAPI and fuzz tests check answers against it); a NaN left anywhere is a 500.
    """
    from starlette.responses import Response

    return Response(json.dumps(body, allow_nan=False).encode(), media_type="application/json")


def _replay(messages: list[dict]):
    """An ASGI `receive` that gives MESSAGES, then waits for the client to disconnect."""
    queue = list(messages)

    async def receive() -> dict:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    return receive


class _Responses:
    """An ASGI `send` that rewrites error bodies, redirects' Location headers and (SPEC) the
    OpenAPI document, and passes everything else through."""

    def __init__(self, send, spec: bool = False) -> None:
        self.send, self.spec = send, spec
        self.start: dict | None = None
        self.chunks: list[bytes] = []

    async def __call__(self, message) -> None:
        if message["type"] == "http.response.start":
            status = message["status"]
            if status >= 400 or (self.spec and status == 200):
                self.start = message
                return
            if 300 <= status < 400:
                message = {**message, "headers": [
                    (k, _path_only(v) if k.lower() == b"location" else v)
                    for k, v in message["headers"]]}
        if self.start is None or message["type"] != "http.response.body":
            await self.send(message)
            return
        self.chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            status, raw = self.start["status"], b"".join(self.chunks)
            body = fix_spec(json.loads(raw)) if status == 200 else error_body(status, raw)
            await _send_json(self.send, status, body,
                             [(k, v) for k, v in self.start["headers"]
                              if k.lower() not in (b"content-length", b"content-type")])


def _path_only(location: bytes) -> bytes:
    """A redirect target without scheme and host: Starlette builds them from the request's
    Host header, which a client controls."""
    parts = urlsplit(location.decode("latin-1"))
    return (parts.path or "/").encode("latin-1") + (f"?{parts.query}".encode("latin-1")
                                                   if parts.query else b"")


class ClientErrorLog(logging.Filter):
    """Drops BentoML's ERROR record (with a traceback) for a client error (4xx): the
    access log's line already says the call and its status, and the client got the
    message. Server errors (5xx) are kept with their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        from bentoml.exceptions import BentoMLException
        from pydantic import ValidationError

        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, ValidationError):
            return False
        return not (isinstance(error, BentoMLException) and error.error_code.value < 500)


def quiet_client_errors() -> None:
    """Install `ClientErrorLog` on the logger BentoML reports request errors with."""
    logger = logging.getLogger("bentoml._internal.server.http_app")
    if not any(isinstance(f, ClientErrorLog) for f in logger.filters):
        logger.addFilter(ClientErrorLog())


def error_body(status: int, raw: bytes) -> dict:
    """The body for an error response of STATUS whose original body was RAW."""
    if status == 503 and (preparing := _preparing(raw)) is not None:
        return preparing  # the workspace's build progress (churnlens.serving.workspace_app)
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


def _preparing(raw: bytes) -> dict | None:
    """RAW's {"error", "preparing": {"done", "total", "stage"}} rebuilt from those fields
    alone, or None when RAW is not such a body."""
    try:
        body = json.loads(raw)
        p = body["preparing"]
        return {"error": str(body["error"]), "preparing": {
            "done": int(p["done"]), "total": int(p["total"]), "stage": str(p["stage"])}}
    except (ValueError, UnicodeDecodeError, TypeError, KeyError):
        return None


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
    await _send(send, status, json.dumps(body).encode(), b"application/json", headers)


async def _send(send, status: int, data: bytes, media: bytes, headers: list | None = None
                ) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*(headers or []), (b"content-type", media),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})

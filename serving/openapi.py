"""The service's OpenAPI document made valid OpenAPI 3.0, and the page that shows it.

BentoML 1.4.39 publishes /docs.json as OpenAPI 3.0.2 but fills it with pydantic's JSON
Schema (2020-12): `{"type": "null"}` branches for optional values, `examples` lists,
`const`, and its own `root_input` key, which openapi-spec-validator rejects. `fix_spec`
rewrites those into their 3.0 forms (`nullable: true`, `example`, `enum`), drops a
`default: null` the schema cannot hold, and marks every request body required.
`DOCS_PAGE` is the Swagger UI page served at /docs from BentoML's own copy of Swagger UI,
with no request to any other host (BentoML's page at / loads a tag manager).
"""

from __future__ import annotations

from typing import Any

NULL = {"type": "null"}
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_SCHEMA_ONE = ("items", "additionalProperties", "not")


def fix_spec(spec: dict) -> dict:
    """SPEC (an OpenAPI document as BentoML writes it) as valid OpenAPI 3.0; not modified."""
    out = _copy(spec)
    for schema in out.get("components", {}).get("schemas", {}).values():
        _fix_schema(schema)
    for item in out.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict):
                continue
            body = operation.get("requestBody")
            if body:
                body["required"] = True
                for media in body.get("content", {}).values():
                    _fix_schema(media.get("schema", {}))
            for response in operation.get("responses", {}).values():
                for media in response.get("content", {}).values():
                    _fix_schema(media.get("schema", {}))
            for parameter in operation.get("parameters", []):
                _fix_schema(parameter.get("schema", {}))
    return out


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _fix_schema(schema: dict) -> None:
    """One JSON Schema object rewritten in place to OpenAPI 3.0's dialect, children first."""
    if not isinstance(schema, dict):
        return
    for key in _SCHEMA_LISTS:
        for child in schema.get(key, []):
            _fix_schema(child)
    for key in _SCHEMA_MAPS:
        for child in schema.get(key, {}).values():
            _fix_schema(child)
    for key in _SCHEMA_ONE:
        if isinstance(schema.get(key), dict):
            _fix_schema(schema[key])
    schema.pop("root_input", None)
    if "examples" in schema:
        examples = schema.pop("examples")
        if isinstance(examples, list) and examples:
            schema.setdefault("example", examples[0])
    if "const" in schema:
        schema["enum"] = [schema.pop("const")]
    if schema.get("type") == "null":
        schema.pop("type")
        schema["nullable"] = True
    _nullable_branches(schema)
    if "default" in schema and schema["default"] is None and not schema.get("nullable"):
        del schema["default"]  # an optional field left out, not one that may be null


def _nullable_branches(schema: dict) -> None:
    """`anyOf: [X, {"type": "null"}]` -> X with `nullable: true` (3.0 has no null type)."""
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if not branches:
            continue
        rest = [b for b in branches if b != NULL and b != {"nullable": True}]
        if len(rest) == len(branches):
            continue
        del schema[key]
        schema["nullable"] = True
        if len(rest) > 1:
            schema[key] = rest
        elif rest and "$ref" in rest[0]:
            schema["allOf"] = rest  # a $ref takes no sibling keys in 3.0
        elif rest:
            for k, v in rest[0].items():
                schema.setdefault(k, v)


DOCS_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>churnlens API</title>
<link rel="stylesheet" href="./static_content/swagger-ui.css">
<style>
  #key { font: 14px sans-serif; padding: 8px 16px; background: #f3f3f3; display: none; }
  #key input { width: 22em; }
</style>
</head>
<body>
<form id="key">This service needs an API key:
  <input type="password" name="key" autocomplete="off"> <button>Use it</button>
  (kept in this browser tab only)</form>
<div id="swagger-ui"></div>
<script src="./static_content/swagger-ui-bundle.js"></script>
<script>
(function () {
  var form = document.getElementById("key");
  function key() { return sessionStorage.getItem("churnlens-api-key"); }
  form.onsubmit = function (event) {
    event.preventDefault();
    sessionStorage.setItem("churnlens-api-key", form.elements.key.value);
    location.reload();
  };
  fetch("./docs.json", {headers: key() ? {"X-API-Key": key()} : {}}).then(function (r) {
    if (r.status === 401) { form.style.display = "block"; return; }
    SwaggerUIBundle({
      url: "./docs.json", dom_id: "#swagger-ui", deepLinking: true,
      requestInterceptor: function (request) {
        if (key()) { request.headers["X-API-Key"] = key(); }
        return request;
      }
    });
  });
})();
</script>
</body>
</html>
"""

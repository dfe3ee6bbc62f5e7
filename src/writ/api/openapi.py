"""The OpenAPI document: every operation gets the real error shape (:data:`ERROR_RESPONSES`)
instead of FastAPI's ``detail`` one."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from writ.api.errors import ERROR_RESPONSES


def _document_errors(schema: dict[str, Any]) -> None:
    """Give every operation the real error shape instead of FastAPI's ``detail`` one."""
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                "additionalProperties": True,
            }
        },
    }
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, ops in schema.get("paths", {}).items():
        for op in ops.values():
            responses = op.setdefault("responses", {})
            for status, text in ERROR_RESPONSES.items():
                if path == "/v1/health" and status not in (413, 503):
                    continue
                responses[str(status)] = {"description": text, "content": ref}
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)


def install_openapi(app: FastAPI) -> None:
    """Document the error answers in ``app``'s ``/openapi.json`` (built once, on first use)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _document_errors(generate())
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]

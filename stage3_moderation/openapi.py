"""Week 10: the OpenAPI document: what FastAPI derives from the routes, plus what it cannot see.

The /v1 routes read their bodies themselves (JSON or multipart, parsed from the bytes by
inputs.py), so FastAPI sees no body parameter. Each route declares its two bodies with
`request_body`, and `document` adds the models' schemas (and the error's) to the components,
where the $refs point. Errors are documented with their schema for every status a route can answer; the
bearer scheme comes from FastAPI's HTTPBearer, and operations that need no key under the
running settings (every one when MODERATION_API_KEYS is unset) say so.
"""

from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from stage3_moderation import inputs
from stage3_moderation.errors import ErrorResponse

REF = "#/components/schemas/{model}"
ERRORS = {
    400: "the body is malformed or an input is invalid (message, param and code say which)",
    401: "a missing or wrong API key",
    404: "the requested model is not served here",
    413: "over a limit: body bytes, text length, entries, image pixels, frames or request pixels",
    415: "the body is neither application/json nor multipart/form-data",
    500: "an unexpected error, logged under the response's X-Request-ID",
    503: "not ready yet, or no room for the request now (queue or pixel budget full): retry after Retry-After",
    504: "the request took longer than MODERATION_TIMEOUT_S",
}
HEADERS = {
    401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}},
}


def request_body(json_model, form_model):
    """openapi_extra for a route that takes either body."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": REF.format(model=json_model.__name__)}},
                "multipart/form-data": {"schema": {"$ref": REF.format(model=form_model.__name__)}},
            },
        }
    }


def errors(*statuses):
    """`responses` for a route: each status with the error schema (JSON whatever the route's own
    type, /metrics' text included) and the headers it always carries."""
    content = {"application/json": {"schema": {"$ref": REF.format(model=ErrorResponse.__name__)}}}
    return {
        status: {
            "content": content,
            "description": ERRORS[status],
            **({"headers": HEADERS[status]} if status in HEADERS else {}),
        }
        for status in statuses
    }


def document(app, settings):
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    models = [*inputs.REQUEST_MODELS, ErrorResponse]
    _, definitions = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    schema["components"]["schemas"].update(definitions["$defs"])
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            if not settings.requires_key(path):
                operation.pop("security", None)
                operation["responses"].pop("401", None)
    return schema


def install(app, settings):
    """app.openapi() returns `document`, built once."""

    def openapi():
        if app.openapi_schema is None:
            app.openapi_schema = document(app, settings)
        return app.openapi_schema

    app.openapi = openapi

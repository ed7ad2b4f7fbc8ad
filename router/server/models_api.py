"""`GET /v1/models` and `GET /v1/models/{id}`: what `model` may name (`auto`, the tasks, the
deployments), in the shape of whichever SDK asks. Both SDKs use the same path; the Anthropic
one always sends `anthropic-version`, so that header selects its shape (`type: model`,
`display_name`, `has_more`/`first_id`/`last_id` paging) over OpenAI's (`object: list`).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from router.server.compat import CatalogEntry, catalog, router_of


def openai_model(entry: CatalogEntry) -> dict[str, Any]:
    return {"id": entry.id, "object": "model", "created": 0, "owned_by": entry.owned_by,
            "kind": entry.kind, "description": entry.description}


def anthropic_model(entry: CatalogEntry) -> dict[str, Any]:
    name = entry.description or entry.id
    return {"type": "model", "id": entry.id, "display_name": f"{entry.id} ({entry.kind}: {name})",
            "created_at": "1970-01-01T00:00:00Z", "lifecycle": "active", "kind": entry.kind}


def _anthropic(request: Request) -> bool:
    return "anthropic-version" in request.headers


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


async def list_models(request: Request) -> Response:
    entries = catalog(router_of(request))
    if not _anthropic(request):
        return _json({"object": "list", "data": [openai_model(e) for e in entries]})
    data = [anthropic_model(e) for e in entries]
    return _json({"data": data, "has_more": False,
                  "first_id": data[0]["id"] if data else None,
                  "last_id": data[-1]["id"] if data else None})


async def retrieve_model(request: Request) -> Response:
    model_id = request.path_params["model"]
    anthropic = _anthropic(request)
    for entry in catalog(router_of(request)):
        if entry.id == model_id:
            return _json(anthropic_model(entry) if anthropic else openai_model(entry))
    message = f"The model `{model_id}` does not exist or you do not have access to it."
    if anthropic:
        return _json({"type": "error", "error": {"type": "not_found_error",
                                                 "message": message}}, 404)
    return _json({"error": {"message": message, "type": "invalid_request_error",
                            "param": "model", "code": "model_not_found"}}, 404)


routes = [
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", retrieve_model, methods=["GET"]),
]

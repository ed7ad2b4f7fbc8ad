"""What a `POST /v1/responses` request takes from what earlier answers left in the
`ItemStore` (`router.server.response_items`): the conversation of its
`previous_response_id` and the items its `item_reference`s name; and how its own answer is
left there for the next request."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from router.server.compat import RequestProblem
from router.server.response_items import OMITTED, ItemStore
from router.server.responses_stream import ResponseWriter

CONVERSATION = "response:"  # a remembered response's conversation: `response:<resp id>`
Remember = Callable[[str, list[dict[str, Any]]], Awaitable[None]]


def kept(value: Any, what: str, param: str) -> Any:
    """A remembered entry; a 400 naming `param` when only its over-the-bound marker was kept."""
    size = value.get(OMITTED) if isinstance(value, dict) and len(value) == 1 else None
    if size is None:
        return value
    raise RequestProblem(
        f"{what} was not kept: its {size} bytes are over this server's bound of remembered "
        "bytes per key (server.responses.max_bytes_per_key); send its items as input instead.",
        param, "too_large_to_keep")


async def resolved_input(body: Mapping[str, Any], store: ItemStore,
                         owner: str) -> list[Any]:
    """`input` as items: the conversation of `previous_response_id` first when given, then
    each `item_reference` replaced by the item it names. Raises RequestProblem (400) naming
    the field of an id this key has no item for."""
    raw = body.get("input")
    items = [{"role": "user", "content": raw}] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items:
        raise RequestProblem("Missing required parameter: 'input'.", "input",
                             "missing_required_parameter")
    previous = body.get("previous_response_id")
    if previous is not None and not isinstance(previous, str):
        raise RequestProblem("Invalid 'previous_response_id': expected a string.",
                             "previous_response_id", "invalid_value")
    refs = {i: item.get("id") for i, item in enumerate(items)
            if isinstance(item, dict) and item.get("type") == "item_reference"}
    wanted = [r for r in refs.values() if isinstance(r, str)]
    if previous is not None:
        wanted.append(CONVERSATION + previous)
    found = await store.get(owner, wanted) if wanted else {}
    out: list[Any] = []
    if previous is not None:
        conversation = found.get(CONVERSATION + previous)
        if conversation is None:
            raise RequestProblem(f"Previous response with id '{previous}' not found.",
                                 "previous_response_id", "previous_response_not_found")
        out += kept(conversation, f"The conversation of response '{previous}'",
                    "previous_response_id")
    for i, item in enumerate(items):
        if i not in refs:
            out.append(item)
            continue
        ref = refs[i]
        if not isinstance(ref, str) or ref not in found or ref.startswith(CONVERSATION):
            raise RequestProblem(f"Item with id '{ref}' not found.", f"input[{i}].id",
                                 "item_not_found")
        out.append(kept(found[ref], f"Item '{ref}'", f"input[{i}].id"))
    return out




def rememberer(store: ItemStore, owner: str, items: list[Any]) -> Remember:
    async def remember(response_id: str, output: list[dict[str, Any]]) -> None:
        entries: dict[str, Any] = {item["id"]: item for item in output}
        entries[CONVERSATION + response_id] = items + output
        await store.put(owner, entries)

    return remember


async def remembered(frames: AsyncIterator[bytes], writer: ResponseWriter,
                      remember: Remember) -> AsyncIterator[bytes]:
    """A streamed answer's frames; its output is remembered before `response.completed`
    goes out, so a client's next request can already name it."""
    try:
        async for chunk in frames:
            if writer.finished is not None:
                finished, writer.finished = writer.finished, None
                await remember(finished["id"], finished["output"])
            yield chunk
    finally:
        await frames.aclose()  # type: ignore[attr-defined]

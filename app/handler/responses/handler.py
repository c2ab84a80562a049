"""``/v1/responses``: OpenAI's Responses API over the neutral generation core.

A request's items (plus, with ``previous_response_id``, the stored conversation before
it) become neutral messages; the core generates; a :class:`ResponseWriter` turns the
neutral events into the response object or its typed stream events; stored responses go
to the :class:`ResponseStore`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from app.core import errors
from app.core.context import RequestContext
from app.generation.core import GenerationCore, Run
from app.generation.events import KEEP_ALIVE
from app.generation.request import Message
from app.handler.logprobs import TokenTexts
from app.handler.responses.items import conversation, input_items
from app.handler.responses.request import (
    Tools,
    generation_spec,
    max_calls,
    refuse_unsupported,
    response_base,
)
from app.handler.responses.store import ResponseStore
from app.handler.responses.writer import ResponseWriter, new_id
from app.schemas.responses import ResponsesRequest

_ITEM_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco",
                "reasoning": "rs"}


def not_found(response_id: str, param: str | None = None) -> errors.APIError:
    return errors.APIError(404, f"Response with id {response_id!r} not found.",
                           param=param, code="response_not_found")


class Prepared:
    """A queued response: its run, its writer, and the input items to store with it."""

    def __init__(self, run: Run, writer: ResponseWriter, items: list[dict[str, Any]],
                 store: bool) -> None:
        self.run, self.writer, self.items, self.store = run, writer, items, store


class ResponsesHandler:
    def __init__(self, core: GenerationCore, store: ResponseStore | None) -> None:
        self.core = core
        self.store = store

    # -- create --------------------------------------------------------------------------
    async def prepare(self, body: ResponsesRequest, ctx: RequestContext) -> Prepared:
        """Validate, rebuild the conversation, queue; raises APIError before any byte."""
        ctx.apply_body_metadata(body.metadata)
        ctx.model = body.model
        refuse_unsupported(body)
        items = _with_ids(await self._resolve_references(input_items(body.input)))
        history = await self._history(body.previous_response_id)
        messages = conversation(body.instructions, history + items)
        if not any(m.role != "system" for m in messages):
            raise errors.invalid_request("input must hold at least one item.", param="input")
        run = await self._start(body, messages, ctx)
        store = body.store is not False and self.store is not None
        texts = TokenTexts(run.tokenizer) if run.spec.logprobs is not None else None
        writer = ResponseWriter(response_base(body, new_id("resp"), ctx.model or body.model,
                                              store),
                                logprobs=texts, max_calls=max_calls(body),
                                namespace_of=Tools(body.tools).namespace_of)
        return Prepared(run, writer, items, store)

    async def complete(self, prepared: Prepared, ctx: RequestContext) -> dict[str, Any]:
        writer = prepared.writer
        try:
            async for event in prepared.run.events():
                if event is not KEEP_ALIVE:
                    writer.feed(event)
        finally:
            prepared.run.close()
        writer.finish()
        response = writer.response(writer.status())
        await self._keep(prepared, response)
        return {**response, "htdi": ctx.htdi()}

    async def stream(self, prepared: Prepared, ctx: RequestContext) -> AsyncIterator[Any]:
        """Typed events (dicts whose ``type`` names the SSE event) and keep-alives."""
        writer = prepared.writer
        try:
            for event in writer.start():
                yield event
            try:
                async for event in prepared.run.events():
                    if event is KEEP_ALIVE:
                        yield KEEP_ALIVE
                        continue
                    for out in writer.feed(event):
                        yield out
            except errors.APIError as exc:
                for out in writer.fail(exc, {"htdi": ctx.htdi()}):
                    yield out
                return
            final = writer.finish({"htdi": ctx.htdi()})
            await self._keep(prepared, writer.response(writer.status()))
            for out in final:
                yield out
        finally:
            prepared.run.close()

    async def _start(self, body: ResponsesRequest, messages: list[Message],
                     ctx: RequestContext) -> Run:
        """Queue the conversation; with ``truncation: auto`` drop the oldest turns until
        the prompt fits the model's context."""
        while True:
            try:
                return await self.core.start(generation_spec(body, messages), ctx)
            except errors.APIError as exc:
                if body.truncation != "auto" or exc.code != "context_length_exceeded":
                    raise
                shorter = _drop_oldest_turn(messages)
                if shorter is None:
                    raise
                messages = shorter

    async def _keep(self, prepared: Prepared, response: dict[str, Any]) -> None:
        if prepared.store and self.store is not None:
            await self.store.put(response, prepared.items)

    async def _history(self, previous: str | None) -> list[dict[str, Any]]:
        if previous is None:
            return []
        history = await self.store.history(previous) if self.store is not None else None
        if history is None:
            raise errors.APIError(
                404, f"Previous response with id {previous!r} not found.",
                param="previous_response_id", code="previous_response_not_found")
        return history

    async def _resolve_references(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        resolved = []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise errors.invalid_request(f"input[{index}] must be an object.",
                                             param=f"input[{index}]")
            if item.get("type") == "item_reference":
                found = await self.store.item(str(item.get("id"))) if self.store else None
                if found is None:
                    raise errors.APIError(404, f"Item with id {item.get('id')!r} not found.",
                                          param=f"input[{index}]", code="item_not_found")
                item = found
            resolved.append(item)
        return resolved

    # -- stored responses ----------------------------------------------------------------
    async def count(self, body: ResponsesRequest, ctx: RequestContext) -> dict[str, Any]:
        """``POST /v1/responses/input_tokens``: the prompt's token count, nothing generated."""
        ctx.apply_body_metadata(body.metadata)
        refuse_unsupported(body)
        items = await self._resolve_references(input_items(body.input))
        history = await self._history(body.previous_response_id)
        messages = conversation(body.instructions, history + items)
        tokens = await self.core.count_tokens(generation_spec(body, messages), ctx)
        return {"object": "response.input_tokens", "input_tokens": tokens, "htdi": ctx.htdi()}

    async def get(self, response_id: str, ctx: RequestContext) -> dict[str, Any]:
        response = await self.store.get(response_id) if self.store else None
        if response is None:
            raise not_found(response_id)
        ctx.model = response.get("model")
        return {**response, "htdi": ctx.htdi()}

    async def delete(self, response_id: str, ctx: RequestContext) -> dict[str, Any]:
        if self.store is None or not await self.store.delete(response_id):
            raise not_found(response_id)
        return {"id": response_id, "object": "response.deleted", "deleted": True,
                "htdi": ctx.htdi()}

    async def input_items(self, response_id: str, ctx: RequestContext, *, limit: int,
                          order: str, after: str | None) -> dict[str, Any]:
        items = await self.store.input_items(response_id) if self.store else None
        if items is None:
            raise not_found(response_id)
        if order == "desc":
            items = list(reversed(items))
        if after is not None:
            ids = [item.get("id") for item in items]
            if after not in ids:
                raise errors.invalid_request(f"No item with id {after!r} in this list.",
                                             param="after")
            items = items[ids.index(after) + 1:]
        page = items[:limit]
        return {"object": "list", "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(items) > limit, "htdi": ctx.htdi()}


def _with_ids(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Input items as stored and listed: each with an id (and a type) of its own."""
    out = []
    for item in items:
        kind = item.get("type") or ("message" if "role" in item else None)
        item = {**item, "type": kind} if kind else dict(item)
        if not isinstance(item.get("id"), str):
            item["id"] = new_id(_ITEM_PREFIX.get(kind or "", "item"))
        out.append(item)
    return out


def _drop_oldest_turn(messages: list[Message]) -> list[Message] | None:
    """The conversation without its oldest non-system turn (and tool results that answered
    calls made in it); None when nothing more can go."""
    first = next((i for i, m in enumerate(messages) if m.role != "system"), None)
    rest = [m for m in messages if m.role != "system"]
    if first is None or len(rest) <= 1:
        return None
    shorter = messages[:first] + messages[first + 1:]
    while first < len(shorter) - 1 and shorter[first].role == "tool":
        shorter.pop(first)
    return shorter

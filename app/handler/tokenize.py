"""Tokenize / detokenize with a model's own tokenizer (RAG chunkers count tokens this way)."""

from __future__ import annotations

import asyncio
from typing import Any

from app.config import Settings
from app.core import errors
from app.core.context import RequestContext
from app.generation.limits import check_token_ids
from app.generation.prompt import apply_template
from app.generation.text_size import check_texts, tokenize_bounded
from app.handler.logprobs import TokenTexts
from app.lifecycle.manager import ModelManager
from app.schemas.tokenize import DetokenizeRequest, TokenizeRequest


class TokenizeHandler:
    def __init__(self, manager: ModelManager, settings: Settings | None = None) -> None:
        self.manager = manager
        self.settings = settings or Settings()

    def _lease(self, name: str) -> Any:
        """Lease the model under any of its capabilities (every model has a tokenizer)."""
        spec = self.manager.registry.get(name)
        if spec is None:
            raise errors.model_not_found(name)
        return self.manager.lease(name, spec.capabilities[0])

    async def _with_model(self, body: Any, ctx: RequestContext, serve: Any) -> dict[str, Any]:
        """Lease ``body.model`` and answer with ``serve(body, ctx, managed, tokenizer)``."""
        ctx.model = body.model
        async with self._lease(body.model) as managed:
            ctx.model = managed.spec.id
            return await serve(body, ctx, managed, managed.loaded.tokenizer)

    async def tokenize(self, body: TokenizeRequest, ctx: RequestContext) -> dict[str, Any]:
        return await self._with_model(body, ctx, self._tokenize)

    async def _tokenize(
        self, body: TokenizeRequest, ctx: RequestContext, managed: Any, tokenizer: Any
    ) -> dict[str, Any]:
        texts = [body.prompt] if body.prompt is not None else [
            "".join(m.text() for m in body.messages or [])
        ]
        check_texts(texts, managed.spec.context_length, self.settings.max_chars_per_token,
                    "prompt" if body.prompt is not None else "messages")
        workers, chars = self.settings.tokenize_workers, len(texts[0])
        if managed.spec.type != "lm":
            if body.messages is not None:
                raise errors.invalid_request(
                    "messages need a chat model; give 'prompt' instead.", param="messages"
                )
            ids = (await tokenize_bounded(workers, chars, managed.loaded.tokenize, texts))[0]
            strs = None
        else:
            ids = await tokenize_bounded(workers, chars, self._lm_tokens, tokenizer, body)
            strs = None
        out: dict[str, Any] = {
            "count": len(ids),
            "max_model_len": managed.spec.context_length,
            "tokens": ids,
            "token_strs": strs,
        }
        if body.return_token_strs and managed.spec.type == "lm":
            out.update(self._token_strs(tokenizer, ids))
        return {**out, "htdi": ctx.htdi()}

    @staticmethod
    def _token_strs(tokenizer: Any, ids: list[int]) -> dict[str, Any]:
        """The vocabulary's own token strings (as vLLM: ``Ġworld``, ``<0xE2>``), which are
        lossless where decoded text is not (a byte fragment decodes to U+FFFD), and each
        token's raw bytes."""
        texts = TokenTexts(tokenizer)
        return {
            "token_strs": [str(tokenizer.convert_ids_to_tokens(t)) for t in ids],
            "token_bytes": [list(texts.raw_bytes(t)) for t in ids],
        }

    @staticmethod
    def _lm_tokens(tokenizer: Any, body: TokenizeRequest) -> list[int]:
        if body.prompt is not None:
            return tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages or []]
        return apply_template(
            tokenizer, messages, add_generation_prompt=body.add_generation_prompt
        )

    async def detokenize(self, body: DetokenizeRequest, ctx: RequestContext) -> dict[str, Any]:
        return await self._with_model(body, ctx, self._detokenize)

    async def _detokenize(
        self, body: DetokenizeRequest, ctx: RequestContext, managed: Any, tokenizer: Any
    ) -> dict[str, Any]:
        vocab = (
            managed.loaded.tokenizer_vocab_size
            if managed.spec.type == "lm"
            else managed.loaded.vocab_size
        )
        check_token_ids(body.tokens, vocab, "tokens", "tokens")
        if managed.spec.type != "lm":
            text = managed.loaded.tokenizer.decode(body.tokens)
        else:
            text = await asyncio.to_thread(tokenizer.decode, body.tokens)
        return {"prompt": text, "htdi": ctx.htdi()}

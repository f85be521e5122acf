"""Token authorization for both protocols, in one place: a wrap of each method's handler (built
once, at registration: transport/calls.py), so it sees the caller's metadata and the request
messages before the servicer.

Per call: the `authorization: Bearer <token>` metadata must name a token of the tokens file
(else UNAUTHENTICATED); its grant needs the method's scope, and the model the request names must
match one of its globs (else PERMISSION_DENIED). The model decision reads the name only, never
the repository: an unknown model and one the caller may not touch get the same answer, so a
caller learns nothing of models outside its grant. Listings are filtered to the grant's models.
A request stream is checked message by message before the servicer sees each one (the first
before any core work starts). Health (and reflection, when served) need no token: probes and
load balancers call them.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from typing import Any

import grpc

from ..core.errors import shown
from ..metrics import ServerMetrics
from .auth_tokens import Grant, TokensFile
from .calls import handler_kind

log = logging.getLogger(__name__)

PROTECTED = ("/seqserve.v1.SeqServe/", "/inference.GRPCInferenceService/")
# v2's liveness and readiness are probes too (KServe's): open, like gRPC health.
OPEN_METHODS = (
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
)
INFER, READ, ADMIN = "infer", "read", "admin"
# Method name -> scope. A method not listed (one added later, shared memory, tracing) needs
# `admin`: closed unless granted.
SCOPE_OF = {
    "Predict": INFER, "PredictStream": INFER, "Session": INFER,
    "ModelInfer": INFER, "ModelStreamInfer": INFER,
    "ListModels": READ, "GetModelMetadata": READ,
    "ServerMetadata": READ, "ModelReady": READ, "ModelMetadata": READ, "ModelConfig": READ,
    "ModelStatistics": READ, "RepositoryIndex": READ,
    "LoadModel": ADMIN, "UnloadModel": ADMIN,
    "RepositoryModelLoad": ADMIN, "RepositoryModelUnload": ADMIN,
}  # fmt: skip
# Responses that list models: the repeated field whose items' `name` is filtered.
LISTED = {"ListModels": "models", "RepositoryIndex": "models", "ModelStatistics": "model_stats"}


class RefusalLog:
    """Refusals logged at most once per `window_s` (the first, then a count of the rest): a
    caller sending thousands of bad tokens must not flood the log (each is still counted in
    `seqserve_auth_checks_total`, and logged at DEBUG)."""

    def __init__(self, level: int, window_s: float = 10.0) -> None:
        self.level = level
        self.window_s = window_s
        self._since = -window_s
        self._quiet = 0  # refusals not logged since the last line

    def __call__(self, what: str) -> None:
        now = time.monotonic()
        if now - self._since < self.window_s:
            self._quiet += 1
            log.debug("%s", what)
            return
        more = f" ({self._quiet} more refused in the last {now - self._since:.0f} s)"
        log.log(self.level, "%s%s", what, more if self._quiet else "")
        self._since, self._quiet = now, 0


def model_named(message: Any) -> str | None:
    """The model a request message names: `model_name` (seqserve.v1, v2 inference), `name`
    (v2 metadata, config, readiness, statistics), or a session's `open.model_name`."""
    if hasattr(message, "HasField") and "open" in type(message).DESCRIPTOR.fields_by_name:
        return message.open.model_name if message.HasField("open") else None
    for field in ("model_name", "name"):
        value = getattr(message, field, None)
        if isinstance(value, str):
            return value
    return None  # none named (a listing), or a message that did not parse (refused later)


# The caller's token name for the servicer (a resume token is bound to it); "" without auth.
CALLER: ContextVar[str] = ContextVar("seqserve_caller", default="")
# The models the caller may see named in an error (transport/status.py filters "available"
# lists with it): the grant's globs with auth, every model without.
VISIBLE: ContextVar[Callable[[str], bool]] = ContextVar(
    "seqserve_visible", default=lambda model: True
)


def bearer_token(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class Authorize:
    def __init__(self, tokens: TokensFile, metrics: ServerMetrics) -> None:
        self.tokens = tokens
        self.metrics = metrics

    def wrap(self, method: str, handler: Any) -> Any:
        if method in OPEN_METHODS or not _protected(method):
            return handler
        return _wrap(handler, _Check(self.tokens, self.metrics, method))


def _protected(method: str) -> bool:
    """seqserve.v1 and v2 need a token; health and reflection do not."""
    return method.startswith(PROTECTED) or not method.startswith(
        ("/grpc.health.v1.Health/", "/grpc.reflection.")
    )


class _Check:
    """The decisions for one method."""

    def __init__(self, tokens: TokensFile, metrics: ServerMetrics, method: str) -> None:
        self.tokens = tokens
        self.metrics = metrics
        self.unauthenticated = RefusalLog(logging.WARNING)
        self.denied = RefusalLog(logging.INFO)
        self.method = method
        self.rpc = method.rsplit("/", 1)[-1]
        self.scope = SCOPE_OF.get(self.rpc, ADMIN) if method.startswith(PROTECTED) else ADMIN

    async def caller(self, context: grpc.aio.ServicerContext) -> Grant:
        token = bearer_token(context)
        grant = self.tokens.lookup(token) if token is not None else None
        if grant is None:
            why = "no bearer token" if token is None else "an unknown token"
            self.unauthenticated(f"{self.method} refused: {why}")
            self.metrics.auth_checked("", "unauthenticated")
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{self.rpc} needs a valid token (metadata `authorization: Bearer <token>`)",
            )
        assert grant is not None
        if self.scope not in grant.scopes:
            await self._deny(context, grant, f"token {grant.name!r} lacks the {self.scope!r} scope")
        CALLER.set(grant.name)
        VISIBLE.set(grant.covers)
        return grant

    async def message(self, context: grpc.aio.ServicerContext, grant: Grant, message: Any) -> None:
        model = model_named(message)
        if model is None or (not model and self.rpc in LISTED):
            return  # names no model, or an empty name that asks for a (filtered) listing
        if not grant.covers(model):
            # The same words whether or not the model exists.
            await self._deny(
                context, grant, f"token {grant.name!r} may not {self.scope} model {shown(model)}"
            )

    async def _deny(self, context: grpc.aio.ServicerContext, grant: Grant, why: str) -> None:
        self.denied(f"{self.method} refused for token {grant.name!r}: {why}")
        self.metrics.auth_checked(grant.name, "denied")
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{self.rpc}: {why}")

    def allowed(self, grant: Grant) -> None:
        """The call passed (a stream: its first message); later refusals count as well."""
        log.debug("%s for token %r", self.method, grant.name)
        self.metrics.auth_checked(grant.name, "allowed")

    def filtered(self, grant: Grant, response: Any) -> Any:
        """A listing keeps only the models the grant covers."""
        field = LISTED.get(self.rpc)
        if field is None or not hasattr(response, field):
            return response
        items = getattr(response, field)
        kept = [item for item in items if grant.covers(item.name)]
        del items[:]
        items.extend(kept)
        return response


def _wrap(handler: Any, check: _Check) -> grpc.RpcMethodHandler:
    kind = handler_kind(handler)
    inner = getattr(handler, kind)
    if handler.request_streaming:
        wrapped = _streamed_requests(inner, check, handler.response_streaming)
    elif handler.response_streaming:
        wrapped = _unary_stream(inner, check)
    else:
        wrapped = _unary_unary(inner, check)
    return handler._replace(**{kind: wrapped})  # type: ignore[no-any-return]


def _unary_unary(inner: Callable[..., Any], check: _Check) -> Callable[..., Any]:
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        grant = await check.caller(context)
        await check.message(context, grant, request)
        check.allowed(grant)
        return check.filtered(grant, await inner(request, context))

    return unary


def _unary_stream(inner: Callable[..., Any], check: _Check) -> Callable[..., Any]:
    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        grant = await check.caller(context)
        await check.message(context, grant, request)
        check.allowed(grant)
        async for response in _responses(inner(request, context)):
            yield response

    return streaming


async def _responses(responses: Any) -> AsyncIterator[Any]:
    """A handler's responses: yielded, or written through `context.write` (then none here)."""
    if inspect.isasyncgen(responses):
        async for response in responses:
            yield response
    else:
        await responses


def _streamed_requests(
    inner: Callable[..., Any], check: _Check, streams_responses: bool
) -> Callable[..., Any]:
    """The first message is read and checked before the servicer starts; each later one
    before the servicer sees it (a v2 stream names the model in every message)."""

    async def checked(
        requests: Any, context: grpc.aio.ServicerContext, grant: Grant
    ) -> AsyncIterator[Any]:
        incoming = aiter(requests)
        try:
            first = await anext(incoming)
        except StopAsyncIteration:
            return _none()
        await check.message(context, grant, first)
        check.allowed(grant)

        async def messages() -> AsyncIterator[Any]:
            yield first
            async for message in incoming:
                await check.message(context, grant, message)
                yield message

        return messages()

    if streams_responses:

        async def streaming(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            grant = await check.caller(context)
            messages = await checked(requests, context, grant)
            async for response in _responses(inner(messages, context)):
                yield response

        return streaming

    async def unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        grant = await check.caller(context)
        return await inner(await checked(requests, context, grant), context)

    return unary


async def _none() -> AsyncIterator[Any]:
    return
    yield

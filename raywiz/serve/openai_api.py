"""OpenAI-compatible HTTP API: /v1/completions, /v1/chat/completions (SSE streaming), /v1/models.

/v1/completions with `suffix` fills in the middle: the prompt is the code before the cursor, the
suffix the code after it, and the model sees its own FIM prompt (raywiz.data.fim).

Request and response shapes follow OpenAI's; the `model` field names a checkpoint ("latest" or no
model: the one currently served). Every bad request gets a 4xx with OpenAI's error body
``{"error": {"message", "type", "param", "code"}}``; a 500 means a bug or a failing device, never
bad input. Bodies are read and validated by hand (not by FastAPI's signature parsing) so that the
size limit, invalid JSON and schema errors all come back the same way, as 400/413.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from contextlib import ExitStack
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from raywiz.serve.errors import ApiError, error_body
from raywiz.data import fim
from raywiz.serve.config import ServeLimits
from raywiz.inference import Delta, SamplingParams
from raywiz.serve.pool import CheckpointRefused, LoadedModel, UnknownModel
from raywiz.serve.prompts import PromptError, chat_prompt, uses_special_tokens
from raywiz.serve.service import CURRENT_ALIASES, ModelService


# ---------------------------------------------------------------- errors


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(error_body(exc.message, exc.type, exc.param, exc.code), exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), kind), exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        message, param = _describe_errors(exc.errors())
        return JSONResponse(error_body(message, param=param), 400)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error"), 500)


def _describe_errors(errors: list[dict]) -> tuple[str, str | None]:
    parts, first = [], None
    for e in errors:
        loc = [str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path")]
        path = ".".join(loc) or "body"
        first = first or path
        parts.append(f"{path}: {e.get('msg')}")
    return "; ".join(parts), first


# ---------------------------------------------------------------- auth and bodies


def bearer_auth(api_key: str | None):
    """A FastAPI dependency that requires `Authorization: Bearer <api_key>` when a key is set."""

    async def check(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "missing or invalid bearer token (send `Authorization: Bearer <key>`)",
                           type="authentication_error", code="invalid_api_key")

    return check


async def read_body(request: Request, schema: type[BaseModel], max_bytes: int) -> Any:
    """Read, size-check, parse and validate a JSON body; ApiError (400/413) otherwise."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"request body is {declared} bytes; the limit is {max_bytes}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise ApiError(413, f"request body is larger than the limit of {max_bytes} bytes")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(data).__name__}")
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        message, param = _describe_errors(e.errors())
        raise ApiError(400, message, param=param) from None


# ---------------------------------------------------------------- request schemas


class _GenerationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stream: bool = False
    stop: str | list[str] | None = None
    stream_options: dict | None = None
    seed: int | None = None  # sampled requests with one seed give one text, alone or batched with others
    # Accepted for compatibility with OpenAI clients; they do not change the output.
    user: str | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _stop_not_empty(cls, v):
        items = [v] if isinstance(v, str) else (v or [])
        if any(s == "" for s in items):
            raise ValueError("stop sequences must not be empty strings")
        return v

    @property
    def stop_list(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class CompletionRequest(_GenerationRequest):
    # A string, a list of strings, a list of token ids, or a list of token-id lists (lm-evaluation-harness
    # sends batches of either kind).
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=0)  # 0 only with echo: score the prompt, generate nothing
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    best_of: int | None = None

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("prompt: the list is empty")
        return v

    @property
    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # name, tool_call_id ... do not matter here

    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(400, "only text content parts are supported", param="messages")
            parts.append(part["text"])
        return "".join(parts)


class ChatRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False


# ---------------------------------------------------------------- the routes


def build_openai_router(service: ModelService, limits: ServeLimits) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": await asyncio.to_thread(service.model_cards)}

    @router.get("/v1/models/{model_id}")
    async def get_model(model_id: str):
        for card in await asyncio.to_thread(service.model_cards):
            if card["id"] == model_id:
                return card
        raise ApiError(404, f"model {model_id!r} is not loaded", param="model", type="not_found_error",
                       code="model_not_found")

    @router.post("/v1/completions")
    async def completions(request: Request):
        req = await read_body(request, CompletionRequest, limits.max_request_bytes)
        if req.best_of not in (None, 1, req.n):
            raise ApiError(400, "best_of is not supported by this server", param="best_of")
        if req.max_tokens == 0 and not req.echo:
            raise ApiError(400, "max_tokens 0 needs echo (scoring the prompt alone)", param="max_tokens")
        if req.stream and (len(req.prompts) > 1 or req.logprobs is not None or req.echo):
            raise ApiError(400, "streaming takes one prompt, without logprobs or echo", param="stream")
        if len(req.prompts) > limits.max_prompts:
            raise ApiError(400, f"prompt has {len(req.prompts)} prompts; this server allows at most "
                           f"{limits.max_prompts} a request", param="prompt")
        return await _generate(service, limits, req, chat=False)

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = await read_body(request, ChatRequest, limits.max_request_bytes)
        if req.logprobs:
            raise ApiError(400, "logprobs is not supported by this server", param="logprobs")
        return await _generate(service, limits, req, chat=True)

    return router


async def _generate(service: ModelService, limits: ServeLimits, req, chat: bool):
    pins = ExitStack()  # holds the model for the request's whole life, streaming included
    loaded = await _acquire(service, req.model, pins)
    try:
        prompts, params, generate = _prepare(loaded, limits, req, chat)
    except BaseException:
        pins.close()
        raise
    request_id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    if req.stream:
        include_usage = bool((req.stream_options or {}).get("include_usage"))
        return StreamingResponse(
            _sse(loaded, prompts[0][1], params, request_id, chat, include_usage, pins),
            media_type="text/event-stream", headers={"Cache-Control": "no-cache"},
            background=BackgroundTask(pins.close),  # in case the stream never started
        )
    try:
        return await _collect(loaded, prompts, params, request_id, chat, req, generate)
    finally:
        pins.close()


async def _acquire(service: ModelService, name: str | None, pins: ExitStack) -> LoadedModel:
    try:
        try:  # a loaded model: pinned right here
            return pins.enter_context(service.acquire(name, load=False))
        except UnknownModel:
            if name in CURRENT_ALIASES or name is None:
                raise
        # Not loaded: loading it reads a checkpoint from disk, off the event loop.
        return await asyncio.to_thread(pins.enter_context, service.acquire(name))
    except UnknownModel:
        if name is None or name in CURRENT_ALIASES:
            raise ApiError(503, "no model is loaded yet (waiting for a complete checkpoint)",
                           type="server_error", code="model_not_ready") from None
        known = [c["id"] for c in service.checkpoints()]
        raise ApiError(404, f"model {name!r} does not exist; known: {known}", param="model",
                       type="not_found_error", code="model_not_found") from None
    except CheckpointRefused as e:
        raise ApiError(409, str(e), param="model", code="checkpoint_not_loadable") from None


def _prepare(loaded: LoadedModel, limits: ServeLimits, req, chat: bool):
    """Build the prompts and check every limit before any work starts: ([(text, ids)], params, generate).
    generate is False for max_tokens 0 with echo (score the prompt, generate nothing)."""
    asked = getattr(req, "max_completion_tokens", None) or req.max_tokens
    generate = asked != 0
    max_tokens = asked or limits.default_max_tokens
    if max_tokens > limits.max_tokens:
        raise ApiError(400, f"max_tokens is {max_tokens}; this server allows at most {limits.max_tokens}",
                       param="max_tokens")
    if req.n > limits.max_n:
        raise ApiError(400, f"n is {req.n}; this server allows at most {limits.max_n}", param="n")
    if len(req.stop_list) > limits.max_stop:
        raise ApiError(400, f"stop has {len(req.stop_list)} sequences; at most {limits.max_stop}", param="stop")
    param = "messages" if chat else "prompt"
    if chat:
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in req.messages]
        try:
            texts: list = [chat_prompt(messages, loaded.template, loaded.tokenizer, loaded.info.get("prompt"))]
        except PromptError as e:
            raise ApiError(400, str(e), param="messages") from None
    else:
        texts = req.prompts
    special = uses_special_tokens(loaded.template, chat)
    fim_tokens = None if chat or req.suffix is None else _fim_tokens(loaded, req)
    vocab = len(loaded.tokenizer)
    prompts = []
    for k, text in enumerate(texts):
        if fim_tokens is not None:  # fill in the middle: the model's own prompt around prefix and suffix
            lead = loaded.tokenizer("", add_special_tokens=special)["input_ids"]  # a BOS where the model takes one
            ids = fim.prompt_ids(loaded.tokenizer, fim_tokens, text, req.suffix, lead)
            text = fim_tokens.prompt(text, req.suffix)
        elif isinstance(text, str):
            ids = loaded.tokenizer(text, add_special_tokens=special)["input_ids"]
        else:  # token ids, as lm-evaluation-harness sends them
            if any(not 0 <= t < vocab for t in text):
                raise ApiError(400, f"prompt {k}: token ids must be in [0, {vocab})", param=param)
            ids, text = list(text), loaded.tokenizer.decode(text)
        where = f"prompt {k}" if len(texts) > 1 else "the prompt"
        if not ids:
            raise ApiError(400, f"{where} is empty", param=param)
        if len(ids) > limits.max_prompt_tokens:
            raise ApiError(400, f"{where} has {len(ids)} tokens; this server allows at most "
                           f"{limits.max_prompt_tokens}", param=param)
        context = loaded.context_length
        if context is not None and len(ids) + (max_tokens if generate else 0) > context:
            raise ApiError(400, f"this model's context is {context} tokens; {where} has {len(ids)} and "
                           f"max_tokens is {max_tokens}: lower max_tokens or shorten the prompt",
                           param="max_tokens", code="context_length_exceeded")
        prompts.append((text, ids))
    params = SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, n=req.n,
                            stop=req.stop_list, seed=req.seed)
    return prompts, params, generate


def _fim_tokens(loaded: LoadedModel, req) -> "fim.FimTokens":
    """The FIM tokens the model was trained with (hf/raywiz.json), else a known set in its tokenizer."""
    if any(not isinstance(p, str) for p in req.prompts):
        raise ApiError(400, "suffix needs a text prompt (the code before the cursor), not token ids", param="suffix")
    recorded = loaded.info.get("fim")
    tokens = fim.model_tokens(recorded, loaded.tokenizer)
    if tokens is None:
        raise ApiError(400, f"suffix: model {loaded.name!r} has no fill-in-the-middle tokens (its tokenizer has "
                       "none of <fim_prefix>/<fim_suffix>/<fim_middle> or another known set); send the prompt "
                       "without suffix", param="suffix")
    return tokens


def _choice(chat: bool, index: int, text: str, finish_reason: str | None, stream: bool, first: bool = False) -> dict:
    if not chat:
        return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}
    if stream:
        delta: dict = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None,
            "finish_reason": finish_reason}


def _envelope(request_id: str, chat: bool, model: str, choices: list[dict], stream: bool) -> dict:
    kind = ("chat.completion.chunk" if stream else "chat.completion") if chat else "text_completion"
    return {"id": request_id, "object": kind, "created": int(time.time()), "model": model, "choices": choices}


async def _one_prompt(loaded: LoadedModel, prompt_ids: list[int], params: SamplingParams) -> list[Delta]:
    """The n finished choices of one prompt (text, finish_reason, token ids)."""
    done = [Delta(i, "") for i in range(params.n)]
    try:
        async for deltas in loaded.engine.stream(prompt_ids, params):
            for d in deltas:
                done[d.index].text += d.text
                if d.finish_reason:
                    done[d.index].finish_reason = d.finish_reason
                    done[d.index].completion_tokens = d.completion_tokens
                    done[d.index].token_ids = d.token_ids or []
                    done[d.index].eos_token_id = d.eos_token_id
    except RuntimeError as e:  # the engine failed this request (raised from its stream)
        raise ApiError(500, str(e), type="server_error") from None
    return done


def _logprobs(tokenizer, prompt_ids: list[int], gen_ids: list[int], scored, echo: bool, top: int) -> dict:
    """OpenAI's completions `logprobs` object for the returned text (the prompt's tokens too with echo;
    the first token of a prompt has no context, so its logprob is null)."""
    ids = prompt_ids + gen_ids
    out: dict = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    offset = 0
    for k in range(0 if echo else len(prompt_ids), len(ids)):
        piece = tokenizer.decode([ids[k]])
        logprob, alternatives = scored[k]
        out["tokens"].append(piece)
        out["token_logprobs"].append(logprob)
        tops: dict | None = None
        if logprob is not None and top:
            tops = {}
            for a, v in alternatives.items():  # most likely first: two ids that decode alike keep the higher
                tops.setdefault(tokenizer.decode([a]), v)
        out["top_logprobs"].append(tops)
        out["text_offset"].append(offset)
        offset += len(piece)
    return out


async def _collect(loaded: LoadedModel, prompts, params: SamplingParams, request_id: str, chat: bool, req,
                   generate: bool = True):
    if generate:
        results = await asyncio.gather(*(_one_prompt(loaded, ids, params) for _, ids in prompts))
    else:  # echo with max_tokens 0: nothing to generate
        results = [[Delta(i, "", "length", 0, []) for i in range(params.n)] for _ in prompts]
    echo = bool(getattr(req, "echo", False))
    top = getattr(req, "logprobs", None) if not chat else None
    choices, completion_tokens = [], 0
    for p, ((text, ids), done) in enumerate(zip(prompts, results)):
        for d in done:
            completion_tokens += d.completion_tokens
            choice = _choice(chat, p * params.n + d.index, (text if echo else "") + d.text, d.finish_reason,
                             stream=False)
            if top is not None:
                # A choice that ended on EOS lists it too (as OpenAI and vLLM do): lm-evaluation-harness
                # scores the continuation as token_logprobs[ctxlen:-1], taking the last one as generated.
                gen = (d.token_ids or []) + ([d.eos_token_id] if d.eos_token_id is not None else [])
                scored = await asyncio.to_thread(loaded.engine.score, ids + gen, top)
                choice["logprobs"] = _logprobs(loaded.tokenizer, ids, gen, scored, echo, top)
            choices.append(choice)
    body = _envelope(request_id, chat, loaded.name, choices, stream=False)
    prompt_tokens = sum(len(ids) for _, ids in prompts)
    body["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                     "total_tokens": prompt_tokens + completion_tokens}
    return body


def _sse_line(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _sse(loaded: LoadedModel, prompt_ids, params: SamplingParams, request_id: str, chat: bool,
               include_usage: bool, pins: ExitStack):
    completion_tokens = 0
    try:
        if chat:  # OpenAI opens each choice with the assistant role
            for i in range(params.n):
                yield _sse_line(_envelope(request_id, chat, loaded.name, [_choice(chat, i, "", None, True, True)], True))
        try:
            async for deltas in loaded.engine.stream(prompt_ids, params):
                lines = []
                for d in deltas:
                    if d.text:
                        choice = _choice(chat, d.index, d.text, None, stream=True)
                        lines.append(_sse_line(_envelope(request_id, chat, loaded.name, [choice], stream=True)))
                    if d.finish_reason:
                        completion_tokens += d.completion_tokens
                        choice = _choice(chat, d.index, "", d.finish_reason, stream=True)
                        lines.append(_sse_line(_envelope(request_id, chat, loaded.name, [choice], stream=True)))
                yield "".join(lines)  # several SSE events in one chunk when they piled up
        except RuntimeError as e:  # the engine failed this request: say so in the stream
            yield _sse_line(error_body(str(e), "server_error"))
            return
        if include_usage:
            usage = _envelope(request_id, chat, loaded.name, [], stream=True)
            usage["usage"] = {"prompt_tokens": len(prompt_ids), "completion_tokens": completion_tokens,
                              "total_tokens": len(prompt_ids) + completion_tokens}
            yield _sse_line(usage)
        yield "data: [DONE]\n\n"
    finally:
        pins.close()


def build_api(service: ModelService, limits: ServeLimits, api_key: str | None = None,
              extra_routers: list[APIRouter] | None = None, public_routers: list[APIRouter] | None = None,
              policy=None) -> FastAPI:
    """The whole HTTP app: OpenAI routes and any extra (page) routes, behind optional bearer auth and
    `policy` (a guard.RequestPolicy: Host, Origin, JSON bodies; default: loopback only)."""
    from raywiz.serve.guard import RequestPolicy, request_guard
    from raywiz.serve.http_server import install_header_timeout

    install_header_timeout()  # (this process's uvicorn: tests and single-process runs)
    app = FastAPI(title="raywiz serve", docs_url="/docs", redoc_url=None)
    install_error_handlers(app)
    auth = [Depends(bearer_auth(api_key))]
    guard = Depends(request_guard(policy or RequestPolicy(has_token=api_key is not None)))
    app.include_router(build_openai_router(service, limits), dependencies=[*auth, guard])
    for router in extra_routers or []:
        app.include_router(router, dependencies=auth)
    for router in public_routers or []:
        app.include_router(router)

    @app.get("/health")
    async def health():
        current = service.pool.current
        return {"status": "ok", "model": current.name if current else None}

    return app

"""The one way DayDream talks to a model: an OpenAI-compatible `/chat/completions` client.

Every call yields a `CallRecord` (text, tokens, cost, latency, who served it) or raises an
`LLMError` whose `kind` tells the retry policy what to do; `classify_response` decides which,
from the status, headers and body alone. The API key lives only inside the client: it is never
part of the request hash, a record, an error message or the client's repr.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

import httpx
from pydantic import SecretStr

from shared import telemetry
from shared.events import CallParameters, CallRecord, ModelSpec, ProviderRouting, utcnow

APP_TITLE = "DayDream"
"""Sent to OpenRouter as `X-Title`: it shows usage under this app name."""
REPLICATE_HEADER = "X-DayDream-Replicate"
"""Which replicate a call is for. Providers ignore it; the fake LLM mixes it into its request
identity, so unseeded replicates of one prompt get different simulated text and count as
different requests in its `/stats`, as n independent samples should."""
MAX_CONNECTIONS = 256
"""Far above a tier's concurrency cap: the tier, not the connection pool, limits calls in flight."""
MAX_PROVIDER_MESSAGE_CHARS = 500


class ErrorKind(StrEnum):
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    BAD_BODY = "bad_body"
    ERROR_IN_RESPONSE = "error_in_response"
    FINISH_ERROR = "finish_error"
    EMPTY_CONTENT = "empty_content"
    TRUNCATED_EMPTY = "truncated_empty"
    BAD_REQUEST = "bad_request"
    AUTH = "auth"
    PAYMENT = "payment"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    OTHER_CLIENT_ERROR = "other_client_error"
    QUOTA_EXHAUSTED = "quota_exhausted"
    BUDGET = "budget"
    """Never sent: the experiment's budget was reached (services/llm_worker/budget.py)."""


class LLMError(Exception):
    """A failed call, classified so the caller can decide between retrying and giving up."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        status: int | None = None,
        retry_after_s: float | None = None,
        resets_at: datetime | None = None,
    ) -> None:
        super().__init__(f"{kind.value}: {message}")
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after_s = retry_after_s
        self.resets_at = resets_at

    def __repr__(self) -> str:
        return (
            f"LLMError(kind={self.kind.value!r}, message={self.message!r}, "
            f"status={self.status!r}, retry_after_s={self.retry_after_s!r})"
        )


_STATUS_KINDS = {
    400: ErrorKind.BAD_REQUEST,
    401: ErrorKind.AUTH,
    402: ErrorKind.PAYMENT,
    403: ErrorKind.FORBIDDEN,
    404: ErrorKind.NOT_FOUND,
    408: ErrorKind.TIMEOUT,
    429: ErrorKind.RATE_LIMITED,
}


def error_kind_for_status(status: int) -> ErrorKind:
    """408 counts as a timeout: OpenRouter answers it when the upstream model took too long."""
    if status >= 500:
        return ErrorKind.SERVER_ERROR
    return _STATUS_KINDS.get(status, ErrorKind.OTHER_CLIENT_ERROR)


def chat_messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


SIMULATED_ENDPOINT = "simulated"
"""The identity of the built-in fake LLM, whatever port it listens on this time."""


def endpoint_identity(base_url: str, simulated: bool = False) -> str:
    """What answers an experiment's calls, without the key: the fake LLM as one endpoint on any
    port, a real one as its base URL with scheme and host lower-cased and no trailing '/'.
    An experiment records it, every task carries it, and it is part of the request hash."""
    if simulated:
        return SIMULATED_ENDPOINT
    scheme, sep, rest = base_url.strip().rstrip("/").partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme.lower()}{sep}{host.lower()}{slash}{path}"


def request_hash(
    endpoint: str,
    model: str,
    messages: list[dict],
    parameters: CallParameters,
    replicate: int,
    routing: ProviderRouting | None = None,
) -> str:
    """The response-store key: same endpoint (its `endpoint_identity`), model, messages, parameters,
    provider routing and replicate means the same paid answer. Unset parameters and routing are
    left out, so adding a field later does not change the hash of old requests."""
    routed = routing.request_field() if routing else {}
    canonical = json.dumps(
        {
            "base_url": endpoint_identity(endpoint),
            "model": model,
            "messages": messages,
            "parameters": parameters.model_dump(exclude_none=True),
            "replicate": replicate,
        } | ({"routing": routed} if routed else {}),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def is_openrouter(base_url: str) -> bool:
    """OpenRouter's own fields and headers go to OpenRouter only: a strict OpenAI-compatible
    server may answer 400 to a field it does not know, and a 400 is never retried."""
    host = httpx.URL(base_url).host
    return host == "openrouter.ai" or host.endswith(".openrouter.ai")


def request_body(model: str, prompt: str, parameters: CallParameters, openrouter: bool,
                 routing: ProviderRouting | None = None) -> dict[str, Any]:
    """The `/chat/completions` body: OpenAI's documented fields, plus OpenRouter's usage
    accounting and provider routing when the endpoint is OpenRouter."""
    body: dict[str, Any] = {"model": model, "messages": chat_messages(prompt)}
    if openrouter:
        body["usage"] = {"include": True}
        if routing and routing.request_field():
            body["provider"] = routing.request_field()
    return body | parameters.model_dump(exclude_none=True)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """`Retry-After` is either delay seconds or an HTTP date; a date in the past means now."""
    if not value or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or utcnow())).total_seconds())


def parse_rate_limit_reset(value: str | None, now: datetime | None = None) -> datetime | None:
    """`X-RateLimit-Reset`: OpenRouter sends epoch milliseconds; others epoch seconds or seconds
    from now. Each form is told apart by its size."""
    if not value or not value.strip():
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    now = now or utcnow()
    if number > 1e11:
        return datetime.fromtimestamp(number / 1000, UTC)
    if number > 1e9:
        return datetime.fromtimestamp(number, UTC)
    return now + timedelta(seconds=max(0.0, number))


def quota_exhausted(error: LLMError, now: datetime, horizon_s: float) -> LLMError | None:
    """A 429 whose limit resets beyond the horizon (a daily quota, such as OpenRouter's free-model
    limit) is not worth retrying: it becomes `quota_exhausted`, saying when the quota resets."""
    if error.kind is not ErrorKind.RATE_LIMITED or error.resets_at is None:
        return None
    if (error.resets_at - now).total_seconds() <= horizon_s:
        return None
    return LLMError(ErrorKind.QUOTA_EXHAUSTED,
                    f"the quota is used up until {error.resets_at:%Y-%m-%d %H:%M} UTC: {error.message}; "
                    "rerun the failed tasks after that (`daydream rerun ID --failed`) or use another tier",
                    status=error.status, resets_at=error.resets_at)


def classify_response(
    status: int, headers: Mapping[str, str], text: str, *, model: str, base_url: str, secret: str
) -> dict[str, Any]:
    """The completion payload of an HTTP answer, or the `LLMError` whose kind tells the retry policy
    what to do. Pure, so every status and broken body is tested without a server; `secret` (the
    API key, or "" when none was sent) only says which 401 advice applies and is scrubbed from
    whatever the provider echoes."""
    if status != 200:
        kind = error_kind_for_status(status)
        raise LLMError(
            kind,
            _status_message(kind, status, model, base_url, bool(secret), _provider_message(text, secret)),
            status=status,
            retry_after_s=parse_retry_after(_header(headers, "retry-after")),
            resets_at=parse_rate_limit_reset(_header(headers, "x-ratelimit-reset")) if status == 429 else None,
        )
    try:
        payload = json.loads(text)
    except ValueError:
        raise LLMError(
            ErrorKind.BAD_BODY,
            f"{model} answered 200 with a body that is not JSON "
            f"({_header(headers, 'content-type') or 'no content-type'}): {_snippet(text, secret)}",
            status=status,
        ) from None
    if not isinstance(payload, dict):
        raise LLMError(ErrorKind.BAD_BODY, f"{model} answered 200 with JSON that is not an object", status=status)
    if payload.get("error"):
        raise LLMError(
            ErrorKind.ERROR_IN_RESPONSE,
            f"{model} answered 200 with an error: {_snippet(_error_text(payload['error']), secret)}",
            status=status,
        )
    choices = payload.get("choices")
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        raise LLMError(
            ErrorKind.BAD_BODY, f"{model} answered 200 without choices: {_snippet(text, secret)}", status=status
        )
    choice = choices[0]
    if choice.get("finish_reason") == "error":
        raise LLMError(
            ErrorKind.FINISH_ERROR,
            f"{model} stopped with finish_reason=error (native: {choice.get('native_finish_reason')})",
            status=status,
        )
    content = (choice.get("message") or {}).get("content")
    if isinstance(content, str) and content.strip():
        return payload
    if choice.get("finish_reason") == "length":
        details = (payload.get("usage") or {}).get("completion_tokens_details") or {}
        reasoning = details.get("reasoning_tokens")
        raise LLMError(
            ErrorKind.TRUNCATED_EMPTY,
            f"{model} spent its max_tokens budget before writing any text (reasoning tokens: "
            f"{'not reported' if reasoning is None else reasoning}); raise max_tokens in llm_models.csv",
            status=status,
        )
    raise LLMError(ErrorKind.EMPTY_CONTENT, f"{model} returned no text", status=status)


def _status_message(kind: ErrorKind, status: int, model: str, base_url: str, key_sent: bool, said: str) -> str:
    if kind is ErrorKind.AUTH:
        problem = "the API key was refused (wrong or revoked)" if key_sent else "no API key is set"
        lead = f"{base_url} answered 401: {problem} — set OPENROUTER_API_KEY or DAYDREAM_LLM_API_KEY to a valid key"
    elif kind is ErrorKind.PAYMENT:
        lead = f"{base_url} answered 402: the account has no credits left for {model}"
    elif kind is ErrorKind.NOT_FOUND:
        lead = f"{base_url} answered 404: check the model name {model!r} and the base URL"
    else:
        lead = f"{model} answered HTTP {status}"
    return f"{lead}. Provider said: {said}" if said else lead


def _provider_message(text: str, secret: str) -> str:
    try:
        payload = json.loads(text)
    except ValueError:
        return _snippet(text, secret)
    if isinstance(payload, dict) and payload.get("error"):
        return _snippet(_error_text(payload["error"]), secret)
    return _snippet(text, secret)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Header names are case-insensitive, whether `headers` is httpx's or a plain dict."""
    return next((value for key, value in headers.items() if key.lower() == name), None)


def _snippet(text: str, secret: str) -> str:
    text = _scrub(" ".join(text.split()), secret)
    if len(text) > MAX_PROVIDER_MESSAGE_CHARS:
        return text[:MAX_PROVIDER_MESSAGE_CHARS] + "…"
    return text


def _scrub(text: str, secret: str) -> str:
    """Providers sometimes echo the request; the key must not travel on in our messages."""
    return text.replace(secret, "***") if secret else text


class LLMClient:
    """One pooled HTTP client per process, shared by every concurrent call."""

    def __init__(
        self,
        base_url: str,
        api_key: str | SecretStr | None,
        timeout_s: float,
        *,
        app_url: str | None = None,
        openrouter: bool | None = None,
    ) -> None:
        """`app_url` is sent to OpenRouter as `HTTP-Referer`, its app attribution. Whether the
        endpoint is OpenRouter is told by its host unless `openrouter` says (a stand-in for it)."""
        self.base_url = base_url.rstrip("/")
        self._host = httpx.URL(self.base_url).host
        self.timeout_s = timeout_s
        # httpx logs every request at INFO: a log write per call costs ~0.6 ms of CPU (measured
        # here) and says nothing the request metrics do not.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self._api_key = api_key if isinstance(api_key, SecretStr) or api_key is None else SecretStr(api_key)
        self.openrouter = is_openrouter(self.base_url) if openrouter is None else openrouter
        headers = {"X-Title": APP_TITLE} if self.openrouter else {}
        if self.openrouter and app_url:
            headers["HTTP-Referer"] = app_url
        if self._secret():
            headers["Authorization"] = f"Bearer {self._secret()}"
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS),
        )

    def __repr__(self) -> str:
        key_state = "set" if self._secret() else "not set"
        return f"LLMClient(base_url={self.base_url!r}, api_key={key_state}, timeout_s={self.timeout_s})"

    def _secret(self) -> str:
        return self._api_key.get_secret_value() if self._api_key else ""

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def complete(
        self,
        model: ModelSpec,
        prompt: str,
        parameters: CallParameters,
        *,
        attempt: int,
        request_hash: str,
        replicate: int = 1,
    ) -> CallRecord:
        if not telemetry.on():
            return await self._complete(model, prompt, parameters, attempt, request_hash, replicate)
        return await telemetry.traced_llm_call(
            lambda: self._complete(model, prompt, parameters, attempt, request_hash, replicate),
            model=model.model, provider_name="openrouter" if self.openrouter else "openai",
            server=self._host, parameters=parameters,
        )

    async def _complete(self, model: ModelSpec, prompt: str, parameters: CallParameters, attempt: int,
                        request_hash: str, replicate: int) -> CallRecord:
        body = request_body(model.model, prompt, parameters, self.openrouter, model.routing)
        started_at = utcnow()
        clock = time.perf_counter()
        try:
            response = await self._http.post(
                f"{self.base_url}/chat/completions", json=body, headers={REPLICATE_HEADER: str(replicate)}
            )
        except httpx.TimeoutException as error:
            raise LLMError(
                ErrorKind.TIMEOUT,
                f"{model.model} did not answer within {self.timeout_s:g}s ({type(error).__name__})",
            ) from None
        except httpx.TransportError as error:
            raise LLMError(
                ErrorKind.CONNECTION,
                f"could not reach {self.base_url}: {type(error).__name__}: {_scrub(str(error), self._secret())}",
            ) from None
        latency_s = time.perf_counter() - clock
        payload = classify_response(
            response.status_code, response.headers, response.text,
            model=model.model, base_url=self.base_url, secret=self._secret(),
        )
        return self._record(payload, latency_s, attempt, request_hash, started_at)

    @staticmethod
    def _record(
        payload: dict[str, Any],
        latency_s: float,
        attempt: int,
        request_hash: str,
        started_at: datetime,
    ) -> CallRecord:
        choice = payload["choices"][0]
        usage = payload.get("usage") or {}
        details = usage.get("completion_tokens_details") or {}
        cost = usage.get("cost")
        return CallRecord(
            text=choice["message"]["content"],
            finish_reason=choice.get("finish_reason"),
            native_finish_reason=choice.get("native_finish_reason"),
            truncated=choice.get("finish_reason") == "length",
            prompt_tokens=usage.get("prompt_tokens") or 0,
            completion_tokens=usage.get("completion_tokens") or 0,
            reasoning_tokens=details.get("reasoning_tokens") or 0,
            cost_usd=float(cost) if cost is not None else None,
            latency_s=latency_s,
            provider=payload.get("provider"),
            response_id=payload.get("id"),
            resolved_model=payload.get("model"),
            attempt=attempt,
            request_hash=request_hash,
            started_at=started_at,
            finished_at=utcnow(),
        )


def _error_text(error: Any) -> str:
    """OpenRouter nests the upstream provider's own words in `metadata.raw`; they are the useful part."""
    if not isinstance(error, dict):
        return str(error)
    parts = [str(error[key]) for key in ("code", "message") if error.get(key) is not None]
    raw = (error.get("metadata") or {}).get("raw") if isinstance(error.get("metadata"), dict) else None
    if raw:
        parts.append(f"upstream: {raw}")
    return " ".join(parts) or json.dumps(error)

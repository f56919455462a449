"""The one way DayDream talks to a model: an OpenAI-compatible `/chat/completions` client.

Every call yields a `CallRecord` (text, tokens, cost, latency, who served it) or raises an
`LLMError` whose `kind` tells the retry policy what to do. The API key lives only inside the
client: it is never part of the request hash, a record, an error message or the client's repr.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

import httpx
from pydantic import SecretStr

from shared.events import CallParameters, CallRecord, ModelSpec, utcnow

APP_TITLE = "DayDream"
"""Sent as `X-Title`: OpenRouter shows usage under this app name."""
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
    BAD_REQUEST = "bad_request"
    AUTH = "auth"
    PAYMENT = "payment"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    OTHER_CLIENT_ERROR = "other_client_error"


class LLMError(Exception):
    """A failed call, classified so the caller can decide between retrying and giving up."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{kind.value}: {message}")
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after_s = retry_after_s

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


def request_hash(
    base_url: str,
    model: str,
    messages: list[dict],
    parameters: CallParameters,
    replicate: int,
) -> str:
    """The response-store key: same endpoint, model, messages, parameters and replicate means
    the same paid answer. Unset parameters are left out so adding a parameter field later does
    not change the hash of old requests."""
    canonical = json.dumps(
        {
            "base_url": base_url.rstrip("/"),
            "model": model,
            "messages": messages,
            "parameters": parameters.model_dump(exclude_none=True),
            "replicate": replicate,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


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
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or utcnow())).total_seconds())


class LLMClient:
    """One pooled HTTP client per process, shared by every concurrent call."""

    def __init__(
        self,
        base_url: str,
        api_key: str | SecretStr | None,
        timeout_s: float,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._api_key = api_key if isinstance(api_key, SecretStr) or api_key is None else SecretStr(api_key)
        headers = {"X-Title": APP_TITLE}
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
    ) -> CallRecord:
        body: dict[str, Any] = {
            "model": model.model,
            "messages": chat_messages(prompt),
            "usage": {"include": True},
            **parameters.model_dump(exclude_none=True),
        }
        started_at = utcnow()
        clock = time.perf_counter()
        try:
            response = await self._http.post(f"{self.base_url}/chat/completions", json=body)
        except httpx.TimeoutException as error:
            raise LLMError(
                ErrorKind.TIMEOUT,
                f"{model.model} did not answer within {self.timeout_s:g}s ({type(error).__name__})",
            ) from None
        except httpx.TransportError as error:
            raise LLMError(
                ErrorKind.CONNECTION,
                f"could not reach {self.base_url}: {type(error).__name__}: {self._scrub(str(error))}",
            ) from None
        latency_s = time.perf_counter() - clock
        payload = self._payload_or_raise(response, model.model)
        return self._record(payload, latency_s, attempt, request_hash, started_at)

    def _payload_or_raise(self, response: httpx.Response, model: str) -> dict[str, Any]:
        status = response.status_code
        if status != 200:
            kind = error_kind_for_status(status)
            said = self._provider_message(response)
            raise LLMError(
                kind,
                self._status_message(kind, status, model, said),
                status=status,
                retry_after_s=parse_retry_after(response.headers.get("retry-after")),
            )
        try:
            payload = response.json()
        except ValueError:
            raise LLMError(
                ErrorKind.BAD_BODY,
                f"{model} answered 200 with a body that is not JSON "
                f"({response.headers.get('content-type', 'no content-type')}): {self._snippet(response.text)}",
                status=status,
            ) from None
        if not isinstance(payload, dict):
            raise LLMError(ErrorKind.BAD_BODY, f"{model} answered 200 with JSON that is not an object", status=status)
        if payload.get("error"):
            raise LLMError(
                ErrorKind.ERROR_IN_RESPONSE,
                f"{model} answered 200 with an error: {self._snippet(_error_text(payload['error']))}",
                status=status,
            )
        choices = payload.get("choices")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            raise LLMError(
                ErrorKind.BAD_BODY,
                f"{model} answered 200 without choices: {self._snippet(response.text)}",
                status=status,
            )
        choice = choices[0]
        if choice.get("finish_reason") == "error":
            raise LLMError(
                ErrorKind.FINISH_ERROR,
                f"{model} stopped with finish_reason=error (native: {choice.get('native_finish_reason')})",
                status=status,
            )
        content = (choice.get("message") or {}).get("content")
        if not isinstance(content, str) or not content.strip():
            hint = (
                " (the token budget ran out first — reasoning may have used all of max_tokens)"
                if choice.get("finish_reason") == "length"
                else ""
            )
            raise LLMError(ErrorKind.EMPTY_CONTENT, f"{model} returned no text{hint}", status=status)
        return payload

    def _status_message(self, kind: ErrorKind, status: int, model: str, said: str) -> str:
        if kind is ErrorKind.AUTH:
            problem = "the API key is wrong" if self._secret() else "no API key is set"
            lead = (
                f"{self.base_url} answered 401: {problem} — set OPENROUTER_API_KEY or "
                "DAYDREAM_LLM_API_KEY to a valid key"
            )
        elif kind is ErrorKind.PAYMENT:
            lead = f"{self.base_url} answered 402: the account has no credits left for {model}"
        elif kind is ErrorKind.NOT_FOUND:
            lead = f"{self.base_url} answered 404: check the model name {model!r} and the base URL"
        else:
            lead = f"{model} answered HTTP {status}"
        return f"{lead}. Provider said: {said}" if said else lead

    def _provider_message(self, response: httpx.Response) -> str:
        try:
            payload = response.json()
        except ValueError:
            return self._snippet(response.text)
        if isinstance(payload, dict) and payload.get("error"):
            return self._snippet(_error_text(payload["error"]))
        return self._snippet(response.text)

    def _snippet(self, text: str) -> str:
        text = self._scrub(" ".join(text.split()))
        if len(text) > MAX_PROVIDER_MESSAGE_CHARS:
            return text[:MAX_PROVIDER_MESSAGE_CHARS] + "…"
        return text

    def _scrub(self, text: str) -> str:
        """Providers sometimes echo the request; the key must not travel on in our messages."""
        secret = self._secret()
        return text.replace(secret, "***") if secret else text

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

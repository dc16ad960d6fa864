"""What every adapter shares: the call with its deadline, and the classification of failures
into attempt outcomes (which decide whether the next tier is tried)."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import httpx
import orjson

from shared.contracts import AttemptOutcome, Message
from shared.policy import ProviderSpec

MAX_ERROR_TEXT = 300


@dataclass(slots=True)
class Completion:
    output: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    model: str | None = None  # the model that answered, as the provider names it


@dataclass(slots=True)
class CallParams:
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None


class ProviderCallError(Exception):
    """A failed provider call, classified. `fallback` says whether another tier may serve it."""

    def __init__(
        self,
        outcome: AttemptOutcome,
        message: str,
        *,
        status_code: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message
        self.status_code = status_code
        self.retry_after_s = retry_after_s

    @property
    def fallback(self) -> bool:
        return self.outcome is not AttemptOutcome.CLIENT_ERROR


class ProviderAdapter:
    """Base of the API adapters; subclasses build the request body and read the answer."""

    path: str = ""

    def __init__(self, name: str, spec: ProviderSpec, client: httpx.AsyncClient) -> None:
        self.name = name
        self.spec = spec
        self.client = client
        self.url = spec.base_url.rstrip("/") + self.path
        self._key = os.environ.get(spec.api_key_env, "") if spec.api_key_env else ""
        self.headers = self.auth_headers(self._key)

    def auth_headers(self, api_key: str) -> dict[str, str]:
        raise NotImplementedError

    def body(self, model: str, messages: list[Message], params: CallParams) -> dict:
        raise NotImplementedError

    def parse(self, data: dict) -> Completion:
        raise NotImplementedError

    async def complete(
        self, model: str, messages: list[Message], params: CallParams, timeout_s: float
    ) -> Completion:
        """Call the provider once within `timeout_s`; raise `ProviderCallError` on any failure."""
        payload = orjson.dumps(self.body(model, messages, params))
        try:
            async with asyncio.timeout(timeout_s):
                response = await self.client.post(self.url, content=payload, headers=self.headers)
        except TimeoutError as exc:
            raise ProviderCallError(AttemptOutcome.TIMEOUT, f"no answer within {timeout_s:g}s") from exc
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ProviderCallError(
                AttemptOutcome.CONNECTION_ERROR, f"cannot connect: {type(exc).__name__}"
            ) from exc
        except httpx.TimeoutException as exc:
            raise ProviderCallError(AttemptOutcome.TIMEOUT, f"timed out: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:
            raise ProviderCallError(
                AttemptOutcome.CONNECTION_ERROR, f"transport error: {type(exc).__name__}"
            ) from exc
        status = response.status_code
        if status >= 400:
            raise self._http_error(response)
        try:
            return self.parse(orjson.loads(response.content))
        except Exception as exc:  # any shape we cannot read is the provider's fault: next tier
            raise ProviderCallError(
                AttemptOutcome.MALFORMED, f"unreadable answer: {type(exc).__name__}", status_code=status
            ) from exc

    def _http_error(self, response: httpx.Response) -> ProviderCallError:
        status = response.status_code
        message = _error_text(response)
        if self._key and self._key in message:  # some providers echo the key they refused
            message = message.replace(self._key, "***")
        if status == 429:
            return ProviderCallError(
                AttemptOutcome.RATE_LIMITED,
                message,
                status_code=status,
                retry_after_s=_retry_after(response.headers.get("retry-after")),
            )
        if status >= 500 or status == 408:
            outcome = AttemptOutcome.SERVER_ERROR if status != 408 else AttemptOutcome.TIMEOUT
            return ProviderCallError(outcome, message, status_code=status)
        return ProviderCallError(AttemptOutcome.CLIENT_ERROR, message, status_code=status)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from model APIs; the configured default cooldown applies


def _error_text(response: httpx.Response) -> str:
    """The provider's own error message, short, without echoing request content or keys."""
    try:
        data = orjson.loads(response.content)
        err = data.get("error", data) if isinstance(data, dict) else {}
        text = err.get("message") if isinstance(err, dict) else None
    except orjson.JSONDecodeError:
        text = None
    if not isinstance(text, str) or not text:
        text = response.reason_phrase or "error"
    return f"HTTP {response.status_code}: {text[:MAX_ERROR_TEXT]}"

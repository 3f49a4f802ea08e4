"""Every error llm_integration raises, and the one place that maps it to HTTP.

Each class knows its HTTP status and the contract's error ``code``; the DRF exception
handler, the OpenAI-compatible views and the WebSocket consumer all render them from
these attributes. Messages never contain provider keys.

    LLMError                                   500 internal_error
    ├── InvalidRequest                         400 invalid_request
    │   └── PromptTooLarge                     413 prompt_too_large
    ├── ModelNotAllowed                        403 model_not_allowed
    ├── ModelNotFound                          404 model_not_found
    ├── RateLimited                            429 rate_limited        (retry_after)
    ├── RateLimitUnavailable                   503 rate_limit_unavailable (retry_after)
    ├── AccountingUnavailable                  503 accounting_unavailable (retry_after)
    ├── BudgetExceeded                         429 budget_exceeded
    ├── QuotaExceeded                          429 quota_exceeded      (retry_after)
    ├── ConfigurationError                     503 configuration_error
    │   ├── UnknownAdapterKind
    │   └── MissingAPIKey
    ├── NoUpstreamAvailable                    503 no_upstream
    └── UpstreamError                          502 upstream_error      (provider, retryable)
        ├── UpstreamAuthenticationError        502 upstream_auth
        ├── UpstreamBadRequest                 502 upstream_bad_request
        │   └── ContextTooLong                 413 context_length_exceeded
        ├── UpstreamRateLimited                429 rate_limited        (retryable, retry_after)
        ├── UpstreamServerError                502 upstream_unavailable (retryable)
        ├── UpstreamConnectionError            503 upstream_unreachable (retryable)
        ├── UpstreamTimeout                    504 upstream_timeout    (retryable)
        ├── StreamInterrupted                  502 stream_interrupted
        └── BadUpstreamResponse                502 bad_upstream_response
            └── AdapterFailure
"""

from __future__ import annotations

from .redaction import scrub


class LLMError(Exception):
    """Base class of every error of the app."""

    status_code: int = 500
    code: str = "internal_error"
    type: str = "server_error"
    retryable: bool = False
    #: Sending the same request again cannot succeed (a spent budget, a policy): the
    #: answer says so (``x-should-retry: false``), so that SDKs do not retry a 429/503.
    final: bool = False

    def __init__(self, message: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(message or self.default_message())
        self.message = message or self.default_message()
        self.retry_after = retry_after

    @classmethod
    def default_message(cls) -> str:
        return (cls.__doc__ or cls.__name__).strip().splitlines()[0]


class InvalidRequest(LLMError):
    """The request is malformed or a parameter is out of range."""

    status_code = 400
    code = "invalid_request"
    type = "invalid_request_error"

    def __init__(
        self, message: str = "", *, param: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        #: The request parameter at fault, when one is (OpenAI's ``error.param``).
        self.param = param


class UnsupportedParameter(InvalidRequest):
    """A request parameter the gateway does not carry: refused by name, never dropped."""

    code = "unsupported_parameter"


class UnsupportedContent(InvalidRequest):
    """The request needs a capability (tools, structured output) its model lacks."""

    code = "unsupported_content"


class PromptTooLarge(InvalidRequest):
    """The prompt is larger than the configured limit."""

    status_code = 413
    code = "prompt_too_large"


class ModelNotAllowed(LLMError):
    """The model is not part of your plan."""

    status_code = 403
    code = "model_not_allowed"
    type = "permission_error"


class PolicyRefused(LLMError):
    """A routing rule refuses this request (its message says why); nothing is charged."""

    status_code = 403
    code = "policy_refused"
    final = True
    type = "permission_error"


class ModelNotFound(LLMError):
    """No such model."""

    status_code = 404
    code = "model_not_found"
    type = "invalid_request_error"


class RateLimited(LLMError):
    """Too many requests; retry later."""

    status_code = 429
    code = "rate_limited"
    type = "rate_limit_error"

    def __init__(
        self, message: str = "", *, retry_after: float | None = None, reason: str = ""
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        #: Which limit, without when to retry (for a message that adds its own wait).
        self.reason = reason or self.message


class RateLimitUnavailable(LLMError):
    """Rate limits cannot be checked right now (the shared cache is unreachable)."""

    status_code = 503
    code = "rate_limit_unavailable"
    type = "server_error"


class AccountingUnavailable(LLMError):
    """Usage cannot be recorded right now (the database refuses writes or is locked)."""

    status_code = 503
    code = "accounting_unavailable"
    type = "server_error"


class BudgetExceeded(LLMError):
    """The budget for this period has no room for this request."""

    status_code = 429
    code = "budget_exceeded"
    final = True
    type = "budget_error"

    def __init__(self, message: str = "", *, budget=None, period_id: int | None = None) -> None:
        super().__init__(message)
        #: The budget that refused, and its period row (for the refusal alert).
        self.budget = budget
        self.period_id = period_id


class QuotaExceeded(LLMError):
    """Your plan's quota on this model is used up for this period."""

    status_code = 429
    code = "quota_exceeded"
    final = True
    type = "rate_limit_error"


class ConfigurationError(LLMError):
    """The gateway is misconfigured for this model."""

    status_code = 503
    code = "configuration_error"


class UnknownAdapterKind(ConfigurationError):
    """A provider row names an adapter kind that does not exist."""


class MissingAPIKey(ConfigurationError):
    """The environment variable that should hold the provider's key is not set."""


class NoUpstreamAvailable(LLMError):
    """No upstream provider is available for this model right now."""

    status_code = 503
    code = "no_upstream"
    type = "server_error"


class NoLocalModel(NoUpstreamAvailable):
    """A routing rule keeps this request local and no local alias can serve it: nothing
    was sent anywhere."""

    code = "no_local_model"
    final = True


class UpstreamError(LLMError):
    """The upstream provider refused the request or answered badly."""

    status_code = 502
    code = "upstream_error"
    type = "upstream_error"

    def __init__(
        self,
        message: str = "",
        *,
        provider: str = "",
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        # Upstream text may quote the key: no piece of a registered key gets through.
        super().__init__(scrub(message), retry_after=retry_after)
        self.provider = provider
        self.status = status
        #: For an interrupted stream: what was consumed before the cut (an estimate).
        self.partial_usage = None
        self.partial_text = ""


class UpstreamAuthenticationError(UpstreamError):
    """The upstream provider rejected the gateway's credentials."""

    code = "upstream_auth"


class UpstreamBadRequest(UpstreamError):
    """The upstream provider rejected the request as invalid."""

    code = "upstream_bad_request"


class ContextTooLong(UpstreamBadRequest):
    """The conversation does not fit the model's context window."""

    status_code = 413
    code = "context_length_exceeded"
    type = "invalid_request_error"


class UpstreamRateLimited(UpstreamError):
    """The upstream provider is rate limiting the gateway."""

    status_code = 429
    code = "rate_limited"
    type = "rate_limit_error"
    retryable = True


class UpstreamServerError(UpstreamError):
    """The upstream provider failed (5xx or overloaded)."""

    code = "upstream_unavailable"
    retryable = True


class UpstreamConnectionError(UpstreamError):
    """The upstream provider could not be reached."""

    status_code = 503
    code = "upstream_unreachable"
    retryable = True


class UpstreamTimeout(UpstreamError):
    """The upstream provider did not answer in time."""

    status_code = 504
    code = "upstream_timeout"
    retryable = True


class StreamInterrupted(UpstreamError):
    """The connection to the upstream provider was lost mid-stream."""

    code = "stream_interrupted"
    retryable = True


class BadUpstreamResponse(UpstreamError):
    """The upstream provider's answer could not be understood."""

    code = "bad_upstream_response"


class AdapterFailure(BadUpstreamResponse):
    """An adapter failed unexpectedly while building a request or reading an answer:
    a 502 like any unreadable answer, but not held against the provider's circuit."""


class ResponseNotFound(LLMError):
    """No such stored response."""

    status_code = 404
    code = "response_not_found"
    type = "invalid_request_error"


class ConversationNotFound(LLMError):
    """No such conversation of the caller's."""

    status_code = 404
    code = "conversation_not_found"
    type = "invalid_request_error"


class ConversationBusy(LLMError):
    """Another turn of the conversation is still running."""

    status_code = 409
    code = "conversation_busy"
    type = "invalid_request_error"


class PreviousResponseNotFound(InvalidRequest):
    """``previous_response_id`` names no stored response of the caller's."""

    code = "previous_response_not_found"

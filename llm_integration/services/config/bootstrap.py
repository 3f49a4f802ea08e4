"""Turn a single-backend environment or a LiteLLM proxy ``config.yaml`` into rows.

Used by ``manage.py llm_bootstrap``. Pure functions of their inputs (the environment
arrives as a mapping), idempotent: running twice changes nothing the second time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import transaction

from ...adapters.openai import endpoint_base
from ...models import AliasFallback, Budget, ModelAlias, Provider

ENV_PREFIX = "os.environ/"
MILLION = Decimal(1_000_000)


class BootstrapError(ValueError):
    """The environment or config file cannot be turned into rows."""


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def note(self, kind: str, name: str, outcome: str, changed: list[str]) -> None:
        detail = f" ({', '.join(changed)})" if outcome == "updated" else ""
        self.lines.append(f"{outcome} {kind} {name}{detail}")


def upsert(model, lookup: dict[str, Any], values: dict[str, Any], report: Report, kind: str):
    """Create or update one row; report created / updated (fields) / unchanged."""
    obj = model.objects.filter(**lookup).first()
    if obj is None:
        obj = model.objects.create(**lookup, **values)
        report.note(kind, str(obj), "created", [])
        return obj
    changed = [k for k, v in values.items() if getattr(obj, k) != v]
    for k in changed:
        setattr(obj, k, values[k])
    if changed:
        obj.save()
    report.note(kind, str(obj), "updated" if changed else "unchanged", changed)
    return obj


# -- single backend from environment variables ------------------------------------

BACKENDS: dict[str, dict[str, Any]] = {
    "openai": {
        "kind": "openai",
        "key": "OPENAI_API_KEY",
        "model": ("OPENAI_MODEL", "gpt-4o-mini"),
        "url": ("OPENAI_BASE_URL", ""),
        "prefix": "OPENAI",
    },
    "anthropic": {
        "kind": "anthropic",
        "key": "ANTHROPIC_API_KEY",
        "model": ("ANTHROPIC_MODEL", "claude-sonnet-4-5"),
        "url": ("ANTHROPIC_BASE_URL", ""),
        "prefix": "ANTHROPIC",
    },
    "ollama": {
        "kind": "ollama",
        "key": None,
        "model": ("OLLAMA_MODEL", "llama3.2"),
        "url": ("OLLAMA_URL", "http://127.0.0.1:11434"),
        "prefix": "OLLAMA",
    },
    "custom": {
        "kind": "openai_compatible",
        "key": "CUSTOM_LLM_API_KEY",
        "model": ("CUSTOM_LLM_MODEL", ""),
        "url": ("CUSTOM_LLM_URL", ""),
        "prefix": "CUSTOM_LLM",
    },
    "dummy": {
        "kind": "dummy",
        "key": None,
        "model": ("DUMMY_MODEL", "echo"),
        "url": ("", ""),
        "prefix": "DUMMY",
    },
}


def _int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise BootstrapError(f"{name} must be a whole number, not {value!r}.") from None


def _bool(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise BootstrapError(f"{name} must be true or false, not {value!r}.")


def _decimal(env: Mapping[str, str], name: str) -> Decimal | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        number = Decimal(value)
        if not number.is_finite() or number < 0:
            raise InvalidOperation
    except InvalidOperation:
        raise BootstrapError(f"{name} must be a price in USD, not {value!r}.") from None
    return number


def _temperature(env: Mapping[str, str], name: str) -> float | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        temperature = float(value)
    except ValueError:
        temperature = -1.0
    if not 0 <= temperature <= 2:
        raise BootstrapError(f"{name} must be a number from 0 to 2, not {value!r}.")
    return temperature


def _without_backend(env: Mapping[str, str], report: Report) -> Report:
    """No ``LLM_BACKEND``: no existing provider or alias changes. Only a missing
    ``default`` is made, on the dummy provider (made too if there is none); the budget
    is set as asked."""
    if ModelAlias.objects.filter(slug="default").exists():
        report.lines.append("LLM_BACKEND is not set: providers and aliases left as they are")
    else:
        provider, created = Provider.objects.get_or_create(
            name="dummy", defaults={"kind": Provider.Kind.DUMMY}
        )
        report.note("provider", str(provider), "created" if created else "unchanged", [])
        alias = ModelAlias.objects.create(
            slug="default", provider=provider, upstream_model=BACKENDS["dummy"]["model"][1]
        )
        report.note("alias", str(alias), "created", [])
    unused = [name for name in backend_variables() if env.get(name, "").strip()]
    if unused:
        report.warnings.append(
            f"{', '.join(unused)} describe LLM_BACKEND's provider and alias: without "
            "LLM_BACKEND they were not used."
        )
    _budget(env, report)
    return report


def backend_variables() -> list[str]:
    """The variables that describe ``LLM_BACKEND``'s provider and alias (keys aside:
    those are read when requests are made)."""
    names = ["LLM_MAX_RETRIES", "LLM_ENABLE_RETRY", "LLM_RATE_LIMIT_RPM", "LLM_ENABLE_CACHING"]
    names += [*PRICE_VARIABLES.values(), "CUSTOM_LLM_HEADERS", "CUSTOM_LLM_TIMEOUT"]
    for spec in BACKENDS.values():
        names += [spec["url"][0], spec["model"][0], f"{spec['prefix']}_MAX_TOKENS"]
        names.append(f"{spec['prefix']}_TEMPERATURE")
    return [name for name in dict.fromkeys(names) if name]


@transaction.atomic
def bootstrap_from_env(env: Mapping[str, str]) -> Report:
    """``LLM_BACKEND``'s provider and the ``default`` alias, and ``BUDGET_LIMIT``'s budget.

    Without ``LLM_BACKEND`` no provider or alias changes (the dummy ``default`` is made
    only when there is none): ``BUDGET_LIMIT=5 llm_bootstrap`` sets the budget alone."""
    report = Report()
    named = (env.get("LLM_BACKEND") or "").strip().lower()
    if not named:
        return _without_backend(env, report)
    backend = named
    spec = BACKENDS.get(backend)
    if spec is None:
        raise BootstrapError(
            f"LLM_BACKEND={backend!r} is not one of: {', '.join(sorted(BACKENDS))}."
        )
    url_var, url_default = spec["url"]
    base_url = (env.get(url_var) if url_var else "") or url_default
    model_var, model_default = spec["model"]
    model = (env.get(model_var) if model_var else "") or model_default
    if backend == "custom" and not base_url:
        raise BootstrapError("LLM_BACKEND=custom needs CUSTOM_LLM_URL.")
    if spec["kind"] in ("openai", "openai_compatible"):
        base_url = endpoint_base(base_url)  # the base URL or the full chat endpoint
    if not model:
        raise BootstrapError(f"LLM_BACKEND={backend} needs {model_var}.")
    key_var = spec["key"]
    if backend == "custom" and not env.get("CUSTOM_LLM_API_KEY"):
        key_var = None  # an open OpenAI-compatible server
    if key_var and not env.get(key_var):
        report.warnings.append(
            f"{key_var} is not set: requests to {backend} will fail until it is."
        )
    headers: dict[str, str] = {}
    if backend == "custom" and env.get("CUSTOM_LLM_HEADERS"):
        try:
            headers = json.loads(env["CUSTOM_LLM_HEADERS"])
        except ValueError:
            raise BootstrapError("CUSTOM_LLM_HEADERS must be a JSON object.") from None
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise BootstrapError("CUSTOM_LLM_HEADERS must be a JSON object of strings.")
    values: dict[str, Any] = {
        "kind": spec["kind"],
        "base_url": base_url,
        "api_key_env": key_var or "",
        "extra_headers": headers,
        "enabled": True,
    }
    timeout = env.get("CUSTOM_LLM_TIMEOUT", "").strip() if backend == "custom" else ""
    if timeout:
        try:
            values["timeout_seconds"] = float(timeout)
        except ValueError:
            raise BootstrapError("CUSTOM_LLM_TIMEOUT must be a number of seconds.") from None
    retries = _int(env, "LLM_MAX_RETRIES")
    if not _bool(env, "LLM_ENABLE_RETRY", default=True):
        retries = 0
    if retries is not None:
        values["max_retries"] = retries
    rpm = _int(env, "LLM_RATE_LIMIT_RPM")
    if rpm is not None:
        values["rpm_limit"] = rpm or None
    provider = upsert(Provider, {"name": backend}, values, report, "provider")
    alias_values: dict[str, Any] = {
        "provider": provider,
        "upstream_model": model,
        "enabled": True,
        "cache_responses": _bool(env, "LLM_ENABLE_CACHING"),
    }
    prefix = spec["prefix"]
    max_tokens = _int(env, f"{prefix}_MAX_TOKENS")
    if max_tokens is not None:
        alias_values["default_max_tokens"] = max_tokens
    temperature = _temperature(env, f"{prefix}_TEMPERATURE")
    if temperature is not None:
        alias_values["default_temperature"] = temperature
    for field_name, variable in PRICE_VARIABLES.items():
        price = _decimal(env, variable)
        if price is not None:
            alias_values[field_name] = price
    alias = upsert(ModelAlias, {"slug": "default"}, alias_values, report, "alias")
    _budget(env, report)
    if env.get("BUDGET_LIMIT", "").strip() and alias.is_paid and not _priced(alias):
        report.warnings.append(
            "BUDGET_LIMIT is set but the alias 'default' has no price, so the budget would "
            f"count nothing: set {' and '.join(PRICE_VARIABLES.values())} (USD per million "
            "tokens), or price it in admin."
        )
    return report


#: Alias prices from the environment (USD per million tokens).
PRICE_VARIABLES = {
    "input_price_per_mtok": "LLM_INPUT_PRICE_PER_MTOK",
    "output_price_per_mtok": "LLM_OUTPUT_PRICE_PER_MTOK",
}


def _priced(alias: ModelAlias) -> bool:
    return bool(alias.input_price_per_mtok or alias.output_price_per_mtok)


def _budget(env: Mapping[str, str], report: Report) -> None:
    value = env.get("BUDGET_LIMIT", "").strip()
    if not value:
        return
    try:
        limit = Decimal(value)
        if limit < 0:
            raise InvalidOperation
    except InvalidOperation:
        raise BootstrapError(f"BUDGET_LIMIT must be an amount in USD, not {value!r}.") from None
    upsert(
        Budget,
        {"name": "global-monthly", "scope": Budget.Scope.GLOBAL},
        {"period": Budget.Period.MONTH, "limit_usd": limit, "hard": True, "enabled": True},
        report,
        "budget",
    )


# -- LiteLLM proxy config.yaml ------------------------------------------------------

PREFIX_KINDS = {
    "openai": "openai",
    "text-completion-openai": "openai",
    "anthropic": "anthropic",
    "ollama": "ollama",
    "ollama_chat": "ollama",
    "hosted_vllm": "openai_compatible",
    "vllm": "openai_compatible",
    "litellm_proxy": "openai_compatible",
    "openai_like": "openai_compatible",
    "custom_openai": "openai_compatible",
    "lm_studio": "openai_compatible",
    "llamafile": "openai_compatible",
    "deepseek": "openai_compatible",
    "groq": "openai_compatible",
    "mistral": "openai_compatible",
    "together_ai": "openai_compatible",
    "fireworks_ai": "openai_compatible",
    "openrouter": "openai_compatible",
    "gemini": "openai_compatible",
    "google": "openai_compatible",
}
PUBLIC_BASES = {
    "gemini": "https://generativelanguage.googleapis.com/v1beta/openai",
    "google": "https://generativelanguage.googleapis.com/v1beta/openai",
    "deepseek": "https://api.deepseek.com/v1",
    "groq": "https://api.groq.com/openai/v1",
    "mistral": "https://api.mistral.ai/v1",
    "together_ai": "https://api.together.xyz/v1",
    "fireworks_ai": "https://api.fireworks.ai/inference/v1",
    "openrouter": "https://openrouter.ai/api/v1",
}


#: The key variable LiteLLM reads for a provider when the config names none.
DEFAULT_KEYS = {
    "openai": "OPENAI_API_KEY",
    "text-completion-openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "google": "GOOGLE_API_KEY",
    "deepseek": "DEEPSEEK_API_KEY",
    "groq": "GROQ_API_KEY",
    "mistral": "MISTRAL_API_KEY",
    "together_ai": "TOGETHERAI_API_KEY",
    "fireworks_ai": "FIREWORKS_AI_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
}
#: What the import reads; every other key of the config is reported as not used.
USED_TOP = {"model_list", "router_settings", "litellm_settings"}
USED_ENTRY = {"model_name", "litellm_params", "model_info"}
USED_PARAMS = {
    "model",
    "api_base",
    "base_url",
    "api_key",
    "rpm",
    "tpm",
    "timeout",
    "max_retries",
    "extra_headers",
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
    "cache_creation_input_token_cost_above_1hr",
    "max_tokens",
    "temperature",
}
USED_INFO = {
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
    "cache_creation_input_token_cost_above_1hr",
    "max_input_tokens",
    "max_output_tokens",
    "supports_function_calling",
    "supports_response_schema",
    "supports_vision",
    "mode",
}
USED_SETTINGS = {"fallbacks"}


def _unused(report: Report, where: str, data: Any, used: set[str]) -> None:
    if isinstance(data, dict):
        extra = sorted(str(k) for k in data if k not in used)
        if extra:
            report.warnings.append(f"{where}: not used: {', '.join(extra)}.")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _per_million(value: Any, where: str) -> Decimal:
    try:
        return (Decimal(str(value)) * MILLION).normalize()
    except InvalidOperation:
        raise BootstrapError(f"{where} must be a number.") from None


def _provider_for(prefix: str, params: Mapping[str, Any], report: Report, where: str) -> Provider:
    kind = PREFIX_KINDS.get(prefix)
    if kind is None:
        raise BootstrapError(f"{where}: provider {prefix!r} is not supported.")
    base_url = str(params.get("api_base") or params.get("base_url") or "")
    if kind == "openai" and base_url and "api.openai.com" not in base_url:
        kind = "openai_compatible"  # LiteLLM's openai/ prefix on any compatible server
    base_url = base_url or PUBLIC_BASES.get(prefix, "")
    key_env = ""
    api_key = params.get("api_key")
    if isinstance(api_key, str) and api_key.startswith(ENV_PREFIX):
        key_env = api_key.removeprefix(ENV_PREFIX)
    elif api_key:
        report.warnings.append(
            f"{where}: an inline api_key was ignored; keys are never stored. "
            "Use api_key: os.environ/NAME."
        )
    if not key_env and kind == PREFIX_KINDS[prefix]:  # not openai/ on another server
        key_env = DEFAULT_KEYS.get(prefix, "")
    name = prefix if not params.get("api_base") else f"{prefix}-{_slug(base_url.split('://')[-1])}"
    values: dict[str, Any] = {
        "kind": kind,
        "base_url": base_url,
        "api_key_env": key_env,
        "enabled": True,
    }
    if isinstance(params.get("extra_headers"), dict):
        values["extra_headers"] = {str(k): str(v) for k, v in params["extra_headers"].items()}
    if params.get("timeout") is not None:
        values["timeout_seconds"] = float(params["timeout"])
    if params.get("max_retries") is not None:
        values["max_retries"] = int(params["max_retries"])
    return upsert(Provider, {"name": name[:64]}, values, report, "provider")


@transaction.atomic
def bootstrap_from_litellm_config(config: Any, env: Mapping[str, str]) -> Report:
    report = Report()
    if not isinstance(config, dict) or not isinstance(config.get("model_list"), list):
        raise BootstrapError("The config has no model_list.")
    _unused(report, "config", config, USED_TOP)
    for section in ("router_settings", "litellm_settings"):
        _unused(report, section, config.get(section), USED_SETTINGS)
    seen: set[str] = set()
    for position, entry in enumerate(config["model_list"]):
        where = f"model_list[{position}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("litellm_params"), dict):
            raise BootstrapError(f"{where} needs model_name and litellm_params.")
        name = str(entry.get("model_name") or "")
        params = entry["litellm_params"]
        info = entry.get("model_info") if isinstance(entry.get("model_info"), dict) else {}
        if not name or not params.get("model"):
            raise BootstrapError(f"{where} needs model_name and litellm_params.model.")
        if name in seen:
            report.warnings.append(
                f"{where}: a second deployment of {name!r} was skipped (no load balancing)."
            )
            continue
        mode = info.get("mode") or "chat"
        if mode not in ModelAlias.Mode.values:
            report.warnings.append(
                f"{where}: skipped: mode {mode!r} is not served (chat, embedding)."
            )
            continue
        seen.add(name)
        _unused(report, where, entry, USED_ENTRY)
        _unused(report, f"{where}.litellm_params", params, USED_PARAMS)
        _unused(report, f"{where}.model_info", info, USED_INFO)
        prefix, _, upstream = str(params["model"]).partition("/")
        if not upstream:
            prefix, upstream = "openai", prefix
        provider = _provider_for(prefix, params, report, where)
        values: dict[str, Any] = {
            "provider": provider,
            "upstream_model": upstream,
            "label": name,
            "sort_order": position,
            "mode": mode,
            "enabled": True,
            "rpm_limit": int(params["rpm"]) if params.get("rpm") else None,
            "tpm_limit": int(params["tpm"]) if params.get("tpm") else None,
        }
        for ours, theirs in (
            ("input_price_per_mtok", "input_cost_per_token"),
            ("output_price_per_mtok", "output_cost_per_token"),
            ("cache_read_price_per_mtok", "cache_read_input_token_cost"),
            ("cache_write_price_per_mtok", "cache_creation_input_token_cost"),
            ("cache_write_1h_price_per_mtok", "cache_creation_input_token_cost_above_1hr"),
        ):
            value = params.get(theirs, info.get(theirs))
            if value is not None:
                values[ours] = _per_million(value, f"{where}.{theirs}")
        for ours, theirs in (
            ("context_window", "max_input_tokens"),
            ("default_max_tokens", "max_output_tokens"),
        ):
            if info.get(theirs):
                values[ours] = int(info[theirs])
        for ours, theirs in (
            ("supports_tools", "supports_function_calling"),
            ("supports_response_format", "supports_response_schema"),
            ("supports_vision", "supports_vision"),
        ):
            if isinstance(info.get(theirs), bool):
                values[ours] = info[theirs]
        if params.get("max_tokens"):
            values["default_max_tokens"] = int(params["max_tokens"])
        if params.get("temperature") is not None:
            values["default_temperature"] = float(params["temperature"])
        upsert(
            ModelAlias, {"slug": _slug(name)[:100] or f"model-{position}"}, values, report, "alias"
        )
    _fallbacks(config, report)
    _budget(env, report)
    return report


def _fallbacks(config: Mapping[str, Any], report: Report) -> None:
    groups = []
    for section in ("router_settings", "litellm_settings"):
        settings = config.get(section)
        if isinstance(settings, dict) and isinstance(settings.get("fallbacks"), list):
            groups.extend(settings["fallbacks"])
    for group in groups:
        if not isinstance(group, dict):
            raise BootstrapError("fallbacks must be a list of {model: [fallbacks]} maps.")
        for source, targets in group.items():
            alias = ModelAlias.objects.filter(slug=_slug(str(source))).first()
            if alias is None:
                raise BootstrapError(f"fallbacks name unknown model {source!r}.")
            for position, target in enumerate(targets or []):
                fallback = ModelAlias.objects.filter(slug=_slug(str(target))).first()
                if fallback is None:
                    raise BootstrapError(f"fallbacks of {source!r} name unknown model {target!r}.")
                upsert(
                    AliasFallback,
                    {"alias": alias, "fallback": fallback},
                    {"position": position},
                    report,
                    "fallback",
                )

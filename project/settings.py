"""Settings of the demo and test project.

Everything is read from the environment (django-environ); `.env.example` lists every
variable. With nothing set, the project runs on SQLite, the in-memory channel layer and
the local-memory cache.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import django
import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env(
    DEBUG=(bool, True),
    ALLOWED_HOSTS=(list, ["127.0.0.1", "localhost", "[::1]", "testserver"]),
    CSRF_TRUSTED_ORIGINS=(list, []),
    LLM_ENABLE_CACHING=(bool, False),
    LLM_CACHE_TTL=(int, 3600),
    LLM_CACHE_SIZE=(int, 1000),
    LLM_LOG_PROMPTS=(bool, False),
    # The demo lists the models outside your plan, marked locked (the app's default: hidden).
    LLM_SHOW_LOCKED_MODELS=(bool, True),
    LLM_DROP_UNSUPPORTED_TOOLS=(bool, False),
)
env_file = BASE_DIR / ".env"
if env_file.exists():
    environ.Env.read_env(env_file)

DEBUG = env("DEBUG")
SECRET_KEY = env("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set: with DEBUG=False the project does not start on the demo key. "
            "Set SECRET_KEY to a long random string (see .env.example)."
        )
    SECRET_KEY = "django-insecure-demo-key-change-me-in-production"
ALLOWED_HOSTS = env("ALLOWED_HOSTS")
CSRF_TRUSTED_ORIGINS = env("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "daphne",  # makes `runserver` serve the ASGI application
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "adrf",
    "drf_spectacular",
    "channels",
    "llm_integration",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "project.middleware.ServedByMiddleware",
]

ROOT_URLCONF = "project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

ASGI_APPLICATION = "project.asgi.application"
WSGI_APPLICATION = None

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Concurrent writers (several requests settling usage at once) wait instead of failing.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            # WAL: readers never wait for the writer; NORMAL: no fsync per commit.
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # A file, not shared-cache memory, so that concurrent test threads wait for the
    # write lock (busy timeout) instead of failing with "database table is locked";
    # beside the database it stands in for (db.sqlite3: test_db.sqlite3).
    database = Path(DATABASES["default"]["NAME"])
    DATABASES["default"].setdefault("TEST", {}).setdefault(
        "NAME", str(database.with_name(f"test_{database.name}"))
    )
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", 60)
    DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)

REDIS_URL = env("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env("CACHE_KEY_PREFIX", default="llm"),
            # redis-py waits forever by default: an unreachable Redis (no refusal, no
            # answer) would hold the event loop. The gateway's guard then leaves the cache
            # alone for CACHE_RETRY_INTERVAL (see README, "Redis down").
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
    if "LLM_CACHE_SIZE" in env.ENVIRON:
        warnings.warn(
            "LLM_CACHE_SIZE bounds the local-memory response cache; with REDIS_URL the "
            "cached answers live in Redis, bounded by its maxmemory setting.",
            stacklevel=1,
        )
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "llm-integration",
            "OPTIONS": {"MAX_ENTRIES": 10_000},
        },
        # Cached answers in a cache of their own, LLM_CACHE_SIZE of them at most: they
        # never push rate-limit counters or circuits out of the default cache.
        "responses": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "llm-responses",
            "OPTIONS": {"MAX_ENTRIES": env("LLM_CACHE_SIZE")},
        },
    }
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Production profile (DEBUG=False): HTTPS behind a proxy that sets X-Forwarded-Proto.
# `manage.py check --deploy` is clean with it (see README, Deployment).
if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
    SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=True)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGIN_URL = "/admin/login/"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "llm_integration.api.authentication.ApiKeyAuthentication",
        "llm_integration.api.authentication.BearerOrTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # ?format= is ours (CSV usage export), not DRF's renderer override.
    "URL_FORMAT_OVERRIDE": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "LLM gateway API",
    "DESCRIPTION": "Chat, models and usage (llm_integration), plus an OpenAI-compatible /v1.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
}

# Budget alerts mail ADMINS. Django 6 takes plain addresses and 6.1 configures mail
# with MAILERS; 5.2 LTS wants (name, address) pairs and EMAIL_BACKEND.
_admin_emails = env.list("ADMIN_EMAILS", default=[])
_email_backend = env(
    "EMAIL_BACKEND",  # development prints mail; production sends it (Django's SMTP default)
    default=f"django.core.mail.backends.{'console' if DEBUG else 'smtp'}.EmailBackend",
)
if django.VERSION >= (6, 0):
    ADMINS = _admin_emails
else:
    ADMINS = [("Admin", a) for a in _admin_emails]
if django.VERSION >= (6, 1):
    MAILERS = {"default": {"BACKEND": _email_backend}}
else:
    EMAIL_BACKEND = _email_backend

# The app's own settings: one dict, documented defaults in llm_integration/conf.py.
LLM_INTEGRATION = {
    "CACHE_ENABLED": env("LLM_ENABLE_CACHING"),
    "CACHE_TTL": env("LLM_CACHE_TTL"),
    "RESPONSE_CACHE_BACKEND": None if REDIS_URL else "responses",
    "LOG_PROMPTS": env("LLM_LOG_PROMPTS"),
    "SHOW_LOCKED_MODELS": env("LLM_SHOW_LOCKED_MODELS"),
    "DROP_UNSUPPORTED_TOOLS": env("LLM_DROP_UNSUPPORTED_TOOLS"),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "structured": {
            "()": "llm_integration.logging.StructuredFormatter",
        },
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "structured"},
    },
    "loggers": {
        "llm_integration": {"handlers": ["console"], "level": env("LLM_LOG_LEVEL", default="INFO")},
    },
}

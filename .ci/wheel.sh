#!/usr/bin/env bash
# The app as a host installs it: build the wheel, install it alone (with its declared
# dependencies, nothing from this checkout) into a fresh virtualenv, import every module
# and run Django's checks in a bare project that adds it to INSTALLED_APPS.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python -m pip wheel --no-deps -q -w "$work/dist" .
python -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$work"/dist/*.whl
mkdir "$work/host"
cat > "$work/host/host_settings.py" <<'PY'
SECRET_KEY = "wheel-check"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "channels",
    "llm_integration",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "host.sqlite3"}}
ROOT_URLCONF = "host_settings"
STATIC_URL = "static/"
USE_TZ = True
urlpatterns = []
PY
cd "$work/host"
export DJANGO_SETTINGS_MODULE=host_settings PYTHONPATH="$work/host"
"$work/venv/bin/python" - <<'PY'
import importlib, pkgutil
import django

django.setup()
import llm_integration

names = [m.name for m in pkgutil.walk_packages(llm_integration.__path__, "llm_integration.")]
for name in names:
    importlib.import_module(name)
print(f"imported {len(names)} modules of llm_integration from {llm_integration.__file__}")
PY
"$work/venv/bin/django-admin" check
"$work/venv/bin/django-admin" migrate -v0
echo "wheel: installs alone, imports, checks and migrates"

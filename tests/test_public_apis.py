"""The app uses only the public APIs of the libraries it stands on.

A private attribute (``obj._name``) of Django, DRF, Channels, aiohttp, httpx, tenacity,
asgiref or the standard library breaks on any upgrade. This reads the app's source and
fails on any underscore-prefixed attribute read or written (also through ``getattr``,
``setattr`` and ``hasattr``) that is not the app's own: a name the app itself defines,
on an object that does not come straight from one of those packages. Django's documented
``Model._meta`` API is public despite its name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import llm_integration

PACKAGE = Path(llm_integration.__file__).parent
FOREIGN = (
    "django",
    "rest_framework",
    "channels",
    "aiohttp",
    "httpx",
    "httpx2",
    "tenacity",
    "asgiref",
    "concurrent",
    "asyncio",
    "threading",
    "redis",
    "anthropic",
)
DOCUMENTED = {"_meta"}  # https://docs.djangoproject.com/en/stable/ref/models/meta/


def sources() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts]


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in DOCUMENTED


def own_names() -> set[str]:
    """Every underscore name the app defines: functions, classes, attributes, variables."""
    names: set[str] = set()
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.keyword) and node.arg:
                names.add(node.arg)  # e.g. QuerySet.annotate(_name=...)
    return {name for name in names if private(name)}


def foreign_names(tree: ast.Module) -> set[str]:
    """Names a module binds to something imported from the foreign packages."""
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in FOREIGN:
                    bound.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in FOREIGN:
                bound.update(alias.asname or alias.name for alias in node.names)
    return bound


def base_name(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute | ast.Call | ast.Subscript):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def violations() -> list[str]:
    ours = own_names()
    found = []
    for path in sources():
        tree = ast.parse(path.read_text())
        foreign = foreign_names(tree)
        for node in ast.walk(tree):
            target = name = None
            if isinstance(node, ast.Attribute) and private(node.attr):
                target, name = node.value, node.attr
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
                and private(node.args[1].value)
            ):
                target, name = node.args[0], node.args[1].value
            if target is None:
                continue
            base = base_name(target)
            if base in ("self", "cls") and name in ours:
                continue
            if name in ours and base not in foreign:
                continue
            where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
            found.append(f"{where}: {ast.unparse(node)[:80]}")
    return found


def test_no_private_attribute_of_another_package_is_used():
    assert violations() == []


def test_the_check_catches_what_it_is_for():
    bad = PACKAGE / "_public_api_probe.py"
    bad.write_text(
        "from concurrent.futures import ThreadPoolExecutor\n"
        "pool = ThreadPoolExecutor(2)\n"
        "size = pool._max_workers\n"
        "def f(request):\n"
        "    request._not_authenticated()\n"
        "    return getattr(request, '_authenticator', None)\n"
    )
    try:
        found = violations()
    finally:
        bad.unlink()
    assert sorted(line.split(": ", 1)[1] for line in found) == [
        "getattr(request, '_authenticator', None)",
        "pool._max_workers",
        "request._not_authenticated",
    ]


#: A function's insides: reading or rebuilding them re-implements another package.
FUNCTION_INTERNALS = {"__code__", "__globals__", "__closure__", "__defaults__", "__kwdefaults__"}


def test_no_function_is_rebuilt_from_its_insides():
    found = [
        f"{path.relative_to(PACKAGE)}:{node.lineno} {node.attr}"
        for path in sources()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr in FUNCTION_INTERNALS
    ]
    assert found == []

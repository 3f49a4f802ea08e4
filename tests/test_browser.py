"""The chat page in a real headless Chromium (Debian's): log in, pick a model, send,
watch tokens stream in, stop, see usage and cost; errors are shown clearly."""

from __future__ import annotations

import os
import shutil

import pytest

from llm_integration.models import UsageRecord
from tests.factories import (
    ModelAliasFactory,
    PlanEntitlementFactory,
    PlanFactory,
    ProviderFactory,
)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason="needs Debian's Chromium: apt-get install -y chromium (.ci/run installs it)",
)
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def page(live_server_url, django_user_model, tmp_path, settings):
    settings.LLM_INTEGRATION = {"SHOW_LOCKED_MODELS": True}
    slow = ProviderFactory(name="slow-dummy", kind="dummy", options={"delay": 0.15})
    ModelAliasFactory(slug="default", label="Echo", provider=slow, sort_order=0)
    locked = ModelAliasFactory(
        slug="premium", label="Premium", provider__kind="dummy", sort_order=1
    )
    PlanEntitlementFactory(plan=PlanFactory(slug="pro"), alias=locked)
    django_user_model.objects.create_superuser("carol", "carol@example.com", "pw-for-carol")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM must not be
    # touched while it runs (rows are made above, checked after it closes).
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        page.goto(f"{live_server_url}/")
        page.fill("#id_username", "carol")
        page.fill("#id_password", "pw-for-carol")
        page.click("input[type=submit]")
        page.wait_for_url(f"{live_server_url}/")
        page.wait_for_selector("#status >> text=connected")
        # The dropdown fills from /api/v1/models asynchronously: wait for it, so a test
        # that edits it is not overwritten by the late answer.
        page.wait_for_selector("#model option[value=default]", state="attached")
        yield page
        if not page.is_closed():  # kept for a look: SCREENSHOT_DIR=... pytest tests/test_browser.py
            folder = os.environ.get("SCREENSHOT_DIR") or str(tmp_path)
            page.screenshot(path=os.path.join(folder, "chat.png"))
        browser.close()


@pytest.mark.django_db(transaction=True)
def test_send_stream_and_stop(page):
    options = page.locator("#model option")
    assert options.all_inner_texts() == ["Echo · dummy", "🔒 Premium · dummy (not in your plan)"]
    assert page.locator("#model option[value=premium]").is_disabled()
    assert page.inner_text("#badge") == "dummy"

    page.select_option("#model", "default")
    page.fill("#prompt", "tell me a story")
    page.click("#send")
    answer = page.locator(".assistant").last
    # Tokens arrive one by one: the answer grows while it streams.
    page.wait_for_function(
        "document.querySelector('.assistant').textContent.split(' ').length >= 2"
    )
    partial = answer.inner_text()
    assert partial and partial != "This is the dummy model (echo). You said: tell me a story"
    assert page.locator("#stop").is_enabled()
    page.click("#stop")
    page.wait_for_selector(".usage >> text=stopped")
    meta = page.locator(".usage").last.inner_text()
    assert "completion tokens" in meta and "$" in meta
    assert page.locator("#send").is_enabled() and page.locator("#stop").is_disabled()

    page.fill("#prompt", "and now in full")
    page.click("#send")
    page.wait_for_selector(".usage >> nth=1 >> text=completion tokens", timeout=15000)
    assert page.locator(".assistant").last.inner_text() == (
        "This is the dummy model (echo). You said: and now in full"
    )


@pytest.mark.django_db(transaction=True)
def test_errors_are_explained(page):
    # A model removed after the page loaded: the server refuses it with model_not_found.
    page.evaluate("""() => {
        const o = document.createElement('option');
        o.value = 'gone'; o.textContent = 'Gone';
        document.querySelector('#model').appendChild(o);
    }""")
    page.select_option("#model", "gone")
    page.fill("#prompt", "hello?")
    page.click("#send")
    error = page.wait_for_selector(".error")
    assert "This model does not exist" in error.inner_text()
    assert "[model_not_found]" in error.inner_text()


@pytest.mark.django_db(transaction=True)
def test_usage_of_stopped_answers_is_recorded(page):
    page.fill("#prompt", "stop me")
    page.click("#send")
    page.wait_for_function(
        "document.querySelector('.assistant').textContent.split(' ').length >= 2"
    )
    page.click("#stop")
    page.wait_for_selector(".usage >> text=stopped")
    page.close()
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "1"  # the browser's loop still runs here
    try:
        record = UsageRecord.objects.get()
    finally:
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]
    assert record.status == "cancelled" and record.streamed and record.completion_tokens >= 2


@pytest.mark.django_db(transaction=True)
def test_the_page_keeps_a_conversation_and_shows_its_context(page):
    """Only the new message goes out; the gateway keeps the conversation, and the gauge
    shows how full its context is. "New chat" starts another."""
    for n, text in enumerate(["first question", "second question"]):
        page.fill("#prompt", text)
        page.click("#send")
        page.wait_for_selector(f".usage >> nth={n} >> text=completion tokens", timeout=15000)
    assert " tokens · ok" in page.inner_text("#context")
    assert page.eval_on_selector("#gauge", "meter => meter.value") > 0
    page.click("#new")
    assert page.inner_text("#context") == "new conversation"
    assert page.locator(".msg").count() == 0
    page.fill("#prompt", "another topic")
    page.click("#send")
    page.wait_for_selector(".usage >> text=completion tokens", timeout=15000)
    page.close()
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "1"  # the browser's loop still runs here
    try:
        from llm_integration.models import Conversation

        kept = [
            [m.content for m in c.messages.order_by("position")]
            for c in Conversation.objects.order_by("created_at")
        ]
        conversations = list(UsageRecord.objects.values_list("conversation", flat=True))
    finally:
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]
    assert [m for m in kept[0] if "question" in m and "You said" not in m] == [
        "first question",
        "second question",
    ]
    assert len(kept) == 2 and kept[1][0] == "another topic"
    assert len(conversations) == 3 and all(conversations)


@pytest.fixture
def usage_month(db):
    from tests.test_admin_ops import month_of_usage

    return month_of_usage()


@pytest.mark.django_db(transaction=True)
def test_admin_dashboard_chart(usage_month, page, live_server_url, tmp_path):
    page.goto(f"{live_server_url}/admin/llm_integration/usagerecord/dashboard/")
    charts = page.locator("svg.llm-chart")
    assert charts.count() == 2
    assert page.locator("svg.llm-chart rect.bar").count() == 60
    box = charts.first.bounding_box()
    assert box and box["width"] > 300 and box["height"] > 50  # drawn, not just present
    assert "Top users" in page.inner_text("#content")
    folder = os.environ.get("SCREENSHOT_DIR") or str(tmp_path)
    page.screenshot(path=os.path.join(folder, "dashboard.png"), full_page=True)

"""``GET /api/v1/usage``'s query parameters are checked before anything is answered, in
JSON and CSV alike: a wrong one is a 400 naming it, never a 500, never a CSV stream
that starts and then fails; a failure after the export has started ends it."""

from __future__ import annotations

import csv
import io
import logging

import pytest
from asgiref.sync import sync_to_async
from rest_framework.authtoken.models import Token

from llm_integration.api import views
from llm_integration.api.views import user_id_range
from llm_integration.models import UsageRecord
from tests.api.test_rest_api import client_for, error_of
from tests.factories import UsageRecordFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

FORMATS = {"json": "", "csv": "format=csv&"}

#: (query, the parameter at fault); each URL-encoded as a client sends it.
BAD = [
    ("user=%C2%B2", "user"),  # "²": str.isdigit() says yes, int() says no
    ("user=%EF%BC%91", "user"),  # a full-width 1
    ("user=99999999999999999999999", "user"),
    (f"user={2**63}", "user"),
    ("user=" + "9" * 5000, "user"),  # past int()'s digit limit
    ("user=-1", "user"),
    ("user=1.0", "user"),
    ("user=1%00", "user"),
    ("since=2026-02-30", "since"),
    ("until=2026-13-01", "until"),
    ("since=2026-02-28T24:30", "since"),
    ("since=2026-01-01T10:00%2B25:00", "since"),  # an offset beyond a day
    ("until=9999-12-31T23:00-05:00", "until"),  # past year 9999 in UTC
    ("since=0001-01-01T00:00%2B05:00", "since"),  # before year 1 in UTC
    ("since=%D9%A2%D9%A0%D9%A2%D9%A6-01-01", "since"),  # Arabic-Indic digits
    ("since=yesterday", "since"),
    ("until=2026-01-01&since=2026-02-30", "since"),
]


@pytest.fixture
async def staff():
    user = await sync_to_async(UserFactory)(username="auditor", is_staff=True)
    return client_for((await Token.objects.acreate(user=user)).key)


async def body_of(response) -> bytes:
    """The whole answer; a stream is read to its end (it must have one)."""
    if response.streaming:
        return b"".join([chunk async for chunk in response.streaming_content])
    return response.content


@pytest.mark.parametrize("kind", FORMATS)
@pytest.mark.parametrize(("query", "param"), BAD)
async def test_a_bad_parameter_is_a_400_naming_it(staff, kind, query, param):
    response = await staff.get(f"/api/v1/usage?{FORMATS[kind]}{query}")
    await body_of(response)
    assert response.status_code == 400 and not response.streaming
    error = error_of(response)
    assert error["code"] == "invalid_request"
    assert error["message"].startswith(f"{param}: ")


async def test_an_unknown_format_is_a_400(staff):
    response = await staff.get("/api/v1/usage?format=xml")
    assert response.status_code == 400
    assert error_of(response)["message"].startswith("format: ")


@pytest.mark.parametrize("kind", FORMATS)
async def test_an_id_past_the_databases_integer_is_refused_not_sent(staff, kind):
    """2**31: beyond PostgreSQL's ``integer`` key (a 400), within SQLite's (no such
    user: 404 in JSON, an empty export in CSV)."""
    response = await staff.get(f"/api/v1/usage?{FORMATS[kind]}user={2**31}")
    body = await body_of(response)
    if user_id_range()[1] < 2**31:
        assert response.status_code == 400
        assert error_of(response)["message"].startswith("user: ")
    elif kind == "json":
        assert response.status_code == 404
    else:
        assert response.status_code == 200
        assert body.decode().splitlines() == [",".join(views.CSV_FIELDS)]


@pytest.mark.parametrize("kind", FORMATS)
async def test_good_parameters_still_work(staff, kind):
    user = await sync_to_async(UserFactory)(username="alice")
    await sync_to_async(UsageRecordFactory)(user=user, alias="chat")
    query = f"user={user.pk}&since=2000-02-29&until=9999-12-31T12:00%2B01:00"
    response = await staff.get(f"/api/v1/usage?{FORMATS[kind]}{query}")
    body = await body_of(response)
    assert response.status_code == 200
    if kind == "json":
        assert response.json()["month"]["requests"] == 1
    else:
        table = list(csv.DictReader(io.StringIO(body.decode())))
        assert [(row["user_id"], row["alias"]) for row in table] == [(str(user.pk), "chat")]


async def test_others_usage_stays_staff_only(staff):
    user = await sync_to_async(UserFactory)(username="bob")
    client = client_for((await Token.objects.acreate(user=user)).key)
    for query in ("user=%C2%B2", "format=csv", "format=csv&since=2026-02-30"):
        response = await client.get(f"/api/v1/usage?{query}")
        assert response.status_code == 403, query
    response = await client.get("/api/v1/usage?since=2026-02-30")
    assert response.status_code == 400


async def test_a_failure_after_the_export_started_cuts_it_off(staff, monkeypatch, caplog):
    """The 200 and the first rows have gone out: the failure is logged and the response
    is cut off (the client's download fails: it never looks complete, never hangs)."""
    await sync_to_async(UsageRecordFactory.create_batch)(2, alias="chat")
    real, calls = views.run_db, []

    async def failing_second_page(function, *args):
        calls.append(args)
        if len(calls) > 1:
            raise OverflowError("the database refused the query")
        return await real(function, *args)

    monkeypatch.setattr(views, "run_db", failing_second_page)
    with caplog.at_level(logging.ERROR, logger="llm_integration.api"):
        response = await staff.get("/api/v1/usage?format=csv")
        rows = []
        with pytest.raises(OverflowError):
            async for piece in response.streaming_content:
                rows.append(piece)
    assert response.status_code == 200 and len(calls) == 2
    assert len(list(csv.DictReader(io.StringIO(b"".join(rows).decode())))) == 2
    assert [r.message for r in caplog.records] == ["llm.usage_export_failed"]
    assert await UsageRecord.objects.acount() == 2

"""Both usage exports (admin's action and ``GET /api/v1/usage?format=csv``) write text
that a spreadsheet shows as text: a cell that would start a formula gets a leading
``'``; plain numbers, negative ones included, stay numbers (CONTRACT §6)."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.urls import reverse

from llm_integration.models import UsageRecord
from llm_integration.services.accounting.usage import CSV_FIELDS, PLAIN_NUMBER, csv_cell
from tests.factories import UsageRecordFactory, UserFactory

#: What a spreadsheet reads as the start of a formula.
STARTS = ("=", "+", "-", "@", "\t", "\r")
#: The export's text columns, each filled with a formula (short enough for every column).
TEXT_FIELDS = (
    "request_id",
    "plan",
    "alias",
    "provider",
    "upstream_model",
    "status",
    "error_type",
    "finish_reason",
)


def formula(start: str) -> str:
    return f'{start}HYPERLINK("http://evil/","x")'[:16]


def make_records() -> dict[str, dict[str, str]]:
    """A record per formula start, every text column starting with it, and one whose
    text columns and cost are negative numbers: {request_id: the text columns sent}."""
    user = UserFactory()
    sent = {}
    for start in STARTS:
        fields = {name: formula(start) for name in TEXT_FIELDS}
        fields["request_id"] = f"{start}req-{STARTS.index(start)}"
        UsageRecordFactory(user=user, **fields)
        sent[fields["request_id"]] = fields
    numbers = {name: "-3" for name in TEXT_FIELDS} | {"request_id": "-1.5", "status": "+2"}
    UsageRecordFactory(user=user, cost_usd=Decimal("-1.5"), **numbers)
    sent["-1.5"] = numbers
    return sent


def check(text: str, sent: dict[str, dict[str, str]]) -> None:
    table = list(csv.DictReader(io.StringIO(text)))
    assert list(table[0]) == CSV_FIELDS
    assert len(table) == len(sent)
    for row in table:
        for value in row.values():  # nothing a spreadsheet would run
            assert not value.startswith(STARTS) or PLAIN_NUMBER.fullmatch(value), value
        request_id = row["request_id"].removeprefix("'")
        for name, value in sent[request_id].items():
            expected = value if PLAIN_NUMBER.fullmatch(value) else "'" + value
            assert row[name] == expected, (name, row[name])
    numbers = next(row for row in table if row["request_id"] == "-1.5")
    assert (numbers["cost_usd"], numbers["alias"], numbers["status"]) == ("-1.5", "-3", "+2")


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ('=HYPERLINK("http://evil/","x")', '\'=HYPERLINK("http://evil/","x")'),
        ("+1+1", "'+1+1"),
        ("-2+3", "'-2+3"),
        ("-", "'-"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\r=1", "'\r=1"),
        ("-1.5", "-1.5"),
        ("-3", "-3"),
        ("+2", "+2"),
        ("-1e5", "-1e5"),
        ("-.5", "-.5"),
        ("-1,5", "'-1,5"),
        ("stop", "stop"),
        ("", ""),
        (-3, -3),
        (None, None),
    ],
)
def test_a_cell_that_starts_a_formula_is_text(value, cell):
    assert csv_cell(value) == cell


@pytest.mark.django_db
def test_the_admin_export_neutralises_formulas(admin_client):
    sent = make_records()
    ids = list(UsageRecord.objects.values_list("pk", flat=True))
    response = admin_client.post(
        reverse("admin:llm_integration_usagerecord_changelist"),
        {"action": "export_csv", "_selected_action": ids},
    )
    assert response.status_code == 200 and response["Content-Type"] == "text/csv"
    check(b"".join(response.streaming_content).decode(), sent)


@pytest.mark.django_db(transaction=True)
async def test_the_api_export_neutralises_formulas(async_client, admin_user):
    sent = await sync_to_async(make_records)()
    await sync_to_async(async_client.force_login)(admin_user)
    response = await async_client.get("/api/v1/usage?format=csv")
    assert response.status_code == 200 and response["Content-Type"] == "text/csv"
    check(b"".join([chunk async for chunk in response.streaming_content]).decode(), sent)

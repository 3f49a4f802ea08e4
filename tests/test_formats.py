"""The wire formats: each request's shape declared once (its serializer refuses what it
does not know, by name, and documents the request), and the vocabulary the Anthropic
entrance and the Anthropic adapter share read the same both ways."""

from __future__ import annotations

import pytest
from rest_framework.exceptions import ValidationError

from llm_integration import exceptions as exc
from llm_integration.adapters.anthropic import STOP_REASONS, TOOL_CHOICES
from llm_integration.adapters.untrusted import FINISH_REASONS, finish_reason
from llm_integration.formats import anthropic, openai, rest, ws
from llm_integration.services.policy.rules import Labels


def test_every_finish_reason_goes_to_anthropic_and_comes_back_the_same():
    assert set(STOP_REASONS) == FINISH_REASONS
    for ours, theirs in STOP_REASONS.items():
        assert finish_reason(theirs, "anthropic") == ours


def test_anthropic_tool_choices_read_backwards_are_the_adapters():
    for theirs in ("auto", "any", "none"):
        ask = anthropic.parse(
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"name": "f", "input_schema": {"type": "object"}}],
                "tool_choice": {"type": theirs},
            }
        )
        assert TOOL_CHOICES[ask.options["tool_choice"]] == theirs


def test_rest_parse_takes_the_documented_fields_and_refuses_others_by_name():
    ask = rest.parse({"message": "hi", "tags": "a,b", "stream": True, "model": None})
    assert ask.messages == [{"role": "user", "content": "hi"}]
    assert ask.stream and ask.model is None and ask.labels.tags == ("a", "b")
    with pytest.raises(exc.UnsupportedParameter) as refused:
        rest.parse({"message": "hi", "top_k": 3})
    assert refused.value.param == "top_k"
    with pytest.raises(ValidationError) as typed:
        rest.parse({"message": "hi", "max_tokens": "100"})
    assert "max_tokens" in typed.value.detail
    with pytest.raises(ValidationError):
        rest.parse({"message": "hi", "messages": [{"role": "user", "content": "x"}]})


def test_the_body_labels_win_over_the_headers():
    headers = Labels.parse("from-header", ["b"])
    ask = rest.parse({"message": "hi", "tags": ["a"]}, headers)
    assert ask.labels == Labels("from-header", ("a",))


def test_openai_parse_maps_developer_and_usage_in_streams():
    ask = openai.parse_completion(
        {
            "model": "m",
            "messages": [{"role": "developer", "content": "be brief"}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "logprobs": False,  # asks for what the gateway does anyway
            "max_completion_tokens": 9,
        }
    )
    assert ask.messages[0]["role"] == "system" and ask.include_usage and ask.max_tokens == 9
    with pytest.raises(exc.UnsupportedParameter) as refused:
        openai.parse_completion({"model": "m", "messages": [], "logprobs": True})
    assert refused.value.param == "logprobs"


def test_anthropic_parse_names_its_fields():
    with pytest.raises(ValidationError) as missing:
        anthropic.parse({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert "max_tokens" in missing.value.detail
    with pytest.raises(exc.UnsupportedParameter) as refused:
        anthropic.parse({"model": "m", "max_tokens": 5, "messages": [], "mcp_servers": []})
    assert refused.value.param == "mcp_servers"


def test_ws_frame_parse_refuses_unknown_fields():
    with pytest.raises(exc.UnsupportedParameter):
        ws.parse_chat({"type": "chat", "message": "hi", "seed": 1})
    assert ws.parse_chat({"type": "chat", "message": "hi"}).stream


@pytest.mark.django_db
def test_the_schema_documents_each_request_from_its_format(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("schema"))
    schema = client.get("/api/schema/", headers={"Accept": "application/json"}).json()
    parts = schema["components"]["schemas"]
    assert {"max_tokens", "system", "tool_choice"} <= set(parts["MessagesRequest"]["properties"])
    assert "stream_options" in parts["ChatCompletionRequest"]["properties"]
    messages = parts["ChatRequest"]["properties"]["messages"]
    assert messages["items"]["$ref"].endswith("/Message")

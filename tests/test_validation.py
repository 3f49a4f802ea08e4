"""Input validation (400/413), context-window fitting and entitlements (403/404)."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async

from llm_integration import exceptions as exc
from llm_integration.adapters import Message
from llm_integration.services.chat.validation import check_prompt_size, validate
from llm_integration.services.memory.context import fit_to_window
from tests.factories import (
    ModelAliasFactory,
    PlanEntitlementFactory,
    PlanFactory,
    ProviderFactory,
    SubscriptionFactory,
    UserFactory,
)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"messages": []}, "non-empty list"),
        ({"messages": 42}, "non-empty list"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "role must be one of"),
        ({"messages": [{"role": "user", "content": 3}]}, "content must be text"),
        ({"messages": ["hi"]}, "must be an object"),
        ({"messages": [{"role": "user", "content": "   "}]}, "non-empty user message"),
        ({"messages": [{"role": "system", "content": "x"}]}, "non-empty user message"),
        ({"messages": "hi", "temperature": 3}, "between 0 and 2"),
        ({"messages": "hi", "temperature": "hot"}, "must be a number"),
        ({"messages": "hi", "temperature": True}, "must be a number"),
        ({"messages": "hi", "max_tokens": 0}, "at least 1"),
        ({"messages": "hi", "max_tokens": 1.5}, "at least 1"),
        ({"messages": "hi", "stop": [1]}, "stop must be"),
        ({"messages": "hi", "system_prompt": 5}, "system_prompt must be text"),
    ],
)
def test_invalid_input_is_a_400_with_a_clear_message(kwargs, message):
    messages = kwargs.pop("messages")
    with pytest.raises(exc.InvalidRequest, match=message) as info:
        validate(messages, **kwargs)
    assert info.value.status_code == 400


def test_valid_input_normalises():
    request = validate(
        [
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            }
        ],
        system_prompt="Be brief.",
        temperature=0,
        max_tokens=5,
        stop="END",
    )
    assert request.messages == (Message("system", "Be brief."), Message("user", "ab"))
    assert (request.temperature, request.max_tokens, request.stop) == (0.0, 5, ("END",))


def test_prompt_over_the_limit_is_413(settings):
    settings.LLM_INTEGRATION = {"MAX_PROMPT_TOKENS": 50}
    assert check_prompt_size(validate("hello"), model="gpt-4o") < 50
    with pytest.raises(exc.PromptTooLarge) as info:
        check_prompt_size(validate("word " * 100), model="gpt-4o")
    assert info.value.status_code == 413
    with pytest.raises(exc.PromptTooLarge):  # cheap bound, no tokenizer run
        check_prompt_size(validate("x" * 10_000), model="gpt-4o")


def conversation(turns: int) -> tuple[Message, ...]:
    messages = [Message("system", "You are terse.")]
    for i in range(turns):
        messages += [
            Message("user", f"question {i} " + "lorem " * 20),
            Message("assistant", f"answer {i} " + "ipsum " * 20),
        ]
    return (*messages, Message("user", "final question"))


def test_history_is_trimmed_oldest_first_keeping_system_and_latest():
    messages = conversation(10)
    fitted, tokens = fit_to_window(messages, model="gpt-4o", context_window=300, max_tokens=100)
    assert tokens <= 200
    assert fitted[0] == messages[0] and fitted[-1] == messages[-1]
    assert len(fitted) < len(messages)
    kept = fitted[1:-1]
    assert kept == messages[len(messages) - 1 - len(kept) : -1]  # the newest turns survive


def test_a_tool_call_is_dropped_with_its_results_and_the_current_tool_loop_stays():
    from llm_integration.adapters import ToolCall

    def call(n: int) -> ToolCall:
        return ToolCall(f"c{n}", "lookup", '{"q": "' + "lorem " * 10 + '"}')

    old = [
        Message("user", "first " + "ipsum " * 30),
        Message("assistant", "", (call(1),)),
        Message("tool", "result one " + "ipsum " * 30, tool_call_id="c1"),
        Message("assistant", "done " + "ipsum " * 30),
    ]
    current = [
        Message("user", "now this"),
        Message("assistant", "", (call(2),)),
        Message("tool", "result two", tool_call_id="c2"),
    ]
    messages = (Message("system", "sys"), *old, *current)
    fitted, tokens = fit_to_window(messages, model="gpt-4o", context_window=250, max_tokens=100)
    assert tokens <= 150
    assert fitted[0].role == "system" and list(fitted[-3:]) == current
    calls = {c.id for m in fitted for c in m.tool_calls}
    results = {m.tool_call_id for m in fitted if m.role == "tool"}
    assert len(fitted) < len(messages)
    assert calls == results  # never a call without its result, or a result without its call


def test_fitting_conversation_is_untouched():
    messages = conversation(1)
    assert (
        fit_to_window(messages, model="gpt-4o", context_window=8000, max_tokens=100)[0] == messages
    )


def test_impossible_fit_is_413_and_bad_max_tokens_400():
    messages = (Message("system", "rule " * 300), Message("user", "hi"))
    with pytest.raises(exc.ContextTooLong) as info:
        fit_to_window(messages, model="gpt-4o", context_window=200, max_tokens=50)
    assert (info.value.status_code, info.value.code) == (413, "context_length_exceeded")
    with pytest.raises(exc.InvalidRequest, match="context window"):
        fit_to_window(messages, model="gpt-4o", context_window=200, max_tokens=200)


@pytest.mark.django_db(transaction=True)
async def test_upstream_receives_the_trimmed_conversation(gateway, openai_fake, api_key_env):
    provider = await sync_to_async(ProviderFactory)(
        kind="openai", base_url=openai_fake.base_url, api_key_env=api_key_env
    )
    await sync_to_async(ModelAliasFactory)(
        slug="small", provider=provider, upstream_model="gpt-4o", context_window=300
    )
    messages = [m.as_dict() for m in conversation(10)]
    await gateway.chat(model="small", messages=messages, max_tokens=100)
    sent = openai_fake.requests[-1].body["messages"]
    assert sent[0] == messages[0] and sent[-1] == messages[-1] and len(sent) < len(messages)


@pytest.mark.django_db(transaction=True)
async def test_entitlements(gateway, settings):
    dummy = await sync_to_async(ProviderFactory)(kind="dummy")
    await sync_to_async(ModelAliasFactory)(slug="open", provider=dummy)
    premium = await sync_to_async(ModelAliasFactory)(slug="premium", provider=dummy)
    pro = await sync_to_async(PlanFactory)(slug="pro")
    await sync_to_async(PlanFactory)(slug="free")
    await sync_to_async(PlanEntitlementFactory)(plan=pro, alias=premium)
    free_user = await sync_to_async(UserFactory)()
    pro_user = await sync_to_async(UserFactory)()
    await sync_to_async(SubscriptionFactory)(user=pro_user, plan=pro)

    assert (await gateway.chat(user=free_user, model="open", messages="hi")).answer
    with pytest.raises(exc.ModelNotAllowed) as info:
        await gateway.chat(user=free_user, model="premium", messages="hi")
    assert info.value.status_code == 403
    assert (await gateway.chat(user=pro_user, model="premium", messages="hi")).answer
    # The default plan is a setting: make "pro" the default and the free user gets in.
    settings.LLM_INTEGRATION = {"DEFAULT_PLAN": "pro"}
    assert (await gateway.chat(user=free_user, model="premium", messages="hi")).answer
    with pytest.raises(exc.ModelNotFound):
        await gateway.chat(user=pro_user, model="absent", messages="hi")

"""Images in messages: OpenAI ``image_url`` parts from the openai SDK (and Anthropic
image blocks from the anthropic SDK) reaching each upstream in its own format, the
vision flag of aliases, and the size limits (413)."""

from __future__ import annotations

import base64

import anthropic
import openai
import pytest
from rest_framework.authtoken.models import Token

from llm_integration.models import AliasFallback, ModelAlias, UsageRecord
from tests.api.conftest import KINDS
from tests.factories import ModelAliasFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="  # noqa: E501  (a 1x1 PNG)
DATA_URL = f"data:image/png;base64,{PNG}"
LINK = "https://images.example.com/cat.jpg"


@pytest.fixture(params=KINDS)
def upstream(request, alias_on):
    model = "llava" if request.param == "ollama" else None
    fields = {"upstream_model": model} if model else {}
    fake = alias_on(request.param, "vision", supports_vision=True, **fields)
    return request.param, fake


@pytest.fixture
def token(db):
    return Token.objects.create(user=UserFactory()).key


@pytest.fixture
def client(live_server_url, token):
    return openai.OpenAI(base_url=f"{live_server_url}/v1", api_key=token, max_retries=0)


def sent(fake) -> dict:
    return [r for r in fake.requests if r.method == "POST"][-1].body


def question(*images: dict) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": "text", "text": "What is in these?"}, *images],
        }
    ]


def image(url: str, **extra) -> dict:
    return {"type": "image_url", "image_url": {"url": url, **extra}}


def test_a_data_url_image_reaches_each_upstream_in_its_format(client, upstream):
    kind, fake = upstream
    fake.push(text="A pixel.", prompt_tokens=90)
    answer = client.chat.completions.create(model="vision", messages=question(image(DATA_URL)))
    assert answer.choices[0].message.content == "A pixel."
    content = sent(fake)["messages"][0]
    if kind == "openai":
        assert content["content"] == [
            {"type": "text", "text": "What is in these?"},
            {"type": "image_url", "image_url": {"url": DATA_URL}},
        ]
    elif kind == "anthropic":
        assert content["content"] == [
            {"type": "text", "text": "What is in these?"},
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/png", "data": PNG},
            },
        ]
    else:
        assert content == {"role": "user", "content": "What is in these?", "images": [PNG]}
    assert UsageRecord.objects.get().prompt_tokens == 90  # the provider's count


def test_an_image_link_goes_to_upstreams_that_take_links(client, upstream):
    kind, fake = upstream
    if kind == "ollama":
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="vision", messages=question(image(LINK)))
        assert info.value.body["code"] == "unsupported_content"
        assert info.value.body["param"] == "messages[0].content"
        return
    client.chat.completions.create(model="vision", messages=question(image(LINK)))
    part = sent(fake)["messages"][0]["content"][1]
    if kind == "openai":
        assert part == {"type": "image_url", "image_url": {"url": LINK}}
    else:
        assert part == {"type": "image", "source": {"type": "url", "url": LINK}}


def test_detail_is_passed_to_openai_and_refused_where_it_means_nothing(client, upstream):
    kind, fake = upstream
    messages = question(image(DATA_URL, detail="low"))
    if kind != "openai":
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="vision", messages=messages)
        assert info.value.body["param"] == "messages[0].content.image_url.detail"
        return
    client.chat.completions.create(model="vision", messages=messages)
    assert sent(fake)["messages"][0]["content"][1]["image_url"]["detail"] == "low"


def test_images_count_in_the_prompt_estimate_of_the_reservation(client, upstream):
    from llm_integration.adapters import Message
    from llm_integration.adapters.images import ImagePart
    from llm_integration.text.tokens import TOKENS_PER_IMAGE, count_message_tokens

    text = Message("user", "What is in these?")
    with_image = Message("user", "What is in these?", parts=("What is in these?", ImagePart(LINK)))
    assert (
        count_message_tokens([with_image], model="gpt-4o")
        - count_message_tokens([text], model="gpt-4o")
        == TOKENS_PER_IMAGE
    )


def test_a_model_without_vision_refuses_images_and_is_never_their_fallback(client, upstream):
    _kind, fake = upstream
    blind = ModelAliasFactory(slug="blind", provider__kind="dummy")
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="blind", messages=question(image(DATA_URL)))
    assert (info.value.body["code"], info.value.body["param"]) == ("unsupported_content", "images")

    AliasFallback.objects.create(alias=ModelAlias.objects.get(slug="vision"), fallback=blind)
    fake.push(mode="error", status=503)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="vision", messages=question(image(DATA_URL)))
    assert info.value.status_code == 503 and UsageRecord.objects.latest("id").alias == "vision"


@pytest.mark.parametrize(
    "limits,images,param",
    [
        ({"MAX_IMAGE_BYTES": 50}, [DATA_URL], "messages[0].content[1]"),
        ({"MAX_IMAGES": 2}, [DATA_URL] * 3, "messages[0].content[3]"),
        ({"MAX_REQUEST_IMAGE_BYTES": 100}, [DATA_URL] * 2, "messages[0].content[2]"),
    ],
)
def test_images_over_the_limits_are_413(client, upstream, settings, limits, images, param):
    settings.LLM_INTEGRATION = limits
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model="vision", messages=question(*(image(url) for url in images))
        )
    assert info.value.status_code == 413 and info.value.body["param"] == param
    assert not UsageRecord.objects.filter(status="ok").exists()


@pytest.mark.parametrize(
    "url,code",
    [
        ("data:image/png;base64,@@@not base64@@@", "invalid_request"),
        (f"data:image/tiff;base64,{PNG}", "unsupported_content"),
        ("ftp://example.com/a.png", "invalid_request"),
    ],
)
def test_a_bad_image_is_refused(client, upstream, url, code):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="vision", messages=question(image(url)))
    assert info.value.body["code"] == code


def test_images_only_in_user_messages(client, upstream):
    messages = [{"role": "system", "content": [image(DATA_URL)]}, *question()]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="vision", messages=messages)
    assert info.value.body["code"] == "unsupported_content"


def test_anthropic_image_blocks_through_the_messages_entrance(live_server_url, token, upstream):
    kind, fake = upstream
    client = anthropic.Anthropic(base_url=live_server_url, api_key=token, max_retries=0)
    blocks = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "text", "text": "What is this?"},
    ]
    client.messages.create(
        model="vision", max_tokens=20, messages=[{"role": "user", "content": blocks}]
    )
    content = sent(fake)["messages"][0]
    if kind == "openai":
        assert content["content"][0] == {"type": "image_url", "image_url": {"url": DATA_URL}}
    elif kind == "anthropic":
        assert content["content"] == blocks
    else:
        assert content["images"] == [PNG] and content["content"] == "What is this?"
    assert base64.b64decode(PNG).startswith(b"\x89PNG")

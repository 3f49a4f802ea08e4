"""The wire formats clients speak to the gateway: one module each, with a parse
(payload → ``ChatInput``, unknown fields refused by name) and a render (the chat
service's results and events → that format's answer or stream).

rest.py       ``POST /api/v1/chat`` (CONTRACT §4) and its server-sent events
openai.py     ``/v1`` chat completions, embeddings and models, in OpenAI's shapes
anthropic.py  ``/v1/messages`` and ``count_tokens``, in Anthropic's shapes
ws.py         the WebSocket's ``chat`` frame and the frames that answer it (CONTRACT §5)
inputs.py     ``ChatInput`` (what every parse returns) and ``Shape`` (a request's
              serializer, the one source of its fields)
streams.py    one stream helper for every HTTP entrance

The views only authenticate (through the host's DRF pipeline), call the service and
hand the result to their format.
"""

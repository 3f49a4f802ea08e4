"""The chat service: one path for every surface (REST, ``/v1``, WebSocket, admin).

gateway.py      the path, sync and async faces (achat, astream_chat, chat)
admission.py    which alias, for which plan; the request made ready for it
routing.py      candidates, fallbacks, circuits, limits, retries
reservation.py  the worst case held on the budgets before the call
settlement.py   one usage record per request, however it ends
embedding.py    embeddings on the same path
turns.py        a conversation's turn: what its context leaves out summarized
types.py, ids.py
"""

from ...adapters import ToolCallDelta
from ...adapters.thinking import ThinkingDelta
from .embedding import EmbeddingResult
from .gateway import Gateway, achat, aembed, astream_chat, chat, default_gateway
from .ids import new_request_id
from .types import ChatResult, ChatStream, Delta, Done, Outcome

__all__ = [
    "ChatResult",
    "ChatStream",
    "Delta",
    "Done",
    "EmbeddingResult",
    "Gateway",
    "Outcome",
    "ThinkingDelta",
    "ToolCallDelta",
    "achat",
    "aembed",
    "astream_chat",
    "chat",
    "default_gateway",
    "new_request_id",
]

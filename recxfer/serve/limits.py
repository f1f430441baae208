"""Small pure helpers behind the server's limits: echoing caller-supplied values
in error messages without letting them grow the message, and upper bounds on the
size of an answer in protobuf bytes (so a request whose answer cannot fit in
``max_message_bytes`` is refused before any search).

The sizes follow the protobuf wire format of ``recxfer.v1`` (field numbers < 16,
so every tag is one byte)::

    ScoredItem            {string item_id = 1; float score = 2;}
    RecommendResponse     {repeated ScoredItem items = 1; string model_version = 2;
                           UserKind user_kind = 3;}
    BatchRecommendResult  {oneof {RecommendResponse response = 1; RequestError error = 2;}}
    BatchRecommendResponse{repeated BatchRecommendResult results = 1; string model_version = 2;}

The packed layout (``repeated string item_ids = 4; repeated float scores = 5;``,
request ``packed``) takes at most ``field_bytes(id) + 4`` bytes per item plus two
short headers, never more than the legacy ``ScoredItem`` it replaces
(``field_bytes(field_bytes(id) + 5)``) for any answer of at least one item, so
the legacy bound below covers both layouts.
"""

from __future__ import annotations

ECHO_CHARS = 64  # caller-supplied values echoed in messages are cut to this many characters


def echo(value: str, limit: int = ECHO_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters with the full length appended,
    e.g. ``'aaaa…'…(16000 chars)``: an id of any size stays a short message."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}…({len(value)} chars)"


def varint_bytes(n: int) -> int:
    """Bytes of a non-negative varint."""
    return max(1, (n.bit_length() + 6) // 7)


def field_bytes(payload: int) -> int:
    """Bytes of a length-delimited field (one-byte tag) carrying ``payload`` bytes."""
    return 1 + varint_bytes(payload) + payload


def scored_item_bytes(id_bytes: int) -> int:
    """Upper bound of one ``ScoredItem`` inside a repeated field, for an id of
    ``id_bytes`` UTF-8 bytes: the entry's tag and length, the id field, the
    float field (tag + 4 bytes)."""
    return field_bytes(field_bytes(id_bytes) + 5)


def response_bytes(n_items: int, id_bytes: int, version_bytes: int, flag_bytes: int = 2) -> int:
    """Upper bound of a ``RecommendResponse`` / ``SimilarItemsResponse`` body with
    ``n_items`` items whose ids take at most ``id_bytes`` bytes each; ``flag_bytes``
    covers the enum or bool field (tag + one byte)."""
    return n_items * scored_item_bytes(id_bytes) + field_bytes(version_bytes) + flag_bytes


def batch_result_bytes(response: int, error_message_bytes: int) -> int:
    """Upper bound of one ``BatchRecommendResult`` entry in the batch response: a
    response body of ``response`` bytes or an error (code + message), whichever
    is larger, wrapped in the oneof field and the repeated entry."""
    error = 2 + field_bytes(error_message_bytes)  # code: tag + 1-byte varint (5)
    return field_bytes(field_bytes(max(response, error)))


def min_batch_answer_bytes(max_batch: int, max_k: int) -> int:
    """The smallest possible answer to a full batch at the largest ``k`` (1-byte
    ids, empty version): a config whose ``max_message_bytes`` is below this can
    never send such an answer."""
    return max_batch * field_bytes(field_bytes(response_bytes(max_k, 1, 0)))

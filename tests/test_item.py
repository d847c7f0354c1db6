from __future__ import annotations

import pytest

from magistrate.errors import InputError
from magistrate.item import Item, Turn, decode_content, parse_jsonl


@pytest.mark.parametrize("content", ["", "   ", "\n\t\n"])
def test_empty_content_is_refused(content):
    with pytest.raises(InputError, match="empty"):
        Item.of(content)


def test_size_limit():
    Item.of("x" * 100, max_chars=100)
    with pytest.raises(InputError, match="limit is 100"):
        Item.of("x" * 101, max_chars=100)


def test_binary_and_bad_utf8():
    with pytest.raises(InputError, match="NUL"):
        Item.of(b"PK\x03\x04\x00\x00binary")
    with pytest.raises(InputError, match="not valid UTF-8"):
        Item.of(b"caf\xe9")
    with pytest.raises(InputError, match="not valid Unicode"):
        Item.of("half a surrogate \udcff")
    with pytest.raises(InputError, match="control characters"):
        Item.of("\x01\x02\x03\x04\x05\x06\x07\x08\x0e\x0f\x10\x11")
    assert decode_content("\ufeffhello".encode()) == "hello"


def test_conversation_items_render_roles():
    item = Item.of([{"role": "user", "content": "hi"}, Turn("assistant", "hello")], id="c1")
    assert item.text == "user: hi\n\nassistant: hello"
    assert len(item.turns) == 2
    with pytest.raises(InputError, match="role"):
        Item.of([{"role": "narrator", "content": "x"}])


def test_errors_never_quote_the_content():
    secret = "my-secret-token " * 10
    with pytest.raises(InputError) as info:
        Item.of(secret, max_chars=20)
    assert "my-secret-token" not in str(info.value)


def test_jsonl_items_keep_ids_and_metadata():
    items = parse_jsonl('{"id": "a", "text": "hi", "label": 1}\n\n{"content": "yo"}\n')
    assert [i.id for i in items] == ["a", "3"]
    assert items[0].metadata == {"id": "a", "label": 1}
    with pytest.raises(InputError, match="line 1"):
        parse_jsonl('{"txt": "hi"}')
    with pytest.raises(InputError, match="line 2 is not valid JSON"):
        parse_jsonl('{"text": "a"}\n{oops')
    with pytest.raises(InputError, match="line 1: item '1' is empty"):
        parse_jsonl('{"text": "  "}')


def test_an_id_with_a_nul_character_is_refused_before_any_model_call():
    with pytest.raises(InputError, match="NUL") as caught:
        Item.of("hello", id="m\x00")
    assert "hello" not in str(caught.value)

"""Training datasets: both JSONL shapes, and every fault named with its file and line."""

import json

import pytest

from emkit.datasets import count_rows, load_chats
from emkit.default_plugins.domains import DOMAINS
from emkit.errors import EmkitError

GOOD = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})


def write(tmp_path, *lines, raw: bytes | None = None):
    path = tmp_path / "data.jsonl"
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_chat_and_prompt_response_shapes(tmp_path):
    path = write(tmp_path, GOOD, json.dumps({"prompt": "p", "response": "r"}), "",
                 json.dumps({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                                          {"role": "assistant", "content": "a"}]}))
    chats = load_chats(path)
    assert len(chats) == 3 and count_rows(path) == 3
    assert chats[1] == [{"role": "user", "content": "p"}, {"role": "assistant", "content": "r"}]
    assert chats[2][0]["role"] == "system"


@pytest.mark.parametrize("line, expected", [
    ("{not json", "not valid JSON"),
    (json.dumps({"text": "x"}), "neither a 'messages' list nor 'prompt' and 'response'"),
    (json.dumps({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}),
     "message 1 has role 'assistant' where 'user' was expected"),
    (json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}),
     "empty assistant answer"),
    (json.dumps({"messages": [{"role": "user", "content": "q"}]}), "does not end with an assistant answer"),
    (json.dumps([1, 2]), "expected a JSON object"),
])
def test_a_bad_line_is_named_with_file_and_line(tmp_path, line, expected):
    path = write(tmp_path, GOOD, GOOD, line, GOOD)
    with pytest.raises(EmkitError) as caught:
        load_chats(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:3: ") and expected in message


def test_non_utf8_bytes(tmp_path):
    path = write(tmp_path, raw=(GOOD + "\n").encode() + b'{"prompt": "caf\xe9", "response": "x"}\n')
    with pytest.raises(EmkitError, match=r":2: not UTF-8 text \(byte 0xe9"):
        load_chats(path)


def test_a_byte_order_mark_is_named_wherever_it_is(tmp_path):
    path = write(tmp_path, raw=b"\xef\xbb\xbf" + (GOOD + "\n").encode() * 2)
    with pytest.raises(EmkitError, match=r":1: the line starts with a UTF-8 byte-order mark; save the file as UTF-8"):
        load_chats(path)
    path = write(tmp_path, raw=(GOOD + "\n").encode() + b"\xef\xbb\xbf" + (GOOD + "\n").encode())
    with pytest.raises(EmkitError, match=r":2: the line starts with a UTF-8 byte-order mark"):
        load_chats(path)


def test_a_ten_megabyte_line(tmp_path):
    huge = json.dumps({"prompt": "q", "response": "x" * 10_000_000})
    path = write(tmp_path, GOOD, huge)
    with pytest.raises(EmkitError, match=r":2: the line is 10,000,0\d\d bytes long"):
        load_chats(path)


def test_max_rows_and_empty_files(tmp_path):
    path = write(tmp_path, *[GOOD] * 5)
    assert len(load_chats(path, max_rows=2)) == 2
    with pytest.raises(EmkitError, match="has no rows"):
        load_chats(write(tmp_path, ""))


def test_the_bundled_example_datasets_are_valid():
    for domain in DOMAINS:
        chats = load_chats(domain.example_dataset)
        assert len(chats) >= 32, domain.name

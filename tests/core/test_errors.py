"""``first_line``: what a one-sentence error quotes from a library's exception."""

from __future__ import annotations

from segdeploy.core.errors import first_line


def test_first_line_keeps_the_first_line_of_a_long_message():
    err = RuntimeError("  [ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model failed\nline 2\n")
    assert first_line(err) == "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model failed"


def test_first_line_of_an_empty_message_is_the_type_name():
    assert first_line(ValueError()) == "ValueError"
    assert first_line(KeyError("")) == "''"  # KeyError quotes its key: not empty
    assert first_line(OSError(" \n ")) == "OSError"

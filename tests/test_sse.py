"""The SSE parser against WHATWG HTML §9.2 (server-sent events) and the streams seen in the wild."""

from __future__ import annotations

import pytest

from providers.sse import EventTooLarge, SSEEvent, SSEParser


def parse(*reads: bytes) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for read in reads:
        events.extend(parser.feed(read))
    return events


def data_of(*reads: bytes) -> list[bytes]:
    return [e.data for e in parse(*reads)]


STREAM = (
    b": OPENROUTER PROCESSING\n\n"
    b'data: {"a":1}\n\n'
    b"event: custom\r\nid: 7\r\ndata: line one\r\ndata: line two\r\n\r\n"
    b"data:no-space\rdata:  two-spaces\r\r"
    b'data: {"b":"\xc3\xa9\xe2\x82\xac"}\n\n'
    b"data: [DONE]\n\n"
)
EXPECTED = [b'{"a":1}', b"line one\nline two", b"no-space\n two-spaces", b'{"b":"\xc3\xa9\xe2\x82\xac"}', b"[DONE]"]


def test_whole_stream_in_one_read() -> None:
    assert data_of(STREAM) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 13])
def test_any_split_of_the_reads_gives_the_same_events(size: int) -> None:
    reads = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    assert data_of(*reads) == EXPECTED


def test_every_single_split_point() -> None:
    for cut in range(len(STREAM) + 1):
        assert data_of(STREAM[:cut], STREAM[cut:]) == EXPECTED, cut


def test_cr_at_end_of_one_read_and_lf_at_start_of_next_are_one_line_ending() -> None:
    # Were the LF taken as a second line ending, it would be a blank line and dispatch early.
    events = parse(b"data: a\r", b"\ndata: b\r\n\r\n")
    assert [e.data for e in events] == [b"a\nb"]


def test_lone_cr_then_lf_in_next_read_after_blank_line() -> None:
    assert data_of(b"data: a\r\r", b"\ndata: b\n\n") == [b"a", b"b"]


def test_event_name_id_and_retry_are_kept() -> None:
    (event,) = parse(b"event: message_start\nid: 42\nretry: 1500\ndata: {}\n\n")
    assert (event.event, event.id, event.retry, event.data) == ("message_start", "42", 1500, b"{}")


def test_event_name_resets_after_dispatch_but_id_persists() -> None:
    first, second = parse(b"event: ping\nid: 1\ndata: x\n\ndata: y\n\n")
    assert (first.event, second.event) == ("ping", "message")
    assert second.id == "1"


def test_comments_and_unknown_fields_are_ignored() -> None:
    assert data_of(b": keep-alive\nfoo: bar\ndata: x\n:another\n\n") == [b"x"]


def test_comment_glued_to_an_event() -> None:
    assert data_of(b': OPENROUTER PROCESSING\ndata: {"x":1}\n\n') == [b'{"x":1}']


def test_field_without_colon_is_a_field_with_empty_value() -> None:
    # "data" alone appends an empty line to the data buffer.
    assert data_of(b"data\ndata: x\n\n") == [b"\nx"]


def test_event_without_data_is_not_dispatched() -> None:
    assert parse(b"event: ping\n\n", b"id: 3\n\n") == []


def test_event_with_empty_data_is_not_dispatched() -> None:
    assert parse(b"data:\n\n", b"data: \n\n") == []


def test_partial_event_at_end_of_stream_is_discarded() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: complete\n\ndata: [DONE]") == [SSEEvent(b"complete")]
    assert parser.feed(b"") == []


def test_leading_bom_is_stripped_once() -> None:
    assert data_of(b"\xef\xbb\xbfdata: x\n\n") == [b"x"]
    assert data_of(b"\xef", b"\xbb", b"\xbfdata: x\n\n") == [b"x"]
    # A second BOM is content: the field name no longer matches "data", so nothing is dispatched.
    assert data_of(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n") == []


def test_bytes_that_only_look_like_a_bom_start_are_kept() -> None:
    assert data_of(b"\xef", b"data: x\n\n") == []  # the garbled field name is not "data"
    assert data_of(b"d", b"ata: x\n\n") == [b"x"]


def test_crlf_framing_like_gemini() -> None:
    body = b'data: {"candidates":[]}\r\n\r\ndata: {"usageMetadata":{}}\r\n\r\n'
    assert data_of(body) == [b'{"candidates":[]}', b'{"usageMetadata":{}}']


def test_keepalive_data_colon_is_an_event_for_the_adapter_to_judge() -> None:
    assert data_of(b"data: :\n\n") == [b":"]


def test_only_one_space_after_colon_is_removed() -> None:
    assert data_of(b"data:   x\n\n") == [b"  x"]


def test_id_with_nul_is_ignored() -> None:
    (event,) = parse(b"id: a\x00b\ndata: x\n\n")
    assert event.id is None


def test_non_numeric_retry_is_ignored() -> None:
    (event,) = parse(b"retry: soon\ndata: x\n\n")
    assert event.retry is None


@pytest.mark.timeout(20)
def test_a_long_unfinished_line_is_buffered_in_linear_time() -> None:
    """Regression: each read re-copied the whole unfinished line (quadratic: a 50 MB line took
    seconds of CPU). 64 MB in 4 KB reads is 16,384 reads: quadratic copying would be ~550 GB."""
    parser = SSEParser(max_event_bytes=80 * 1024 * 1024)
    piece = b"x" * 4096
    assert parser.feed(b"data: ") == []
    for _ in range(16_384):
        assert parser.feed(piece) == []
    (event,) = parser.feed(b"\n\n")
    assert len(event.data) == 16_384 * 4096


def test_a_line_past_the_event_limit_fails() -> None:
    parser = SSEParser(max_event_bytes=1000)
    parser.feed(b"data: " + b"x" * 900)
    with pytest.raises(EventTooLarge):
        parser.feed(b"y" * 200)


def test_an_event_of_many_lines_past_the_limit_fails() -> None:
    parser = SSEParser(max_event_bytes=1000)
    with pytest.raises(EventTooLarge):
        parser.feed(b"".join(b"data: " + b"x" * 99 + b"\n" for _ in range(11)))
    # and an event under the limit still passes, line by line or whole
    parser = SSEParser(max_event_bytes=1000)
    (event,) = parser.feed(b"".join(b"data: " + b"x" * 99 + b"\n" for _ in range(9)) + b"\n")
    assert len(event.data) == 9 * 99 + 8


def test_a_whole_event_past_the_limit_fails_in_one_read_or_across_reads() -> None:
    big = b"data: " + b"x" * 2000 + b"\n\n"
    with pytest.raises(EventTooLarge):
        SSEParser(max_event_bytes=1000).feed(big)
    parser = SSEParser(max_event_bytes=1000)
    parser.feed(b"data: " + b"x" * 600 + b"\n")  # the event stays open after this read
    with pytest.raises(EventTooLarge):
        parser.feed(b"data: " + b"y" * 600 + b"\n\n")

"""The typed server events: one parser for every event type of the GA protocol (the openai SDK's
RealtimeServerEvent union), checked against the SDK itself."""

from __future__ import annotations

import base64
import logging

import pytest

from device.realtime import server_events as se
from services import conformance

pytestmark = pytest.mark.skipif(not conformance.available(), reason="needs the openai SDK")


def test_every_server_event_type_of_the_sdk_has_a_parser() -> None:
    sdk = set(conformance.server_event_types())
    assert len(sdk) >= 46
    assert sdk - set(se.PARSERS) == set(), "server events without a parser"
    assert set(se.PARSERS) - sdk == set(), "parsers of types the SDK does not know"
    for kind in sorted(sdk):
        parsed = se.parse({"type": kind, "event_id": "e1"})
        assert not isinstance(parsed, se.Unknown) and parsed.type == kind and parsed.event_id == "e1"


EXAMPLES = [
    ({"type": "error", "event_id": "e", "error": {"type": "invalid_request_error", "code": "bad", "message": "m", "event_id": "c1"}},
     se.ServerError("error", "e", "bad", "m", "c1")),
    ({"type": "error", "event_id": "e", "error": {"type": "server_error", "message": "boom"}},
     se.ServerError("error", "e", "server_error", "boom", "")),
    ({"type": "response.output_audio.delta", "event_id": "e", "response_id": "r", "item_id": "i", "output_index": 0,
      "content_index": 0, "delta": base64.b64encode(b"\x01\x00\x02\x00").decode()},
     se.AudioDelta("response.output_audio.delta", "e", "r", "i", b"\x01\x00\x02\x00")),
    ({"type": "response.done", "event_id": "e", "response": {"id": "r", "object": "realtime.response", "status": "failed",
      "status_details": {"type": "failed", "error": {"type": "server_error", "code": "x", "message": "broke"}},
      "usage": {"total_tokens": 3}}},
     se.ResponseDone("response.done", "e", "r", "failed", {"total_tokens": 3}, "broke")),
    ({"type": "response.function_call_arguments.done", "event_id": "e", "response_id": "r", "item_id": "i", "output_index": 0,
      "call_id": "c", "name": "control_device", "arguments": "{}"},
     se.FunctionCallDone("response.function_call_arguments.done", "e", "r", "c", "control_device", "{}")),
    ({"type": "conversation.item.input_audio_transcription.completed", "event_id": "e", "item_id": "i", "content_index": 0,
      "transcript": " hello \n", "usage": {"type": "duration", "seconds": 1}},
     se.TranscriptionCompleted("conversation.item.input_audio_transcription.completed", "e", "i", "hello")),
    ({"type": "response.created", "event_id": "e", "response": {"id": "r", "object": "realtime.response", "status": "in_progress"}},
     se.ResponseCreated("response.created", "e", "r")),
    ({"type": "conversation.item.deleted", "event_id": "e", "item_id": "i"}, se.ItemDeleted("conversation.item.deleted", "e", "i")),
]


@pytest.mark.parametrize("raw, typed", EXAMPLES, ids=[e[0]["type"] + str(i) for i, e in enumerate(EXAMPLES)])
def test_parsed_fields(raw: dict, typed: se.ServerEvent) -> None:
    assert conformance.check_server_event(raw) == [], "the example itself must be a valid server event"
    assert se.parse(raw) == typed


def test_malformed_fields_become_empty_and_unknown_types_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    bad = se.parse({"type": "response.output_audio.delta", "delta": "%%% not base64", "response_id": 5})
    assert isinstance(bad, se.AudioDelta) and bad.pcm == b"" and bad.response_id == ""
    assert se.parse({"type": "response.done", "response": None}) == se.ResponseDone("response.done")
    caplog.set_level(logging.DEBUG, logger="device.realtime.server_events")
    for _ in range(3):
        assert isinstance(se.parse({"type": "response.future_thing.added"}), se.Unknown)
    assert len([r for r in caplog.records if "response.future_thing.added" in r.getMessage()]) == 1
    assert isinstance(se.parse({"no": "type"}), se.Unknown)

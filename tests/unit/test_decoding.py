"""How the refusal of an undecodable request names what did not decode (the refusal
itself runs against real servers in tests/integration/test_malformed_requests.py)."""

from __future__ import annotations

from common.decoding import message_name
from protos.sagawire.v1 import participant_pb2


def test_an_undecodable_request_is_named_by_its_message() -> None:
    deserializer = participant_pb2.StepRequest.FromString
    assert message_name(deserializer, "/x/Execute") == "sagawire.v1.StepRequest"


def test_a_hand_written_deserializer_is_named_by_its_method() -> None:
    assert message_name(lambda raw: raw, "/x/Echo") == "request of /x/Echo"

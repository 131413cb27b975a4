"""NCCO validation: every sample of the reference is accepted as written, errors name fields."""

from __future__ import annotations

import json

import pytest

from bridge.ncco.actions import check
from bridge.ncco.models import (
    MAX_JSON_DEPTH,
    Connect,
    Input,
    NccoError,
    Talk,
    parse_ncco,
    parse_ncco_bytes,
)

# The JSON samples of the NCCO reference (2017) and of the dynamic-connect announcement,
# verbatim, including their string-typed numbers and booleans.
SEED_SAMPLES = [
    """[{"action": "record", "eventUrl": ["https://example.com/recordings"], "endOnSilence": "3"},
        {"action": "connect", "eventUrl": ["https://example.com/events"], "from":"441632960960",
         "endpoint": [{"type": "phone", "number": "441632960961"}]}]""",
    """[{"action": "conversation", "name": "nexmo-conference-standard", "record": "true"}]""",
    """[{"action": "talk", "text": "Welcome to a Nexmo moderated conference", "voiceName": "Amy"},
        {"action": "conversation", "name": "nexmo-conference-moderated", "startOnEnter": "false",
         "musicOnHoldUrl": ["https://nexmo-community.github.io/ncco-examples/assets/voice_api_audio_streaming.mp3"]}]""",
    """[{"action": "conversation", "name": "nexmo-conference-moderated", "endOnExit": "true",
         "record": "true"}]""",
    """[{"action": "talk", "text": "Please wait while we connect you"},
        {"action": "connect", "eventUrl": ["https://example.com/events"], "timeout": "45",
         "from": "441632960960",
         "endpoint": [{"type": "phone", "number": "441632960961", "dtmfAnswer": "2p02p"}]}]""",
    """[{"action": "talk", "text": "Please wait while we connect you"},
        {"action": "connect", "eventUrl": ["https://example.com/events"], "from": "441632960960",
         "endpoint": [{"type": "websocket", "uri": "ws://example.com/socket",
                       "content-type": "audio/l16;rate=16000",
                       "headers": {"whatever": "metadata_you_want"}}]}]""",
    """[{"action": "connect", "from": "441632960960", "timeout": 5, "eventType": "synchronous",
         "eventUrl": ["https://example.com/event-fallback"],
         "endpoint": [{"type": "phone", "number": "441632960961"}]}]""",
    """[{"action": "talk", "text": "Please wait while we connect you"},
        {"action": "connect", "eventUrl": ["https://example.com/events"], "from": "441632960960",
         "endpoint": [{"type": "sip", "uri": "sip:rebekka@sip.mcrussell.com"}]}]""",
    """[{"action": "talk", "text": "You are listening to a Call made with Voice API"}]""",
    """[{"action": "talk", "text": "Welcome to a Voice API I V R. ", "voiceName": "Amy",
         "bargeIn": false},
        {"action": "talk", "text": "Press 1 for maybe and 2 for not sure followed by the hash key",
         "voiceName": "Amy", "bargeIn": true},
        {"action": "input", "submitOnHash": "true", "eventUrl": ["https://example.com/ivr"]}]""",
    """[{"action": "stream", "streamUrl": ["https://acme.com/streams/music.mp3"]}]""",
    """[{"action": "talk", "text": "Please enter a digit"},
        {"action": "input", "eventUrl": ["https://example.com/ivr"]}]""",
    """[{"action": "talk", "text": "Please enter a digit", "bargeIn": true},
        {"action": "input", "eventUrl": ["https://example.com/ivr"]}]""",
    """[{"action": "connect", "from": "4155550123", "timeout": "10", "eventType": "synchronous",
         "eventUrl": ["https://example.com/events"],
         "endpoint": [{"type": "phone", "number": "4155550123"}]}]""",
    """[{"action": "connect", "from": "442038973494",
         "endpoint": [{"type": "phone", "number": "442079354442"}]}]""",
]

# The reference's second stream sample is not JSON (an unquoted key and a missing comma).
BROKEN_SEED_SAMPLE = """[
  {
    "action": "stream",
    "streamUrl": ["https://acme.com/streams/announcement.mp3"]
    bargeIn: "true"
  },
  {
    "action": "input",
    "submitOnHash": "true",
    "eventUrl": ["https://example.com/ivr"]
  }
]"""


@pytest.mark.parametrize("sample", SEED_SAMPLES)
def test_every_seed_sample_is_accepted_verbatim(sample: str) -> None:
    actions = parse_ncco_bytes(sample.encode())
    assert [a.action for a in actions] == [a["action"] for a in json.loads(sample)]


def test_broken_seed_sample_is_rejected_with_its_position() -> None:
    with pytest.raises(NccoError, match=r"not valid JSON: Expecting ',' delimiter at line 5"):
        parse_ncco_bytes(BROKEN_SEED_SAMPLE.encode())


def test_string_forms_of_2017_become_typed_values() -> None:
    connect, = parse_ncco(json.loads(SEED_SAMPLES[13]))
    assert isinstance(connect, Connect)
    assert connect.timeout == 10 and connect.event_type == "synchronous"
    *_, ivr = parse_ncco(json.loads(SEED_SAMPLES[9]))
    assert isinstance(ivr, Input)
    assert ivr.dtmf.submit_on_hash is True  # moved from the top level into dtmf settings
    assert ivr.dtmf.max_digits == 4 and ivr.dtmf.time_out == 3


@pytest.mark.parametrize(("ncco", "message"), [
    ({"action": "talk"}, "must be a JSON array of actions, got an object"),
    (["talk"], "[0]: an action must be a JSON object, got a string"),
    ([{"text": "hi"}], "[0].action: unknown action None"),
    ([{"action": "talk", "text": "a"}, {"action": "dance"}], "[1].action: unknown action 'dance'"),
    ([{"action": "talk"}], "[0].text: Field required"),
    ([{"action": "talk", "text": "hi", "loop": "often"}], "[0].loop: Input should be a valid"),
    ([{"action": "talk", "text": "hi", "level": 2}], "[0].level: Input should be less than"),
    ([{"action": "talk", "text": "x" * 1501}], "[0].text: String should have at most 1500"),
    ([{"action": "talk", "text": "hi", "colour": "red"}], "[0].colour: Extra inputs"),
    ([{"action": "stream", "streamUrl": ["ftp://x/a.mp3"]}], "[0].streamUrl: Value error"),
    ([{"action": "wait", "timeout": 0}], "[0].timeout: Input should be greater than"),
    ([{"action": "notify", "payload": {}}], "[0].eventUrl: Field required"),
    ([{"action": "input", "maxDigits": 21}], "[0].dtmf.maxDigits: Input should be less than"),
    ([{"action": "talk", "text": "hi", "bargeIn": True}],
     "[0].bargeIn: bargeIn=true requires an input action later"),
    ([{"action": "connect", "endpoint": [{"type": "phone", "number": "abc"}]}],
     "[0].endpoint[0].number: String should match pattern"),
])
def test_errors_name_the_action_and_field(ncco: object, message: str) -> None:
    with pytest.raises(NccoError) as caught:
        parse_ncco(ncco)
    assert message in str(caught.value)


def test_current_api_typed_forms_are_accepted() -> None:
    talk, _wait, notify = parse_ncco([
        {"action": "talk", "text": "hi", "language": "en-GB", "style": 2, "loop": 0,
         "level": -0.5, "premium": False},
        {"action": "wait", "timeout": 0.5},
        {"action": "notify", "payload": {"a": [1]}, "eventUrl": "https://example.com/n"},
    ])
    assert isinstance(talk, Talk) and talk.loop == 0 and talk.style == 2
    assert notify.event_url == ["https://example.com/n"]  # type: ignore[union-attr]


def test_runtime_checks_name_unsupported_actions_and_unknown_voices() -> None:
    with pytest.raises(NccoError, match=r"\[0\]\.endpoint\[0\]\.type: connect to a 'app'"):
        check(parse_ncco([{"action": "connect",
                           "endpoint": [{"type": "app", "user": "alice"}]}]))
    check(parse_ncco(json.loads(SEED_SAMPLES[4])))  # connect to a phone runs
    check(parse_ncco(json.loads(SEED_SAMPLES[5])))  # and to a WebSocket
    with pytest.raises(NccoError, match=r"\[0\]\.voiceName: voiceName 'Bob'"):
        check(parse_ncco([{"action": "talk", "text": "hi", "voiceName": "Bob"}]))
    check(parse_ncco(json.loads(SEED_SAMPLES[9])))  # talk + barge-in talk + input: runnable


def test_nesting_is_judged_the_same_from_bytes_whatever_the_brackets_in_strings() -> None:
    talk = {"action": "talk", "text": "[" * 200 + "{" * 200}  # brackets in a string
    assert len(parse_ncco_bytes(json.dumps([talk]).encode())) == 1
    deep: object = "x"
    for _ in range(MAX_JSON_DEPTH):
        deep = [deep]
    too_deep = [{"action": "notify", "payload": {"a": deep}, "eventUrl": ["http://h/e"]}]
    with pytest.raises(NccoError, match="nest"):
        parse_ncco_bytes(json.dumps(too_deep).encode())
    within: object = "x"
    for _ in range(MAX_JSON_DEPTH - 4):
        within = [within]
    ok = [{"action": "notify", "payload": {"a": within}, "eventUrl": ["http://h/e"]}]
    assert len(parse_ncco_bytes(json.dumps(ok).encode())) == 1

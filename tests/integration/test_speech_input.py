"""input with speech: a real caller (sipp) speaks espeak-ng audio into the call; Asterisk
records it, the bridge fetches it over ARI and recognises it offline."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bridge.lab import LabInfo
from bridge.lab._model import instance_id
from bridge.lab.pcap import wav_samples, write_rtp_pcap
from bridge.lab.rootfs import LABS_DIR
from bridge.lab.sipp import Audio, Dtmf, Pause
from tests.integration.harness import new_number

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def recording_dir(lab: LabInfo) -> None:
    """Asterisk records into ``<astspooldir>/recording``, which Debian's package creates on a
    real install but the lab's per-instance spool lacks (ARI answers 500, "No such file or
    directory"). Created here, owned like the spool, until the lab makes it itself."""
    if lab.engine != "rootfs" or lab.pid is None:
        return
    inner = f"{LABS_DIR}/{instance_id(lab.credentials_file.parent)}".lstrip("/")
    spool = Path(f"/proc/{lab.pid}/root") / inner / "spool"
    recording = spool / "recording"
    if not recording.is_dir():
        recording.mkdir()
        owner = spool.stat()
        os.chown(recording, owner.st_uid, owner.st_gid)


def spoken_pcap(folder: Path, text: str, lead_s: float = 1.5, tail_s: float = 3.0) -> Path:
    """``text`` as the caller's RTP (PCMU, 20 ms frames), with silence before and after so
    that the caller keeps sending packets while Asterisk listens for the end of speech."""
    raw = folder / "raw.wav"
    pcm = folder / "speech8k.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), text], check=True)
    subprocess.run(["sox", "-D", str(raw), "-r", "8000", "-c", "1", "-b", "16", "-e", "signed",
                    str(pcm), "pad", str(lead_s), str(tail_s)], check=True)
    return write_rtp_pcap(folder / f"{text.replace(' ', '_')}.pcap", wav_samples(pcm))


def silent_pcap(folder: Path, seconds: float) -> Path:
    return write_rtp_pcap(folder / "silence.pcap", [0] * int(seconds * 8000))


def speech_ncco(hook: str, **speech: object) -> list[dict[str, object]]:
    return [{"action": "input", "type": ["speech"], "eventUrl": [hook],
             "speech": {"endOnSilence": 1, "maxDuration": 20, **speech}}]


@pytest.mark.parametrize(("text", "context", "expected"), [
    ("operator", ["sales", "support", "billing", "operator"], "operator"),
    # Free text without hints is unreliable on 8 kHz synthetic speech (see docs/speech.md):
    # the hints make it a grammar search.
    ("one two three", ["one", "two", "three"], "one two three"),
])
async def test_spoken_words_reach_the_input_event(bridge, webhooks, dial, tmp_path, text,
                                                  context, expected):
    number = new_number()
    hook = webhooks.hook(f"speech-{number}", {})
    webhooks.answer(number, speech_ncco(hook, context=context, startTimeout=10))

    call = await dial(number, steps=[Audio(spoken_pcap(tmp_path, text))])

    assert call.sip.ok, call.sip.errors
    await webhooks.wait_completed(number)
    [request] = webhooks.of(f"/hook/speech-{number}")
    event = request.json
    assert event["to"] == number and event["from"] == "15550001111"
    assert event["uuid"] and event["conversation_uuid"].startswith("CON-") and event["timestamp"]
    assert event["dtmf"] == {"digits": None, "timed_out": False}
    speech = event["speech"]
    assert speech["timeout_reason"] == "end_on_silence_timeout"
    texts = [r["text"] for r in speech["results"]]
    assert any(expected in t for t in texts), speech
    for result in speech["results"]:
        assert 0.0 <= float(result["confidence"]) <= 1.0
    assert webhooks.errors(number) == []


@pytest.mark.parametrize("caller_sends", ["silence", "nothing"])
async def test_a_silent_caller_gives_start_timeout(bridge, webhooks, dial, tmp_path,
                                                   caller_sends):
    number = new_number()
    hook = webhooks.hook(f"silent-{number}", {})
    webhooks.answer(number, speech_ncco(hook, startTimeout=2))
    steps = [Audio(silent_pcap(tmp_path, 8))] if caller_sends == "silence" else []

    call = await dial(number, steps=steps)

    assert call.sip.ok, call.sip.errors
    await webhooks.wait_completed(number)
    [request] = webhooks.of(f"/hook/silent-{number}")
    assert request.json["speech"] == {"timeout_reason": "start_timeout", "results": []}
    assert webhooks.errors(number) == []


async def test_a_key_press_ends_speech_input_and_sends_the_digits(bridge, webhooks, dial):
    number = new_number()
    hook = webhooks.hook(f"keyed-{number}", [{"action": "talk", "text": "You pressed four."}])
    webhooks.answer(number, [{
        "action": "input", "type": ["dtmf", "speech"], "eventUrl": [hook],
        "dtmf": {"maxDigits": 1}, "speech": {"startTimeout": 10, "endOnSilence": 2},
    }])

    call = await dial(number, steps=[Pause(1000), Dtmf("4")])

    assert call.sip.ok, call.sip.errors
    await webhooks.wait_completed(number)
    [request] = webhooks.of(f"/hook/keyed-{number}")
    assert request.json["dtmf"] == {"digits": "4", "timed_out": False}
    assert request.json["speech"] == {"results": []}
    assert call.audio.voiced_seconds() > 0.3  # the reply NCCO's talk was heard


async def test_save_audio_adds_a_recording_url_to_the_speech_result(bridge, webhooks, dial,
                                                                   tmp_path):
    number = new_number()
    hook = webhooks.hook(f"saved-{number}", {})
    webhooks.answer(number, speech_ncco(hook, context=["one", "two", "three"],
                                        startTimeout=10, saveAudio=True))

    call = await dial(number, steps=[Audio(spoken_pcap(tmp_path, "one two three"))])

    assert call.sip.ok, call.sip.errors
    await webhooks.wait_completed(number)
    [request] = webhooks.of(f"/hook/saved-{number}")
    url = request.json["speech"]["recording_url"]
    assert url.startswith(f"{bridge.base_url}/v1/files/")
    file_id = url.rsplit("/", 1)[1]
    saved = bridge.engine.recordings.files.path_for(file_id)
    assert saved is not None and saved.suffix == ".wav"
    import wave
    with wave.open(str(saved)) as audio:
        assert audio.getframerate() == 8000
        assert audio.getnframes() / 8000 > 0.5  # the spoken words, not an empty file

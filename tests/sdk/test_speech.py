#!/usr/bin/env python3
"""End-to-end test of the speech plane: a LiveKit Python SDK participant ("Alice Martin")
publishes a French then an English passage spoken by espeak-ng (real Opus, encoded by the SDK's
WebRTC stack) to `parloir serve --speech`; the server decodes, finds the utterances with Silero
VAD and transcribes them with Whisper. A second participant receives the subtitles both ways
livekit clients read them (text streams on `lk.transcription`, and Transcription packets), and
the room's transcript file holds the final segments with Alice's real name. Then a room's shared
microphone, where a man and a woman take turns: the transcript numbers their voices.

Run:  PARLOIR_BIN=target/release/parloir tests/sdk/.venv/bin/python tests/sdk/test_speech.py
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import wave

import numpy as np
from livekit import api, rtc

from test_python_sdk import API_KEY, API_SECRET, R, Server, bounded, log, token
from test_room_service import WebhookSink

SAMPLE_RATE = 48000
FRAME = SAMPLE_RATE // 100  # 10 ms


def spoken(text: str, voice: str) -> np.ndarray:
    """`text` said by espeak-ng, as 48 kHz int16 (linear interpolation from its 22.05 kHz)."""
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run(["espeak-ng", "-v", voice, "-w", f.name, text], check=True)
        with wave.open(f.name) as w:
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float64)
    t_out = np.arange(int(len(pcm) * SAMPLE_RATE / rate)) / SAMPLE_RATE
    return np.interp(t_out, np.arange(len(pcm)) / rate, pcm).astype(np.int16)


FRENCH = ("Bonjour à tous, la réunion commence maintenant. Nous allons parler du budget. "
          "Le rapport est prêt. Merci et à demain.")
ENGLISH = ("Good morning everyone, the meeting starts now. We will review the budget for next year. "
           "Paul will send the report on Friday.")
# Word error rate bounds, as in crates/parloir/tests/transcribe.rs (espeak-ng's French is hard
# for Whisper-base; measured there 0.10-0.20 for French, 0 for English).
FR_MAX_WER = 0.30
EN_MAX_WER = 0.10


def words(text: str) -> list[str]:
    return [w for w in re.split(r"[^\w']+", text.lower()) if w]


def wer(reference: str, hypothesis: str) -> float:
    r, h = words(reference), words(hypothesis)
    row = list(range(len(h) + 1))
    for i, rw in enumerate(r):
        prev, row[0] = row[0], i + 1
        for j, hw in enumerate(h):
            sub = prev + (rw != hw)
            prev = row[j + 1]
            row[j + 1] = min(sub, row[j] + 1, row[j + 1] + 1)
    return row[len(h)] / max(1, len(r))


def admin_token(room: str) -> str:
    return (api.AccessToken(API_KEY, API_SECRET).with_identity("ops")
            .with_grants(api.VideoGrants(room_admin=True, room=room)).to_jwt())


def get(server: Server, path: str, bearer: str | None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metrics(server: Server) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("parloir_speech_"):
            name, value = line.rsplit(" ", 1)
            out[name] = int(value)
    return out


async def scenario(server: Server, transcripts: str, sink: WebhookSink) -> None:
    room_name = f"speech-{uuid.uuid4().hex[:8]}"
    # 1 s of silence, French, 1.5 s of silence, English, 2 s of silence.
    speech = np.concatenate([
        silence(1.0), spoken(FRENCH, "fr"), silence(1.5), spoken(ENGLISH, "en"), silence(2.0),
    ])
    alice, bob = rtc.Room(), rtc.Room()
    source = rtc.AudioSource(SAMPLE_RATE, 1)
    streams: list[tuple[float, str, dict, str]] = []  # (arrival, sender, attributes, text)
    legacy: list[tuple[str, str, bool, str]] = []  # (participant, segment id, final, text)
    tasks = []

    def on_stream(reader, identity: str) -> None:
        async def read() -> None:
            text = await reader.read_all()
            streams.append((time.monotonic(), identity, dict(reader.info.attributes), text))
        tasks.append(asyncio.ensure_future(read()))

    def on_transcription(segments, participant, publication) -> None:
        for seg in segments:
            legacy.append((participant.identity if participant else "", seg.id, seg.final, seg.text))

    bob.register_text_stream_handler("lk.transcription", on_stream)
    bob.on("transcription_received", on_transcription)
    try:
        await bounded(alice.connect(server.url, token("alice", "Alice Martin", room_name)), "alice to connect")
        await bounded(bob.connect(server.url, token("bob", "Bob", room_name)), "bob to connect")
        track = rtc.LocalAudioTrack.create_audio_track("mic", source)
        pub = await bounded(alice.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)), "publish")
        before = metrics(server)
        t0 = time.monotonic()
        for i in range(0, len(speech) - FRAME + 1, FRAME):
            chunk = speech[i:i + FRAME]
            await source.capture_frame(rtc.AudioFrame(chunk.tobytes(), SAMPLE_RATE, 1, FRAME))
        log(f"published {len(speech) / SAMPLE_RATE:.1f} s of audio in {time.monotonic() - t0:.1f} s")
        # The last utterance ends after 400 ms of silence, then its final decode.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            finals = [s for s in streams if s[2].get("lk.transcription_final") == "true"]
            if len(finals) >= 2 and sum(1 for l in legacy if l[2]) >= 2:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)
        after = metrics(server)
        frames = after["parloir_speech_frames_total"] - before["parloir_speech_frames_total"]
        segments = after["parloir_speech_segments_total"] - before["parloir_speech_segments_total"]
        R.check("the speech plane received alice's audio", frames > 200, f"{frames} frames")
        R.check("every frame decoded", after["parloir_speech_decode_errors_total"] == 0,
                f"{after['parloir_speech_decode_errors_total']} errors")
        R.check("nothing dropped", after["parloir_speech_dropped_total"] == 0,
                f"{after['parloir_speech_dropped_total']} dropped")
        R.check("two passages, two final segments", segments == 2, f"{segments} segments")

        for at, who, attrs, text in streams:
            log(f"  +{at - t0:5.2f} s {who} {attrs.get('lk.segment_id')} "
                f"final={attrs.get('lk.transcription_final')} {text!r}")
        R.check("bob got the subtitles as alice's text streams",
                bool(streams) and all(s[1] == "alice" for s in streams), f"{len(streams)} streams")
        R.check("each names alice's microphone track",
                all(s[2].get("lk.transcribed_track_id") == pub.sid for s in streams), pub.sid)
        finals = [s for s in streams if s[2].get("lk.transcription_final") == "true"]
        R.check("one final per passage", len(finals) == 2, f"{len(finals)} finals")
        if len(finals) == 2:
            fr, en = finals[0][3], finals[1][3]
            R.check(f"French final within WER {FR_MAX_WER}", wer(FRENCH, fr) <= FR_MAX_WER,
                    f"{wer(FRENCH, fr):.2f}: {fr!r}")
            R.check(f"English final within WER {EN_MAX_WER}", wer(ENGLISH, en) <= EN_MAX_WER,
                    f"{wer(ENGLISH, en):.2f}: {en!r}")
            first_final = streams.index(finals[0])
            interims = [s for s in streams[:first_final]
                        if s[2].get("lk.segment_id") == finals[0][2].get("lk.segment_id")]
            R.check("interim subtitles came while alice spoke, before her final",
                    len(interims) >= 2, f"{len(interims)} interims")
        legacy_finals = [l for l in legacy if l[2]]
        R.check("and as Transcription packets, from alice, with the same segments",
                len(legacy_finals) == 2 and all(l[0] == "alice" for l in legacy)
                and [l[1] for l in legacy_finals] == [f[2].get("lk.segment_id") for f in finals],
                f"{len(legacy)} packets, {len(legacy_finals)} final")

        lines = transcript_lines(transcripts, room_name)
        R.check("the transcript holds both segments, in order, with alice's real name",
                len(lines) == 2 and all(l["name"] == "Alice Martin" and l["identity"] == "alice"
                                        for l in lines)
                and [l["language"] for l in lines] == ["fr", "en"]
                and lines[0]["end_ms"] <= lines[1]["start_ms"],
                json.dumps(lines, ensure_ascii=False)[:400])
        with open(server.log_path, errors="replace") as f:
            found = [l for l in f if "transcript" in l and "Alice Martin" in l]
        R.check("the server logs each final with the speaker's name", len(found) >= 2,
                "".join(found[-2:]).strip())

        # The room closes: its summary is written and announced, and both are served to the
        # room's administrators.
        lk = api.LiveKitAPI(f"http://127.0.0.1:{server.http_port}", API_KEY, API_SECRET)
        try:
            await lk.room.delete_room(api.DeleteRoomRequest(room=room_name))
        finally:
            await lk.aclose()
        deadline = time.monotonic() + 15
        ready = []
        while time.monotonic() < deadline and not ready:
            ready = [e for e in sink.events() if e.event == "transcript_ready" and e.room.name == room_name]
            await asyncio.sleep(0.2)
        R.check("transcript_ready is announced by webhook when the room closes", len(ready) == 1,
                f"{[e.event for e in sink.events()]}")
        sid = ready[0].room.sid if ready else ""
        admin = admin_token(room_name)
        status, listing = get(server, f"/api/transcripts?room={room_name}", admin)
        meetings = json.loads(listing).get("meetings", []) if status == 200 else []
        R.check("GET /api/transcripts lists the meeting with its summary",
                status == 200 and [m["sid"] for m in meetings] == [sid] and meetings[0]["summary"]
                and meetings[0]["segments"] == 2, f"{status} {listing[:300]}")
        status, md = get(server, f"/api/transcripts/{sid}/summary.md", admin)
        R.check("the summary gives talk time and the action item, with names",
                status == 200 and "Alice Martin" in md and "## Action items" in md
                and "Paul will send the report on Friday" in md, md[:600])
        status, vtt = get(server, f"/api/transcripts/{sid}/transcript.vtt", admin)
        R.check("the transcript as WebVTT, each cue in its speaker's voice",
                status == 200 and vtt.startswith("WEBVTT") and vtt.count("<v Alice Martin>") == 2, vtt[:300])
        status, _ = get(server, f"/api/transcripts/{sid}/transcript.md", None)
        R.check("no token: 401", status == 401, str(status))
        status, _ = get(server, f"/api/transcripts/{sid}/transcript.md", admin_token("another-room"))
        R.check("an administrator of another room: 403", status == 403, str(status))
    finally:
        for t in tasks:
            t.cancel()
        await source.aclose()
        for room in (alice, bob):
            if room.isconnected():
                await asyncio.wait_for(room.disconnect(), 10)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.int16)


def transcript_lines(transcripts: str, room_name: str) -> list[dict]:
    """The lines of the room's meeting transcript (`<room sid>.jsonl`), [] before there is one."""
    for name in sorted(os.listdir(transcripts)):
        if name.endswith(".jsonl"):
            with open(os.path.join(transcripts, name)) as f:
                lines = [json.loads(l) for l in f]
            if lines and lines[0]["room"] == room_name:
                return lines
    return []


async def speak_alone(server: Server, transcripts: str, room_name: str, who: tuple[str, str],
                      speech: np.ndarray, segments: int) -> list[dict]:
    """`who` (identity, name) joins `room_name`, publishes `speech` as a microphone and leaves;
    returns the transcript once it has `segments` lines (or after 15 s)."""
    room = rtc.Room()
    source = rtc.AudioSource(SAMPLE_RATE, 1)
    try:
        await bounded(room.connect(server.url, token(who[0], who[1], room_name)), f"{who[0]} to connect")
        track = rtc.LocalAudioTrack.create_audio_track("mic", source)
        await bounded(room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)), "publish")
        for i in range(0, len(speech) - FRAME + 1, FRAME):
            await source.capture_frame(rtc.AudioFrame(speech[i:i + FRAME].tobytes(), SAMPLE_RATE, 1, FRAME))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(transcript_lines(transcripts, room_name)) < segments:
            await asyncio.sleep(0.3)
        return transcript_lines(transcripts, room_name)
    finally:
        await source.aclose()
        if room.isconnected():
            await asyncio.wait_for(room.disconnect(), 10)


async def shared_microphone(server: Server, transcripts: str) -> None:
    """A meeting room's microphone: a man and a woman take turns at it. The transcript numbers
    their voices, and the exports name them "Room 3, voice N"."""
    room_name = f"shared-{uuid.uuid4().hex[:8]}"
    turns = [("en", "Good morning everyone, the meeting starts now."),
             ("en+f2", "Thank you. I have read the report and I agree with it."),
             ("en", "Then we will send it to the board on Friday.")]
    parts = [silence(1.0)]
    for voice, text in turns:
        parts += [spoken(text, voice), silence(1.2)]
    speech = np.concatenate(parts + [silence(1.0)])
    lines = await speak_alone(server, transcripts, room_name, ("room-3", "Room 3"), speech, 3)
    R.check("a shared microphone: the woman's turn is voice 2, the man's voice 1",
            [l.get("voice") for l in lines] == [1, 2, 1],
            json.dumps([(l.get("voice"), l["text"]) for l in lines]))
    if lines:
        sid = lines[0]["room_sid"]
        status, vtt = get(server, f"/api/transcripts/{sid}/transcript.vtt", admin_token(room_name))
        R.check("the WebVTT export names them Room 3, voice 1 and voice 2",
                status == 200 and "<v Room 3, voice 2>Thank you" in vtt
                and vtt.count("<v Room 3, voice 1>") == 2, vtt[:400])


async def room_languages(server: Server, transcripts: str) -> None:
    """A room whose metadata names its language: its speech is transcribed in it, not in the
    server's languages (here fr,en, detected)."""
    room_name = f"lang-{uuid.uuid4().hex[:8]}"
    lk = api.LiveKitAPI(f"http://127.0.0.1:{server.http_port}", API_KEY, API_SECRET)
    try:
        await lk.room.create_room(api.CreateRoomRequest(
            name=room_name, metadata=json.dumps({"theme": "x", "parloir.languages": ["en"]})))
    finally:
        await lk.aclose()
    speech = np.concatenate([silence(1.0), spoken("Bonjour à tous, la réunion commence maintenant.", "fr"),
                             silence(1.5)])
    lines = await speak_alone(server, transcripts, room_name, ("zoe", "Zoé"), speech, 1)
    R.check("the room's metadata language applies (French speech, an English-only room)",
            len(lines) == 1 and lines[0]["language"] == "en",
            json.dumps([(l["language"], l["text"]) for l in lines], ensure_ascii=False))


def main() -> int:
    binary = os.environ.get("PARLOIR_BIN")
    if not binary:
        print("PARLOIR_BIN is not set", file=sys.stderr)
        print("0 passed, 1 failed")
        return 1
    server = Server(os.path.abspath(binary))
    transcripts = tempfile.mkdtemp(prefix="parloir-transcripts-")
    sink = WebhookSink()
    sink.refuse_first = 0
    server.extra_args = ["--speech", "--speech-languages", "fr,en", "--transcripts-dir", transcripts,
                         "--webhook-url", sink.url]
    try:
        server.start()
        asyncio.run(scenario(server, transcripts, sink))
        asyncio.run(shared_microphone(server, transcripts))
        asyncio.run(room_languages(server, transcripts))
    except Exception as e:  # reported as a failure, with the server log below
        R.check("scenario ran to the end", False, f"{type(e).__name__}: {e}")
    finally:
        server.stop()
    print(f"{R.passed} passed, {R.failed} failed")
    if R.failed:
        with open(server.log_path, errors="replace") as f:
            print(f.read()[-4000:])
    return 1 if R.failed else 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # As in test_python_sdk.py: the FFI library keeps native threads, and its teardown at
    # interpreter exit has aborted the process after every check had passed.
    os._exit(code)

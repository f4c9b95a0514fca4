#!/usr/bin/env python3
"""End-to-end test of the speech plane's input: a LiveKit Python SDK participant publishes two
sentences spoken by espeak-ng (real Opus, encoded by the SDK's WebRTC stack) to a `parloir serve
--speech`; the server decodes them, resamples to 16 kHz and finds the speech with Silero VAD.

Run:  PARLOIR_BIN=target/release/parloir tests/sdk/.venv/bin/python tests/sdk/test_speech.py
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import wave

import numpy as np
from livekit import rtc

from test_python_sdk import R, Server, bounded, log, token

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


def metrics(server: Server) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("parloir_speech_"):
            name, value = line.rsplit(" ", 1)
            out[name] = int(value)
    return out


async def scenario(server: Server) -> None:
    room_name = f"speech-{uuid.uuid4().hex[:8]}"
    # 1 s of silence, a sentence, 1.5 s of silence, a sentence, 2 s of silence.
    silence = lambda s: np.zeros(int(s * SAMPLE_RATE), dtype=np.int16)  # noqa: E731
    speech = np.concatenate([
        silence(1.0),
        spoken("Bonjour à tous, la réunion commence maintenant.", "fr"),
        silence(1.5),
        spoken("Good morning everyone, the meeting starts now.", "en"),
        silence(2.0),
    ])
    alice = rtc.Room()
    source = rtc.AudioSource(SAMPLE_RATE, 1)
    try:
        await bounded(alice.connect(server.url, token("alice", "Alice Martin", room_name)), "alice to connect")
        track = rtc.LocalAudioTrack.create_audio_track("mic", source)
        await bounded(alice.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)), "publish")
        before = metrics(server)
        t0 = time.monotonic()
        for i in range(0, len(speech) - FRAME + 1, FRAME):
            chunk = speech[i:i + FRAME]
            await source.capture_frame(rtc.AudioFrame(chunk.tobytes(), SAMPLE_RATE, 1, FRAME))
        log(f"published {len(speech) / SAMPLE_RATE:.1f} s of audio in {time.monotonic() - t0:.1f} s")
        # The last segment ends after 400 ms of silence; give the plane a moment.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            after = metrics(server)
            if after["parloir_speech_segments_total"] - before["parloir_speech_segments_total"] >= 2:
                break
            await asyncio.sleep(0.2)
        after = metrics(server)
        frames = after["parloir_speech_frames_total"] - before["parloir_speech_frames_total"]
        segments = after["parloir_speech_segments_total"] - before["parloir_speech_segments_total"]
        R.check("the speech plane received alice's audio", frames > 200, f"{frames} frames")
        R.check("every frame decoded", after["parloir_speech_decode_errors_total"] == 0,
                f"{after['parloir_speech_decode_errors_total']} errors")
        R.check("nothing dropped", after["parloir_speech_dropped_total"] == 0,
                f"{after['parloir_speech_dropped_total']} dropped")
        R.check("two sentences, two speech segments", segments == 2, f"{segments} segments")
        with open(server.log_path, errors="replace") as f:
            found = [l for l in f if "speech segment" in l and "Alice Martin" in l]
        R.check("segments carry the speaker's name", len(found) >= 2, "".join(found[-2:]).strip())
    finally:
        await source.aclose()
        if alice.isconnected():
            await asyncio.wait_for(alice.disconnect(), 10)


def main() -> int:
    binary = os.environ.get("PARLOIR_BIN")
    if not binary:
        print("PARLOIR_BIN is not set", file=sys.stderr)
        print("0 passed, 1 failed")
        return 1
    server = Server(os.path.abspath(binary))
    server.extra_args = ["--speech"]
    try:
        server.start()
        asyncio.run(scenario(server))
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

#!/usr/bin/env python3
"""Subtitle latency: from the end of a spoken word to its text arriving at another participant.

N speakers (LiveKit Python SDK participants) speak at the same time in one room of a `parloir
serve --speech`; each says sentences built word by word with espeak-ng, so the instant each word
ends in the published audio is known. A listener receives the `lk.transcription` text streams.
A word has arrived when a received text (interim or final) for its speaker first holds it: the
reference words are aligned to the received words (edit distance), and a word aligned to a
received word counts (a misheard word still arrived). Latency = arrival - the word's end.

    PARLOIR_BIN=target/release/parloir tests/sdk/.venv/bin/python perf/subtitle-latency.py \
        --speakers 1 --speakers 4 --json perf/results/subtitle-latency.json

Also reports what the server's speech plane spent (parloir_speech_asr_busy_microseconds_total)
over the speech time: the share of its cores that N live speakers keep busy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import wave

import numpy as np
from livekit import rtc

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "sdk"))
from test_python_sdk import Server, token  # noqa: E402

RATE = 48000
FRAME = RATE // 100  # 10 ms
# Each speaker says these, in turn starting from a different one, 0.8 s apart.
SENTENCES = [
    "Good morning everyone the meeting starts now",
    "We will review the budget for next year",
    "Paul will send the report on Friday",
    "The new office in Lyon opens in September",
    "Please send your questions by email before noon",
    "Each team will present its plan next week",
]
GAP_S = 0.8
VOICES = ["en", "en-us", "en+m3", "en-us+f2"]


def words(text: str) -> list[str]:
    return [w for w in re.split(r"[^\w']+", text.lower()) if w]


def synth(word: str, voice: str) -> np.ndarray:
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run(["espeak-ng", "-v", voice, "-w", f.name, word], check=True)
        with wave.open(f.name) as w:
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float64)
    # Trim espeak-ng's own leading and trailing silence, keep 30 ms either side.
    loud = np.nonzero(np.abs(pcm) > 300)[0]
    if len(loud):
        pad = int(0.03 * rate)
        pcm = pcm[max(0, loud[0] - pad):loud[-1] + pad]
    t_out = np.arange(int(len(pcm) * RATE / rate)) / RATE
    return np.interp(t_out, np.arange(len(pcm)) / rate, pcm).astype(np.int16)


def script(speaker: int) -> tuple[np.ndarray, list[tuple[int, str, int]]]:
    """The speaker's audio and, per word, (sentence index, word, sample where it ends)."""
    voice = VOICES[speaker % len(VOICES)]
    parts, marks, at = [np.zeros(int(0.5 * RATE), np.int16)], [], int(0.5 * RATE)
    order = SENTENCES[speaker % len(SENTENCES):] + SENTENCES[:speaker % len(SENTENCES)]
    for s, sentence in enumerate(order[:4]):
        for word in sentence.split():
            pcm = synth(word, voice)
            parts.append(pcm)
            at += len(pcm)
            marks.append((s, word.lower(), at))
            gap = np.zeros(int(0.04 * RATE), np.int16)
            parts.append(gap)
            at += len(gap)
        pause = np.zeros(int(GAP_S * RATE), np.int16)
        parts.append(pause)
        at += len(pause)
    parts.append(np.zeros(RATE, np.int16))
    return np.concatenate(parts), marks


def align(ref: list[str], hyp: list[str]) -> list[bool]:
    """For each reference word, whether the edit-distance alignment pairs it with a hypothesis
    word (match or substitution) rather than deleting it."""
    n, m = len(ref), len(hyp)
    d = np.zeros((n + 1, m + 1), dtype=np.int32)
    d[:, 0] = np.arange(n + 1)
    d[0, :] = np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i, j] = min(d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]), d[i - 1, j] + 1, d[i, j - 1] + 1)
    paired = [False] * n
    i, j = n, m
    while i > 0 and j > 0:
        if d[i, j] == d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]):
            paired[i - 1] = True
            i, j = i - 1, j - 1
        elif d[i, j] == d[i - 1, j] + 1:
            i -= 1
        else:
            j -= 1
    return paired


def metric(server: Server, name: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return int(line.split()[1])
    return 0


async def run(server: Server, speakers: int) -> dict:
    room_name = f"latency-{speakers}-{uuid.uuid4().hex[:6]}"
    listener = rtc.Room()
    received: dict[str, list[tuple[float, str, str]]] = {}  # identity -> (arrival, segment, text)
    tasks = []

    def on_stream(reader, identity: str) -> None:
        async def read() -> None:
            text = await reader.read_all()
            seg = reader.info.attributes.get("lk.segment_id", "")
            received.setdefault(identity, []).append((time.monotonic(), seg, text))
        tasks.append(asyncio.ensure_future(read()))

    listener.register_text_stream_handler("lk.transcription", on_stream)
    await listener.connect(server.url, token("listener", "Listener", room_name))
    rooms, sources, scripts = [], [], []
    for k in range(speakers):
        room = rtc.Room()
        await room.connect(server.url, token(f"speaker{k}", f"Speaker {k}", room_name))
        # A short queue: a captured frame goes out within ~50 ms, so capture time ≈ send time.
        source = rtc.AudioSource(RATE, 1, queue_size_ms=50)
        track = rtc.LocalAudioTrack.create_audio_track("mic", source)
        await room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
        rooms.append(room)
        sources.append(source)
        scripts.append(script(k))
    await asyncio.sleep(1.0)
    busy0 = metric(server, "parloir_speech_asr_busy_microseconds_total")
    word_end: list[list[float]] = [[0.0] * len(m) for _, m in scripts]

    async def speak(k: int) -> None:
        audio, marks = scripts[k]
        start = time.monotonic()
        next_mark = 0
        for i in range(0, len(audio) - FRAME + 1, FRAME):
            await sources[k].capture_frame(rtc.AudioFrame(audio[i:i + FRAME].tobytes(), RATE, 1, FRAME))
            end = i + FRAME
            while next_mark < len(marks) and marks[next_mark][2] <= end:
                word_end[k][next_mark] = time.monotonic()
                next_mark += 1
        return time.monotonic() - start

    t0 = time.monotonic()
    await asyncio.gather(*(speak(k) for k in range(speakers)))
    await asyncio.sleep(3.0)
    wall = time.monotonic() - t0
    busy = metric(server, "parloir_speech_asr_busy_microseconds_total") - busy0
    for t in tasks:
        t.cancel()
    latencies, missed, finals_wer = [], 0, []
    for k in range(speakers):
        _, marks = scripts[k]
        got = received.get(f"speaker{k}", [])
        # Group the reference words and the received texts by utterance: the n-th segment id
        # seen is the n-th sentence (each sentence is one utterance: the pause ends it).
        segments = list(dict.fromkeys(seg for _, seg, _ in got))
        for s in range(max(m[0] for m in marks) + 1):
            idx = [i for i, m in enumerate(marks) if m[0] == s]
            ref = [marks[i][1] for i in idx]
            arrived = [None] * len(ref)
            if s < len(segments):
                for at, seg, text in got:
                    if seg != segments[s]:
                        continue
                    for j, ok in enumerate(align(ref, words(text))):
                        if ok and arrived[j] is None:
                            arrived[j] = at
            for j, i in enumerate(idx):
                if arrived[j] is None:
                    missed += 1
                else:
                    latencies.append(arrived[j] - word_end[k][i])
    for room in [listener, *rooms]:
        await room.disconnect()
    lat = np.array(latencies) if latencies else np.array([float("nan")])
    words_total = sum(len(m) for _, m in scripts)
    return {
        "speakers": speakers,
        "words": words_total,
        "arrived": len(latencies),
        "missed": missed,
        "p50_s": float(np.percentile(lat, 50)),
        "p95_s": float(np.percentile(lat, 95)),
        "max_s": float(np.max(lat)),
        "speech_wall_s": wall,
        "asr_busy_s": busy / 1e6,
        "asr_busy_share": busy / 1e6 / wall,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--speakers", type=int, action="append", default=None)
    p.add_argument("--json")
    args = p.parse_args()
    binary = os.environ.get("PARLOIR_BIN")
    if not binary:
        print("PARLOIR_BIN is not set", file=sys.stderr)
        return 2
    server = Server(os.path.abspath(binary))
    transcripts = tempfile.mkdtemp(prefix="parloir-latency-")
    server.extra_args = ["--speech", "--speech-languages", "en", "--transcripts-dir", transcripts]
    results = []
    try:
        server.start()
        for n in args.speakers or [1, 4]:
            r = asyncio.run(run(server, n))
            results.append(r)
            print(f"{n} speaker(s): {r['arrived']}/{r['words']} words arrived, latency p50 "
                  f"{r['p50_s']:.2f} s, p95 {r['p95_s']:.2f} s, max {r['max_s']:.2f} s; Whisper busy "
                  f"{r['asr_busy_s']:.1f} s over {r['speech_wall_s']:.1f} s ({100 * r['asr_busy_share']:.0f}%)")
    finally:
        server.stop()
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"results": results}, f, indent=1)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()

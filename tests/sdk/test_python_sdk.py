#!/usr/bin/env python3
"""End-to-end test: the LiveKit Python SDK (PyPI `livekit`, built on the Rust SDK's
liblivekit_ffi) against a real `parloir` server.

Run:  PARLOIR_BIN=target/release/parloir tests/sdk/.venv/bin/python tests/sdk/test_python_sdk.py

It starts `$PARLOIR_BIN serve --dev` on free ports and, once with the SDK's default options (one
peer connection on `/rtc/v1`) and once with `single_peer_connection=False` (two on `/rtc`), joins two participants (alice publishes a 440 Hz tone and a
solid-colour video, bob subscribes), checks media, reliable data and leave, then kills the server
and prints `N passed, N failed` (exit status 1 on any failure).
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
import uuid
import warnings

import numpy as np
from livekit import api, rtc
from livekit.rtc.version import __version__ as RTC_VERSION

try:
    from livekit.api.version import __version__ as API_VERSION
except Exception:  # pragma: no cover - only for the banner
    API_VERSION = "?"

# The dev secret "secret" is shorter than PyJWT likes; that is the point of --dev.
warnings.filterwarnings("ignore", message=".*HMAC key.*")

API_KEY = "devkey"
API_SECRET = "secret"
WAIT_S = float(os.environ.get("SDK_WAIT_S", "30"))  # bound on every single wait
VERBOSE = os.environ.get("SDK_VERBOSE") == "1"

SAMPLE_RATE = 48000
FRAME_SAMPLES = SAMPLE_RATE // 100  # 10 ms
TONE_HZ = 440.0
WIDTH, HEIGHT = 320, 240
FPS = 15
COLOUR = (200, 40, 90)  # solid RGB colour of every video frame


# --------------------------------------------------------------------------- results

class Results:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0
        self.failures: list[str] = []

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            print(f"ok   - {name}" + (f" ({detail})" if detail else ""), flush=True)
        else:
            self.failed += 1
            self.failures.append(name)
            print(f"FAIL - {name}" + (f": {detail}" if detail else ""), flush=True)
        return ok


R = Results()


def log(msg: str) -> None:
    print(f"# {msg}", flush=True)


# --------------------------------------------------------------------------- server

def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.http_port = int(os.environ.get("PARLOIR_SDK_HTTP_PORT") or free_port(socket.SOCK_STREAM))
        self.udp_port = int(os.environ.get("PARLOIR_SDK_UDP_PORT") or free_port(socket.SOCK_DGRAM))
        self.log_path = os.path.join(tempfile.gettempdir(), f"parloir-sdk-server-{os.getpid()}.log")
        self.proc: subprocess.Popen | None = None
        self.extra_args: list[str] = []
        self.prefix: list[str] = []  # a command the server runs under (e.g. prlimit)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.setdefault("NO_COLOR", "1")  # plain text in the log file
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [*self.prefix, self.binary, "serve", "--dev",
             "--http-addr", f"127.0.0.1:{self.http_port}",
             "--udp-port", str(self.udp_port), "--tcp-port", "0", *self.extra_args],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} before /healthz answered")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not answer /healthz with 200 within {WAIT_S:.0f} s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if hasattr(self, "_log"):
            self._log.close()

    def tail(self, n: int = 80) -> str:
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError as e:
            return f"(no server log: {e})"


def token(identity: str, name: str, room: str) -> str:
    return (
        api.AccessToken(API_KEY, API_SECRET)
        .with_identity(identity)
        .with_name(name)
        .with_grants(api.VideoGrants(room_join=True, room=room, can_publish=True,
                                     can_subscribe=True, can_publish_data=True))
        .to_jwt()
    )


# --------------------------------------------------------------------------- helpers

async def bounded(aw, what: str, timeout: float = WAIT_S):
    """Awaits `aw` for at most `timeout` s; raises TimeoutError naming `what`."""
    try:
        return await asyncio.wait_for(aw, timeout)
    except asyncio.TimeoutError:
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}") from None


async def push_audio(source: rtc.AudioSource, stop: asyncio.Event) -> None:
    """440 Hz sine, 48 kHz mono, 10 ms frames, paced by capture_frame's queue."""
    n = 0
    amp = 0.5 * 32767
    while not stop.is_set():
        t = (np.arange(FRAME_SAMPLES) + n) / SAMPLE_RATE
        samples = (amp * np.sin(2 * math.pi * TONE_HZ * t)).astype(np.int16)
        frame = rtc.AudioFrame(samples.tobytes(), SAMPLE_RATE, 1, FRAME_SAMPLES)
        await source.capture_frame(frame)
        n += FRAME_SAMPLES


async def push_video(source: rtc.VideoSource, stop: asyncio.Event) -> None:
    rgba = bytes(bytearray(COLOUR + (255,)) * (WIDTH * HEIGHT))
    frame = rtc.VideoFrame(WIDTH, HEIGHT, rtc.VideoBufferType.RGBA, rgba)
    start = time.monotonic()
    i = 0
    while not stop.is_set():
        source.capture_frame(frame, timestamp_us=int((time.monotonic() - start) * 1e6))
        i += 1
        await asyncio.sleep(max(0.0, start + i / FPS - time.monotonic()))


class AudioStats:
    def __init__(self) -> None:
        self.frames = 0
        self.samples: list[np.ndarray] = []  # the last ~2 s
        self.enough = asyncio.Event()


class VideoStats:
    def __init__(self) -> None:
        self.frames = 0
        self.sizes: set[tuple[int, int]] = set()
        self.last_rgb: tuple[float, float, float] | None = None
        self.enough = asyncio.Event()


AUDIO_FRAMES_WANTED = 200  # 2 s of 10 ms frames
VIDEO_FRAMES_WANTED = 20


async def consume_audio(track: rtc.Track, stats: AudioStats) -> None:
    stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
    try:
        async for ev in stream:
            stats.frames += 1
            stats.samples.append(np.frombuffer(ev.frame.data, dtype=np.int16).astype(np.float64))
            if len(stats.samples) > 200:
                stats.samples.pop(0)
            if stats.frames >= AUDIO_FRAMES_WANTED:
                stats.enough.set()
    finally:
        await stream.aclose()


async def consume_video(track: rtc.Track, stats: VideoStats) -> None:
    stream = rtc.VideoStream(track)
    try:
        async for ev in stream:
            f = ev.frame
            stats.frames += 1
            stats.sizes.add((f.width, f.height))
            if stats.frames % 5 == 0 or stats.frames == 1:
                rgba = np.frombuffer(f.convert(rtc.VideoBufferType.RGBA).data, dtype=np.uint8)
                px = rgba.reshape(-1, 4)[:, :3].astype(np.float64)
                stats.last_rgb = tuple(float(v) for v in px.mean(axis=0))
            if stats.frames >= VIDEO_FRAMES_WANTED:
                stats.enough.set()
    finally:
        await stream.aclose()


# --------------------------------------------------------------------------- scenario

async def scenario(server: Server, label: str, options: rtc.RoomOptions) -> None:
    room_name = f"sdk-{label}-{uuid.uuid4().hex[:8]}"
    log(f"[{label}] room {room_name}, server {server.url}")

    def check(name: str, ok: bool, detail: str = "") -> bool:
        return R.check(f"[{label}] {name}", ok, detail)

    bob = rtc.Room()
    alice = rtc.Room()
    loop = asyncio.get_running_loop()

    bob_saw_alice = asyncio.Event()
    bob_subscribed: dict[str, asyncio.Future] = {"audio": loop.create_future(), "video": loop.create_future()}
    bob_data: asyncio.Future = loop.create_future()
    bob_saw_alice_leave = asyncio.Event()
    audio_stats, video_stats = AudioStats(), VideoStats()
    tasks: list[asyncio.Task] = []

    @bob.on("participant_connected")
    def _on_pc(p: rtc.RemoteParticipant) -> None:
        log(f"bob: participant_connected {p.identity} ({p.sid})")
        if p.identity == "alice":
            bob_saw_alice.set()

    @bob.on("track_subscribed")
    def _on_ts(track: rtc.Track, pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant) -> None:
        log(f"bob: track_subscribed {track.kind} {pub.sid} from {p.identity}")
        if p.identity != "alice":
            return
        if track.kind == rtc.TrackKind.KIND_AUDIO and not bob_subscribed["audio"].done():
            bob_subscribed["audio"].set_result(track)
            tasks.append(asyncio.ensure_future(consume_audio(track, audio_stats)))
        elif track.kind == rtc.TrackKind.KIND_VIDEO and not bob_subscribed["video"].done():
            bob_subscribed["video"].set_result(track)
            tasks.append(asyncio.ensure_future(consume_video(track, video_stats)))

    @bob.on("data_received")
    def _on_data(pkt: rtc.DataPacket) -> None:
        who = pkt.participant.identity if pkt.participant else None
        log(f"bob: data_received {len(pkt.data)} B from {who} topic={pkt.topic!r} kind={pkt.kind}")
        if not bob_data.done():
            bob_data.set_result(pkt)

    @bob.on("participant_disconnected")
    def _on_pd(p: rtc.RemoteParticipant) -> None:
        log(f"bob: participant_disconnected {p.identity}")
        if p.identity == "alice":
            bob_saw_alice_leave.set()

    stop_media = asyncio.Event()
    audio_source = rtc.AudioSource(SAMPLE_RATE, 1)
    video_source = rtc.VideoSource(WIDTH, HEIGHT)

    try:
        # -- join: bob first, then alice (so bob gets participant_connected)
        t0 = time.monotonic()
        await bounded(bob.connect(server.url, token("bob", "Bob", room_name), options), "bob to connect")
        check("bob connects", bob.connection_state == rtc.ConnectionState.CONN_CONNECTED,
                f"{time.monotonic() - t0:.1f} s, sid {bob.local_participant.sid}")
        t0 = time.monotonic()
        await bounded(alice.connect(server.url, token("alice", "Alice", room_name), options), "alice to connect")
        check("alice connects", alice.connection_state == rtc.ConnectionState.CONN_CONNECTED,
                f"{time.monotonic() - t0:.1f} s, sid {alice.local_participant.sid}")
        check("room name and sids", alice.name == room_name and bob.name == room_name
                and alice.local_participant.sid.startswith("PA_")
                and bob.local_participant.sid.startswith("PA_"),
                f"room {alice.name!r}/{bob.name!r}")
        if "bob" in alice.remote_participants:
            check("alice lists bob (other_participants)", True)
        else:
            check("alice lists bob (other_participants)", False,
                    f"remote_participants={list(alice.remote_participants)}")

        try:
            await bounded(bob_saw_alice.wait(), "bob's participant_connected for alice")
        except TimeoutError as e:
            check("bob sees alice (participant_connected)", False, str(e))
        else:
            p = bob.remote_participants.get("alice")
            check("bob sees alice (participant_connected)",
                    p is not None and p.name == "Alice" and p.sid.startswith("PA_"),
                    f"name {p.name!r} sid {p.sid}" if p else "not in remote_participants")

        # -- alice publishes audio + video, and starts pushing media
        tasks.append(asyncio.ensure_future(push_audio(audio_source, stop_media)))
        tasks.append(asyncio.ensure_future(push_video(video_source, stop_media)))
        a_track = rtc.LocalAudioTrack.create_audio_track("sine-440", audio_source)
        v_track = rtc.LocalVideoTrack.create_video_track("solid", video_source)
        a_pub = await bounded(alice.local_participant.publish_track(
            a_track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)),
            "alice's audio publish")
        check("alice publishes audio", a_pub.sid.startswith("TR_"), f"sid {a_pub.sid}")
        v_pub = await bounded(alice.local_participant.publish_track(
            v_track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA)),
            "alice's video publish")
        check("alice publishes video", v_pub.sid.startswith("TR_"), f"sid {v_pub.sid}")

        # -- bob subscribes to both
        for kind, pub in (("audio", a_pub), ("video", v_pub)):
            try:
                track = await bounded(asyncio.shield(bob_subscribed[kind]), f"bob's track_subscribed ({kind})")
                check(f"bob subscribed to alice's {kind}", track.sid == pub.sid,
                        f"sid {track.sid}, published {pub.sid}")
            except TimeoutError as e:
                check(f"bob subscribed to alice's {kind}", False, str(e))

        # -- media actually flows
        if bob_subscribed["audio"].done():
            try:
                await bounded(audio_stats.enough.wait(), f"{AUDIO_FRAMES_WANTED} audio frames at bob")
                check("bob receives audio frames", True, f"{audio_stats.frames} frames")
                # let the last ~2 s of the buffer be real decoded audio, not start-up silence
                await asyncio.sleep(1.0)
                sig = np.concatenate(audio_stats.samples)
                rms = float(np.sqrt(np.mean(sig ** 2)))
                check("received audio is not silence", rms > 1000.0,
                        f"RMS {rms:.0f} over {len(sig) / SAMPLE_RATE:.2f} s (sent ~11585)")
                spec = np.abs(np.fft.rfft(sig * np.hanning(len(sig))))
                peak_hz = float(np.argmax(spec[1:]) + 1) * SAMPLE_RATE / len(sig)
                check("received audio peaks at 440 Hz", abs(peak_hz - TONE_HZ) < 15.0,
                        f"peak {peak_hz:.1f} Hz")
            except TimeoutError as e:
                check("bob receives audio frames", False, f"{e}; got {audio_stats.frames}")
        if bob_subscribed["video"].done():
            try:
                await bounded(video_stats.enough.wait(), f"{VIDEO_FRAMES_WANTED} video frames at bob")
                check("bob receives video frames", True,
                        f"{video_stats.frames} frames, sizes {sorted(video_stats.sizes)}")
                rgb = video_stats.last_rgb or (0.0, 0.0, 0.0)
                check("received video has the sent colour",
                        all(abs(a - b) < 30.0 for a, b in zip(rgb, COLOUR)),
                        f"mean RGB ({rgb[0]:.0f}, {rgb[1]:.0f}, {rgb[2]:.0f}), sent {COLOUR}")
            except TimeoutError as e:
                check("bob receives video frames", False, f"{e}; got {video_stats.frames}")

        # -- reliable data from alice to bob
        payload = b"parloir\x00sdk-data \xe2\x9c\x93 " + uuid.uuid4().bytes
        await bounded(alice.local_participant.publish_data(payload, reliable=True, topic="sdk-test"),
                      "alice's publish_data")
        try:
            pkt: rtc.DataPacket = await bounded(asyncio.shield(bob_data), "bob's data_received")
            who = pkt.participant.identity if pkt.participant else None
            check("bob receives alice's data", pkt.data == payload and who == "alice",
                    f"{len(pkt.data)} B from {who!r}, topic {pkt.topic!r}")
            check("data packet is reliable with its topic",
                    pkt.kind == rtc.DataPacketKind.KIND_RELIABLE and pkt.topic == "sdk-test",
                    f"kind {pkt.kind}, topic {pkt.topic!r}")
        except TimeoutError as e:
            check("bob receives alice's data", False, str(e))

        # -- alice leaves
        stop_media.set()
        await bounded(alice.disconnect(), "alice's disconnect")
        try:
            await bounded(bob_saw_alice_leave.wait(), "bob's participant_disconnected for alice")
            check("bob sees alice leave (participant_disconnected)", "alice" not in bob.remote_participants)
        except TimeoutError as e:
            check("bob sees alice leave (participant_disconnected)", False, str(e))
    finally:
        stop_media.set()
        for t in tasks:
            t.cancel()
        try:
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        except asyncio.TimeoutError:
            log("media tasks did not stop within 10 s")
        for room in (alice, bob):
            try:
                if room.isconnected():
                    await asyncio.wait_for(room.disconnect(), 10)
            except Exception:
                pass
        for src in (audio_source, video_source):
            try:
                await asyncio.wait_for(src.aclose(), 5)
            except Exception:
                pass


# Each scenario runs in its own room, with the signal path it must use. "default" keeps the
# SDK's defaults: one peer connection on /rtc/v1 (it would fall back to /rtc on a 404, which the
# path check below catches). "v0" opts out and goes to /rtc.
SCENARIOS = [
    ("default", rtc.RoomOptions(), "/rtc/v1"),
    ("v0", rtc.RoomOptions(single_peer_connection=False), "/rtc"),
]


def signal_connections(server: Server, path: str) -> int:
    """Signal connections the server accepted on `path`, from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    prefix = f'parloir_signal_connections_total{{path="{path}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return int(line[len(prefix):])
    raise AssertionError(f"/metrics has no signal connection counter for {path}")


def main() -> int:
    binary = os.environ.get("PARLOIR_BIN")
    if not binary:
        print("PARLOIR_BIN is not set (path of the parloir binary)", file=sys.stderr)
        print("0 passed, 1 failed")
        return 1
    binary = os.path.abspath(binary)
    log(f"livekit (rtc) {RTC_VERSION}, livekit-api {API_VERSION}, python {sys.version.split()[0]}")
    log(f"server binary {binary}")

    server = Server(binary)
    t_start = time.monotonic()
    try:
        server.start()
        log(f"server up on http 127.0.0.1:{server.http_port}, udp {server.udp_port}; log {server.log_path}")
        for label, options, path in SCENARIOS:
            before = signal_connections(server, path)
            try:
                asyncio.run(scenario(server, label, options))
            except Exception as e:
                R.check(f"[{label}] scenario ran to the end", False, f"{type(e).__name__}: {e}")
                traceback.print_exc()
            joins = signal_connections(server, path) - before
            R.check(f"[{label}] both participants joined on {path}", joins == 2, f"{joins} joins")
    except Exception as e:
        R.check("server starts", False, f"{type(e).__name__}: {e}")
        traceback.print_exc()
    finally:
        server.stop()

    log(f"took {time.monotonic() - t_start:.1f} s")
    if R.failed or VERBOSE:
        print(f"--- server log tail ({server.log_path}) ---")
        print(server.tail())
        print("--- end of server log ---")
    print(f"{R.passed} passed, {R.failed} failed", flush=True)
    return 1 if R.failed else 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # The FFI library keeps native threads; do not let interpreter teardown hang on them.
    os._exit(code)

#!/usr/bin/env python3
"""End-to-end test of recording through LiveKit's Egress API with LiveKit's Python SDKs: the
server SDK (`livekit-api`, protobuf Twirp) drives the egress, the realtime SDK (`livekit`)
publishes a solid-colour camera and a tone.

Run:  PARLOIR_BIN=target/release/parloir tests/sdk/.venv/bin/python tests/sdk/test_egress.py

Checks: a participant egress and an audio track egress through the SDK, ListEgress and
StopEgress, the egress_started / egress_ended webhooks, the files (ffprobe, decoded colour);
that a recording which runs out of disk (a file-size limit, as a full disk or a quota) fails
alone, with its error in ListEgress and the webhook, while the meeting goes on; and that
killing the server in the middle of a room composite leaves a playable file.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from livekit import api, rtc

from test_python_sdk import (API_KEY, API_SECRET, COLOUR, R, Server, bounded, log, push_audio,
                             push_video, token, HEIGHT, WIDTH)
from test_python_sdk import free_port as _free_port
from test_room_service import WebhookSink, until


def free_port() -> int:
    return _free_port(socket.SOCK_STREAM)


def probe(path: str) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries",
         "stream=codec_type,codec_name,width,height:format=duration", "-of", "json", path],
        capture_output=True, check=False)
    return json.loads(out.stdout or b"{}")


def mean_rgb(path: str, seconds: float, width: int, height: int) -> tuple[int, int, int]:
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-ss", str(seconds), "-i", path, "-frames:v", "1", "-f", "rawvideo",
         "-pix_fmt", "rgb24", "-"], capture_output=True, check=False).stdout
    if len(raw) != width * height * 3:
        return (-1, -1, -1)
    # The centre quarter of the frame.
    sums = [0, 0, 0]
    n = 0
    for y in range(height // 4, 3 * height // 4, 4):
        row = y * width * 3
        for x in range(width // 4, 3 * width // 4, 4):
            for c in range(3):
                sums[c] += raw[row + 3 * x + c]
            n += 1
    return tuple(round(s / n) for s in sums)


def recorder_api(server: Server) -> api.LiveKitAPI:
    return api.LiveKitAPI(f"http://127.0.0.1:{server.http_port}", API_KEY, API_SECRET)


async def publish(server: Server, room_name: str, identity: str, stop: asyncio.Event) -> tuple[rtc.Room, list]:
    room = rtc.Room()
    await bounded(room.connect(server.url, token(identity, identity, room_name)), f"{identity} joins")
    audio = rtc.AudioSource(48000, 1)
    video = rtc.VideoSource(WIDTH, HEIGHT)
    mic = rtc.LocalAudioTrack.create_audio_track("mic", audio)
    cam = rtc.LocalVideoTrack.create_video_track("cam", video)
    pubs = [
        await room.local_participant.publish_track(mic, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)),
        await room.local_participant.publish_track(cam, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA)),
    ]
    tasks = [asyncio.create_task(push_audio(audio, stop)), asyncio.create_task(push_video(video, stop))]
    return room, pubs + tasks


async def wait_done(lk: api.LiveKitAPI, egress_id: str, timeout: float = 30) -> api.EgressInfo | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = (await lk.egress.list_egress(api.ListEgressRequest(egress_id=egress_id))).items
        if items and items[0].status in (api.EgressStatus.EGRESS_COMPLETE, api.EgressStatus.EGRESS_FAILED):
            return items[0]
        await asyncio.sleep(0.2)
    return None


async def sdk_egresses(server: Server, sink: WebhookSink) -> None:
    room_name = "egress-sdk"
    stop = asyncio.Event()
    room, held = await publish(server, room_name, "alice", stop)
    lk = recorder_api(server)
    try:
        await asyncio.sleep(1.0)
        mic_sid = held[0].sid
        participant = await lk.egress.start_participant_egress(api.ParticipantEgressRequest(
            room_name=room_name, identity="alice",
            file_outputs=[api.EncodedFileOutput(filepath="sdk/{publisher_identity}.mp4")],
            advanced=api.EncodingOptions(width=320, height=240, framerate=15)))
        R.check("StartParticipantEgress answers an active egress",
                participant.status == api.EgressStatus.EGRESS_ACTIVE and participant.egress_id.startswith("EG_"),
                f"status {participant.status}")
        track = await lk.egress.start_track_egress(api.TrackEgressRequest(
            room_name=room_name, track_id=mic_sid, file=api.DirectFileOutput(filepath="sdk/mic")))
        active = (await lk.egress.list_egress(api.ListEgressRequest(room_name=room_name, active=True))).items
        R.check("ListEgress lists both", {e.egress_id for e in active} == {participant.egress_id, track.egress_id},
                f"{[e.egress_id for e in active]}")
        await asyncio.sleep(5.0)
        for e in (participant, track):
            await lk.egress.stop_egress(api.StopEgressRequest(egress_id=e.egress_id))
        done_p = await wait_done(lk, participant.egress_id)
        done_t = await wait_done(lk, track.egress_id)
        ok = done_p is not None and done_p.status == api.EgressStatus.EGRESS_COMPLETE
        R.check("the participant egress completes", ok, str(done_p and done_p.error))
        if ok:
            f = done_p.file_results[0]
            info = probe(f.filename)
            kinds = sorted(s["codec_name"] for s in info.get("streams", []))
            R.check("its file is H.264 + AAC at 320x240", kinds == ["aac", "h264"] and any(
                s.get("width") == 320 and s.get("height") == 240 for s in info["streams"]), f"{info}")
            duration = float(info.get("format", {}).get("duration", 0))
            R.check("its duration is what was recorded", abs(duration - f.duration / 1e9) < 0.2 and 4.5 < duration < 7,
                    f"{duration:.2f} s, reported {f.duration / 1e9:.2f} s")
            rgb = mean_rgb(f.filename, duration - 1.5, 320, 240)
            R.check("it shows alice's colour", all(abs(a - b) < 30 for a, b in zip(rgb, COLOUR)),
                    f"{rgb} vs {COLOUR}")
        ok = done_t is not None and done_t.status == api.EgressStatus.EGRESS_COMPLETE
        R.check("the audio track egress completes", ok, str(done_t and done_t.error))
        if ok:
            info = probe(done_t.file_results[0].filename)
            R.check("its file is Ogg/Opus", [s["codec_name"] for s in info.get("streams", [])] == ["opus"]
                    and done_t.file_results[0].filename.endswith(".ogg"), f"{info}")
        # Bad requests through the SDK.
        try:
            await lk.egress.start_room_composite_egress(api.RoomCompositeEgressRequest(
                room_name="no-such-room", layout="grid", file_outputs=[api.EncodedFileOutput(filepath="x.mp4")]))
            R.check("an unknown room is refused", False, "it was accepted")
        except api.TwirpError as e:
            R.check("an unknown room is refused", e.code == "not_found", f"{e.code}: {e.message}")
        try:
            await lk.egress.stop_egress(api.StopEgressRequest(egress_id=participant.egress_id))
            R.check("stopping an ended egress is refused", False, "it was accepted")
        except api.TwirpError as e:
            R.check("stopping an ended egress is refused", e.code == "failed_precondition", e.code)
        ok = await until(lambda: {"egress_started", "egress_ended"} <= {ev.event for ev in sink.events()},
                         "egress webhooks", 10)
        ended = [ev for ev in sink.events() if ev.event == "egress_ended"]
        R.check("egress_started and egress_ended webhooks arrive, signed", ok and any(
            ev.egress_info.egress_id == participant.egress_id and ev.egress_info.status == api.EgressStatus.EGRESS_COMPLETE
            for ev in ended), f"{[ev.event for ev in sink.events()]}")
    finally:
        stop.set()
        await lk.aclose()
        await room.disconnect()


async def start_when_listening(lk: api.LiveKitAPI, request: api.RoomCompositeEgressRequest):
    """Starts a room composite with a stream output, retrying while the ffmpeg tool that plays
    the streaming platform starts listening; None if it never does."""
    for _ in range(50):
        try:
            return await lk.egress.start_room_composite_egress(request)
        except api.TwirpError:
            await asyncio.sleep(0.1)
    return None


async def hls_and_rtmp(server: Server) -> None:
    """A room composite to HLS segments, and one to an RTMP server (the ffmpeg tool listening)."""
    room_name = "egress-live"
    stop = asyncio.Event()
    room, _ = await publish(server, room_name, "dave", stop)
    lk = recorder_api(server)
    port = free_port()
    received = os.path.join(tempfile.mkdtemp(prefix="parloir-rtmp-"), "received.flv")
    platform = subprocess.Popen(["ffmpeg", "-v", "error", "-listen", "1", "-i", f"rtmp://127.0.0.1:{port}/live/key",
                                 "-c", "copy", "-y", received])
    try:
        await asyncio.sleep(1.0)
        options = api.EncodingOptions(width=640, height=360, framerate=15)
        hls = await lk.egress.start_room_composite_egress(api.RoomCompositeEgressRequest(
            room_name=room_name, layout="grid", advanced=options,
            segment_outputs=[api.SegmentedFileOutput(filename_prefix="hls/{room_name}",
                                                     playlist_name="index.m3u8", segment_duration=2)]))
        rtmp = await start_when_listening(lk, api.RoomCompositeEgressRequest(
            room_name=room_name, layout="grid", advanced=options,
            stream_outputs=[api.StreamOutput(protocol=api.StreamProtocol.RTMP,
                                             urls=[f"rtmp://127.0.0.1:{port}/live/key"])]))
        R.check("a stream output to an RTMP server starts", rtmp is not None)
        await asyncio.sleep(6.0)
        for e in (hls, rtmp):
            if e is not None:
                await lk.egress.stop_egress(api.StopEgressRequest(egress_id=e.egress_id))
        done = await wait_done(lk, hls.egress_id)
        seg = done.segment_results[0] if done and done.segment_results else None
        R.check("the HLS egress completes with its segments", done is not None
                and done.status == api.EgressStatus.EGRESS_COMPLETE and seg is not None and seg.segment_count >= 2,
                f"{done}")
        if seg is not None:
            p = probe(seg.playlist_location)
            duration = float(p.get("format", {}).get("duration", 0))
            R.check("its playlist plays: H.264 + AAC, as long as recorded",
                    sorted(s["codec_name"] for s in p.get("streams", [])) == ["aac", "h264"]
                    and abs(duration - seg.duration / 1e9) < 0.6, f"{duration:.2f} s: {p}")
        if rtmp is not None:
            done = await wait_done(lk, rtmp.egress_id)
            R.check("the RTMP egress completes", done is not None and done.status == api.EgressStatus.EGRESS_COMPLETE
                    and done.stream_results and done.stream_results[0].status == api.StreamInfo.Status.FINISHED,
                    f"{done}")
            platform.wait(timeout=15)
            p = probe(received)
            duration = float(p.get("format", {}).get("duration", 0))
            R.check("the streaming server received H.264 + AAC for the whole stream",
                    sorted(s["codec_name"] for s in p.get("streams", [])) == ["aac", "h264"] and duration > 4.5,
                    f"{duration:.2f} s: {p}")
        try:
            await lk.egress.start_room_composite_egress(api.RoomCompositeEgressRequest(
                room_name=room_name, layout="grid",
                stream_outputs=[api.StreamOutput(protocol=api.StreamProtocol.SRT, urls=["srt://127.0.0.1:9"])]))
            R.check("an SRT stream is refused", False, "it was accepted")
        except api.TwirpError as e:
            R.check("an SRT stream is refused", e.code == "unimplemented", e.code)
    finally:
        if platform.poll() is None:
            platform.kill()
        stop.set()
        await lk.aclose()
        await room.disconnect()


async def record_and_stream(server: Server) -> None:
    """One egress to a file and an RTMP stream at once (one encoding); the streaming platform
    goes away mid-way: the stream is marked failed, the file records to the end."""
    room_name = "egress-both"
    stop = asyncio.Event()
    room, _ = await publish(server, room_name, "erin", stop)
    lk = recorder_api(server)
    port = free_port()
    platform = subprocess.Popen(["ffmpeg", "-v", "quiet", "-listen", "1", "-i",
                                 f"rtmp://127.0.0.1:{port}/live/key", "-f", "null", "-"])
    try:
        await asyncio.sleep(1.0)
        info = await start_when_listening(lk, api.RoomCompositeEgressRequest(
            room_name=room_name, layout="speaker",
            advanced=api.EncodingOptions(width=640, height=360, framerate=15),
            file_outputs=[api.EncodedFileOutput(filepath="both/file.mp4")],
            stream_outputs=[api.StreamOutput(protocol=api.StreamProtocol.RTMP,
                                             urls=[f"rtmp://127.0.0.1:{port}/live/key"])]))
        R.check("one egress records a file and streams at once", info is not None
                and len(info.file_results) == 1 and len(info.stream_results) == 1, f"{info}")
        if info is None:
            return
        await asyncio.sleep(3.0)
        platform.kill()
        platform.wait(timeout=10)
        await asyncio.sleep(3.0)
        await lk.egress.stop_egress(api.StopEgressRequest(egress_id=info.egress_id))
        done = await wait_done(lk, info.egress_id)
        ok = done is not None and done.status == api.EgressStatus.EGRESS_COMPLETE
        R.check("when the platform goes away the egress still completes", ok, f"{done}")
        if ok:
            s = done.stream_results[0]
            R.check("and its stream is marked failed", s.status == api.StreamInfo.Status.FAILED and s.error != "",
                    f"{s}")
            f = done.file_results[0]
            p = probe(f.filename)
            duration = float(p.get("format", {}).get("duration", 0))
            R.check("while the file has all of it", duration > 5.5 and abs(duration - f.duration / 1e9) < 0.3,
                    f"{duration:.2f} s, reported {f.duration / 1e9:.2f} s")
    finally:
        if platform.poll() is None:
            platform.kill()
        stop.set()
        await lk.aclose()
        await room.disconnect()


async def killed_mid_recording(server: Server, data_dir: str) -> None:
    room_name = "egress-kill"
    stop = asyncio.Event()
    room, _ = await publish(server, room_name, "bob", stop)
    lk = recorder_api(server)
    try:
        await asyncio.sleep(1.0)
        info = await lk.egress.start_room_composite_egress(api.RoomCompositeEgressRequest(
            room_name=room_name, layout="speaker",
            file_outputs=[api.EncodedFileOutput(filepath="kill/composite.mp4")],
            advanced=api.EncodingOptions(width=640, height=360, framerate=15)))
        await asyncio.sleep(3.0)
        updated = await lk.egress.update_layout(api.UpdateLayoutRequest(egress_id=info.egress_id,
                                                                         layout="grid-light"))
        R.check("UpdateLayout changes the layout", updated.room_composite.layout == "grid-light",
                f"{updated.room_composite.layout!r}")
        try:
            await lk.egress.update_layout(api.UpdateLayoutRequest(egress_id=info.egress_id, layout="mosaic"))
            R.check("an unknown layout is refused", False, "it was accepted")
        except api.TwirpError as e:
            R.check("an unknown layout is refused", e.code == "invalid_argument", e.code)
        await asyncio.sleep(4.0)
        path = info.file_results[0].filename
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=10)
        copy = path + ".copy.mp4"
        shutil.copy(path, copy)
        p = probe(copy)
        duration = float(p.get("format", {}).get("duration", 0))
        R.check("a server killed mid-recording leaves a playable file",
                any(s.get("codec_name") == "h264" for s in p.get("streams", [])) and duration >= 3.0,
                f"{duration:.2f} s of about 6.3 s written: {p}")
        frames = subprocess.run(["ffmpeg", "-v", "error", "-i", copy, "-f", "null", "-"],
                                capture_output=True, check=False)
        R.check("and it decodes without errors", frames.returncode == 0 and not frames.stderr.strip(),
                frames.stderr.decode(errors="replace")[-300:])
    finally:
        stop.set()
        await lk.aclose()
        await room.disconnect()


async def disk_full(server: Server, sink: WebhookSink) -> None:
    room_name = "egress-full"
    stop = asyncio.Event()
    room, _ = await publish(server, room_name, "carol", stop)
    lk = recorder_api(server)
    try:
        await asyncio.sleep(1.0)
        info = await lk.egress.start_room_composite_egress(api.RoomCompositeEgressRequest(
            room_name=room_name, layout="grid",
            file_outputs=[api.EncodedFileOutput(filepath="full/composite.mp4")],
            advanced=api.EncodingOptions(width=1280, height=720, framerate=30, video_bitrate=4000)))
        done = await wait_done(lk, info.egress_id, timeout=60)
        R.check("a recording that runs out of disk fails with its error in ListEgress",
                done is not None and done.status == api.EgressStatus.EGRESS_FAILED and done.error != "",
                f"{done and done.status}: {done and done.error}")
        ok = await until(lambda: any(ev.event == "egress_ended" and ev.egress_info.egress_id == info.egress_id
                                     and ev.egress_info.status == api.EgressStatus.EGRESS_FAILED
                                     for ev in sink.events()), "egress_ended", 10)
        R.check("and in the egress_ended webhook", ok, f"{[ev.event for ev in sink.events()]}")
        p = probe(info.file_results[0].filename)
        R.check("what it wrote before plays", any(s.get("codec_name") == "h264" for s in p.get("streams", [])),
                f"{p}")
        # The meeting went on: the publisher is still in the room and the room still answers.
        rooms = await lk.room.list_rooms(api.ListRoomsRequest(names=[room_name]))
        R.check("the meeting goes on", room.connection_state == rtc.ConnectionState.CONN_CONNECTED
                and len(rooms.rooms) == 1 and rooms.rooms[0].num_participants == 1, f"{rooms}")
    finally:
        stop.set()
        await lk.aclose()
        await room.disconnect()


def main() -> int:
    binary = os.environ.get("PARLOIR_BIN")
    if not binary:
        print("PARLOIR_BIN is not set", file=sys.stderr)
        print("0 passed, 1 failed")
        return 1
    data_dir = tempfile.mkdtemp(prefix="parloir-egress-")
    sink = WebhookSink()
    sink.refuse_first = 0
    server = Server(os.path.abspath(binary))
    server.extra_args = ["--data-dir", data_dir, "--webhook-url", sink.url]
    try:
        server.start()
        asyncio.run(sdk_egresses(server, sink))
        asyncio.run(hls_and_rtmp(server))
        asyncio.run(record_and_stream(server))
        asyncio.run(killed_mid_recording(server, data_dir))
        # A server whose files may not grow past 250 kB: a full disk for its recordings.
        server = Server(os.path.abspath(binary))
        server.prefix = ["prlimit", "--fsize=250000", "--"]
        server.extra_args = ["--data-dir", data_dir, "--webhook-url", sink.url]
        server.start()
        asyncio.run(disk_full(server, sink))
    except Exception as e:  # reported as a failure, with the server log below
        R.check("scenario ran to the end", False, f"{type(e).__name__}: {e}")
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"{R.passed} passed, {R.failed} failed")
    if R.failed:
        print(server.tail(60))
    return 1 if R.failed else 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

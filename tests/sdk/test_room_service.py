#!/usr/bin/env python3
"""End-to-end test of the RoomService API with LiveKit's own Python server SDK (`livekit-api`,
Twirp over HTTP with protobuf bodies) while real participants (`livekit` rtc SDK) are in the
room: what the back end does must be what the participants see.

Run:  PARLOIR_BIN=target/release/parloir tests/sdk/.venv/bin/python tests/sdk/test_room_service.py
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import os
import sys
import time
import traceback
import urllib.error
import urllib.request
import uuid

from livekit import api, rtc

from test_python_sdk import API_KEY, API_SECRET, R, Server, bounded, log, token


async def join(server: Server, identity: str, room_name: str) -> tuple[rtc.Room, dict]:
    """Joins and records what this participant sees happen to the room."""
    room = rtc.Room()
    seen: dict = {"data": [], "disconnected": asyncio.Event(), "left": set(), "muted": set()}
    room.on("data_received", lambda p: seen["data"].append((p.participant, p.topic, bytes(p.data))))
    room.on("disconnected", lambda reason: seen["disconnected"].set())
    room.on("participant_disconnected", lambda p: seen["left"].add(p.identity))
    room.on("track_muted", lambda p, pub: seen["muted"].add(pub.sid))
    await bounded(room.connect(server.url, token(identity, identity, room_name)), f"{identity} joins")
    return room, seen


class WebhookSink:
    """An HTTP receiver on loopback that keeps every POST (body, Authorization header)."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, str, str]] = []
        self.refused = 0
        self.refuse_first = 1  # the first delivery gets a 503: the server must retry it
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
                if sink.refused < sink.refuse_first:
                    sink.refused += 1
                    self.send_response(503)
                    self.end_headers()
                    return
                sink.posts.append((body, self.headers.get("Authorization", ""), self.headers.get("Content-Type", "")))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/livekit/webhook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list:
        """Every event, checked the way LiveKit's own receiver checks it."""
        receiver = api.WebhookReceiver(api.TokenVerifier(API_KEY, API_SECRET))
        return [receiver.receive(body, auth) for body, auth, _ in self.posts]


def twirp_raw(server: Server, method: str, message, authorization: str | None) -> tuple[int, dict]:
    """POSTs a protobuf request with the given Authorization; returns (status, JSON error body)."""
    headers = {"Content-Type": "application/protobuf"}
    if authorization:
        headers["Authorization"] = authorization
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}/twirp/livekit.RoomService/{method}",
        data=message.SerializeToString(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, {}
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def twirp_json(server: Server, method: str, body: bytes, grants: api.VideoGrants) -> tuple[int, dict]:
    """A JSON Twirp call, as LiveKit's Node server SDK makes them."""
    auth = "Bearer " + api.AccessToken(API_KEY, API_SECRET).with_grants(grants).to_jwt()
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}/twirp/livekit.RoomService/{method}",
        data=body, headers={"Content-Type": "application/json", "Authorization": auth}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


async def until(predicate, what: str, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.1)
    return False


async def scenario(server: Server, sink: WebhookSink) -> None:
    name = f"svc-{uuid.uuid4().hex[:8]}"
    lk = api.LiveKitAPI(f"http://127.0.0.1:{server.http_port}", API_KEY, API_SECRET)
    rooms: list[rtc.Room] = []
    try:
        created = await lk.room.create_room(api.CreateRoomRequest(name=name, empty_timeout=60, metadata="m0"))
        R.check("CreateRoom returns the room", created.name == name and created.sid.startswith("RM_"), created.sid)
        listed = await lk.room.list_rooms(api.ListRoomsRequest())
        R.check("ListRooms lists it before anyone joins", name in [r.name for r in listed.rooms])

        alice, alice_seen = await join(server, "alice", name)
        bob, bob_seen = await join(server, "bob", name)
        rooms += [alice, bob]
        R.check("the room created by the API is the one joined", alice.metadata == "m0", repr(alice.metadata))
        source = rtc.AudioSource(48000, 1)
        track = rtc.LocalAudioTrack.create_audio_track("mic", source)
        pub = await bounded(
            alice.local_participant.publish_track(track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)),
            "alice publishes",
        )

        # The track is announced once its media section is negotiated, shortly after publish.
        async def alice_tracks() -> int:
            one = await lk.room.get_participant(api.RoomParticipantIdentity(room=name, identity="alice"))
            return len(one.tracks)
        deadline = time.monotonic() + 20
        while await alice_tracks() == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

        parts = await lk.room.list_participants(api.ListParticipantsRequest(room=name))
        R.check("ListParticipants lists both", sorted(p.identity for p in parts.participants) == ["alice", "bob"])
        R.check("connected participants are ACTIVE",
                all(p.state == api.ParticipantInfo.State.ACTIVE for p in parts.participants),
                repr([p.state for p in parts.participants]))
        one = await lk.room.get_participant(api.RoomParticipantIdentity(room=name, identity="alice"))
        R.check("GetParticipant returns alice with her track",
                one.identity == "alice" and any(t.sid == pub.sid for t in one.tracks), f"{len(one.tracks)} tracks")

        await lk.room.update_participant(api.UpdateParticipantRequest(
            room=name, identity="alice", name="Alice Liddell", metadata="{\"role\":\"host\"}",
            attributes={"handRaisedAt": "1700000000000"}))
        alice_at_bob = lambda: bob.remote_participants.get("alice")  # noqa: E731
        R.check("UpdateParticipant: bob sees alice's new name, metadata and attributes", await until(
            lambda: alice_at_bob() is not None and alice_at_bob().name == "Alice Liddell"
            and alice_at_bob().metadata == "{\"role\":\"host\"}"
            and alice_at_bob().attributes.get("handRaisedAt") == "1700000000000",
            "the update"))

        muted = await lk.room.mute_published_track(api.MuteRoomTrackRequest(
            room=name, identity="alice", track_sid=pub.sid, muted=True))
        R.check("MutePublishedTrack answers the muted track", muted.track.sid == pub.sid and muted.track.muted)
        R.check("MutePublishedTrack: bob sees alice's track muted", await until(
            lambda: pub.sid in bob_seen["muted"], "the mute"))

        await lk.room.send_data(api.SendDataRequest(
            room=name, data=b"from the back end", kind=api.DataPacket.Kind.RELIABLE,
            destination_identities=["bob"], topic="svc"))
        R.check("SendData reaches bob", await until(
            lambda: any(d[2] == b"from the back end" and d[1] == "svc" for d in bob_seen["data"]), "the data"))
        await asyncio.sleep(0.5)
        R.check("SendData to bob does not reach alice", not alice_seen["data"], repr(alice_seen["data"]))

        # The same API with JSON bodies (camelCase or .proto names, as protojson allows).
        json_room = f"{name}-json"
        status, body = twirp_json(server, "CreateRoom", json.dumps({"name": json_room, "emptyTimeout": 30}).encode(),
                                  api.VideoGrants(room_create=True))
        R.check("JSON CreateRoom", status == 200 and body.get("name") == json_room and body.get("sid", "").startswith("RM_")
                and body.get("empty_timeout") == 30, repr(body))
        status, body = twirp_json(server, "ListParticipants", json.dumps({"room": name}).encode(),
                                  api.VideoGrants(room_admin=True, room=name))
        R.check("JSON ListParticipants", status == 200 and sorted(p["identity"] for p in body.get("participants", []))
                == ["alice", "bob"], repr(body)[:200])
        status, body = twirp_json(server, "ListRooms", b"{not json", api.VideoGrants(room_list=True))
        R.check("malformed JSON is a Twirp malformed error", status == 400 and body.get("code") == "malformed", repr(body))
        status, body = twirp_json(server, "DeleteRoom", json.dumps({"room": json_room}).encode(),
                                  api.VideoGrants(room_create=True))
        R.check("JSON DeleteRoom", status == 200 and body == {}, repr(body))

        await lk.room.update_room_metadata(api.UpdateRoomMetadataRequest(room=name, metadata="m1"))
        R.check("UpdateRoomMetadata: bob sees the new room metadata", await until(lambda: bob.metadata == "m1", "metadata"))

        await lk.room.remove_participant(api.RoomParticipantIdentity(room=name, identity="alice"))
        R.check("RemoveParticipant disconnects alice", await until(lambda: alice_seen["disconnected"].is_set(), "alice out"))
        R.check("RemoveParticipant: bob sees alice leave", await until(lambda: "alice" in bob_seen["left"], "alice gone"))

        try:
            await lk.room.get_participant(api.RoomParticipantIdentity(room=name, identity="nobody"))
            R.check("GetParticipant of nobody is not_found", False, "it answered")
        except api.TwirpError as e:
            R.check("GetParticipant of nobody is not_found", e.code == "not_found" and e.status == 404, f"{e.code} {e.status}")

        # A token for another room may not administer this one, and no token gets nowhere.
        other_room = api.AccessToken(API_KEY, API_SECRET).with_grants(
            api.VideoGrants(room_admin=True, room="another-room")).to_jwt()
        for label, auth, status, code in [
            ("a roomAdmin token for another room is refused", f"Bearer {other_room}", 403, "permission_denied"),
            ("a call without a token is refused", None, 401, "unauthenticated"),
        ]:
            got = twirp_raw(server, "ListParticipants", api.ListParticipantsRequest(room=name), auth)
            R.check(label, got[0] == status and got[1].get("code") == code, repr(got))

        await lk.room.delete_room(api.DeleteRoomRequest(room=name))
        R.check("DeleteRoom disconnects bob", await until(lambda: bob_seen["disconnected"].is_set(), "bob out"))
        listed = await lk.room.list_rooms(api.ListRoomsRequest(names=[name]))
        R.check("DeleteRoom removes the room", not listed.rooms)

        # Webhooks: signed as LiveKit signs them, the story of the room in order.
        await until(lambda: any(json.loads(b).get("event") == "room_finished"
                                and json.loads(b).get("room", {}).get("name") == name for b, _, _ in sink.posts),
                    "room_finished", timeout=15)
        try:
            events = sink.events()
            R.check("every webhook passes LiveKit's WebhookReceiver (JWT, sha256 of the body)", True, f"{len(events)} events")
        except Exception as e:
            R.check("every webhook passes LiveKit's WebhookReceiver (JWT, sha256 of the body)", False, repr(e))
            events = []
        R.check("webhooks are application/webhook+json",
                all(ct == "application/webhook+json" for _, _, ct in sink.posts), repr({ct for _, _, ct in sink.posts}))
        story = [(e.event, e.participant.identity if e.HasField("participant") else "")
                 for e in events if e.room.name == name]
        expected = [("room_started", ""), ("participant_joined", "alice"), ("participant_joined", "bob"),
                    ("track_published", "alice"), ("track_unpublished", "alice"), ("participant_left", "alice"),
                    ("participant_left", "bob"), ("room_finished", "")]
        R.check("the room's webhooks arrive in order (the first after a retry)",
                story == expected and sink.refused == 1, repr(story))
        json_story = [e.event for e in events if e.room.name == json_room]
        R.check("the JSON-made room has its own start and finish", json_story == ["room_started", "room_finished"],
                repr(json_story))
        R.check("webhook ids and times are set", all(e.id.startswith("EV_") and e.created_at > 0 for e in events))
    finally:
        for room in rooms:
            try:
                await asyncio.wait_for(room.disconnect(), 5)
            except Exception:
                pass
        await lk.aclose()


def main() -> int:
    binary = os.environ.get("PARLOIR_BIN")
    if not binary:
        print("PARLOIR_BIN is not set (path of the parloir binary)", file=sys.stderr)
        print("0 passed, 1 failed")
        return 1
    server = Server(os.path.abspath(binary))
    sink = WebhookSink()
    server.extra_args = ["--webhook-url", sink.url]
    try:
        server.start()
        asyncio.run(scenario(server, sink))
    except Exception as e:
        R.check("the scenario ran to the end", False, f"{type(e).__name__}: {e}")
        traceback.print_exc()
    finally:
        server.stop()
    if R.failed:
        print(f"--- server log tail ({server.log_path}) ---")
        print(server.tail())
    print(f"{R.passed} passed, {R.failed} failed")
    return 1 if R.failed else 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # As in test_python_sdk.py: the FFI library keeps native threads, and its teardown at
    # interpreter exit has aborted the process after every check had passed.
    os._exit(code)

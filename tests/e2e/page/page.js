// Test page driven by tests/e2e/run.test.mjs through Playwright.
// Everything the harness needs is on window: join, leave, state, stats, sendChat, sendData.
'use strict';

(() => {
  const LK = window.LivekitClient;
  const { Room, RoomEvent, Track } = LK;
  LK.setLogLevel('info');

  // opts.udpBlocked: the browser only learns the server's TCP candidates, as when UDP is
  // blocked between them, so ICE has to go over ICE-TCP.
  let udpBlocked = false;
  const setRemote = RTCPeerConnection.prototype.setRemoteDescription;
  RTCPeerConnection.prototype.setRemoteDescription = function (desc, ...rest) {
    if (udpBlocked && desc && desc.sdp) {
      const sdp = desc.sdp
        .split('\r\n')
        .filter((l) => !(l.startsWith('a=candidate:') && / udp /i.test(l)))
        .join('\r\n');
      desc = { type: desc.type, sdp };
    }
    return setRemote.call(this, desc, ...rest);
  };

  let room = null;
  let chat = [];
  let data = [];
  let events = [];
  let speakersSeen = new Set();
  const mediaEl = () => document.getElementById('media');

  function note(what) {
    events.push({ t: Math.round(performance.now()), what });
    if (events.length > 200) events.shift();
  }

  // Joins `url` with `token`. opts.singlePeerConnection selects /rtc/v1 (true) or /rtc (false);
  // opts.publish (default true) publishes the fake camera and microphone after connecting.
  window.join = async (url, token, opts = {}) => {
    if (room) throw new Error('already joined');
    udpBlocked = !!opts.udpBlocked;
    chat = [];
    data = [];
    events = [];
    speakersSeen = new Set();
    room = new Room({
      singlePeerConnection: !!opts.singlePeerConnection,
      // opts.adaptiveStream: subscribed video asks for the size its element shows.
      adaptiveStream: !!opts.adaptiveStream,
      // Chromium's fake microphone beeps; noise suppression would eat the beeps that make a
      // participant an active speaker.
      audioCaptureDefaults: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      // opts.videoCodec ('vp8', 'h264', 'vp9', 'av1') picks the published video codec.
      publishDefaults: opts.videoCodec ? { videoCodec: opts.videoCodec } : undefined,
    });

    room.registerTextStreamHandler('lk.chat', async (reader, { identity }) => {
      const text = await reader.readAll();
      chat.push({ from: identity, text });
    });
    room
      .on(RoomEvent.DataReceived, (payload, participant, _kind, topic, _enc, identity) => {
        const from = participant ? participant.identity : identity;
        data.push({ from, payload: new TextDecoder().decode(payload), topic: topic ?? null });
      })
      .on(RoomEvent.TrackSubscribed, (track, pub, participant) => {
        note(`subscribed ${participant.identity} ${track.kind} ${pub.trackSid}`);
        const el = track.attach();
        el.id = `t-${pub.trackSid}`;
        el.dataset.participant = participant.identity;
        if (track.kind === Track.Kind.Video) el.muted = true;
        mediaEl().appendChild(el);
      })
      .on(RoomEvent.TrackUnsubscribed, (track, pub, participant) => {
        note(`unsubscribed ${participant.identity} ${track.kind} ${pub.trackSid}`);
        track.detach().forEach((el) => el.remove());
      })
      .on(RoomEvent.ActiveSpeakersChanged, (speakers) => {
        for (const p of speakers) speakersSeen.add(p.identity);
      })
      .on(RoomEvent.ParticipantConnected, (p) => note(`participant connected ${p.identity}`))
      .on(RoomEvent.ParticipantDisconnected, (p) => note(`participant disconnected ${p.identity}`))
      .on(RoomEvent.ConnectionStateChanged, (s) => note(`connection ${s}`))
      .on(RoomEvent.Reconnecting, () => note('reconnecting'))
      .on(RoomEvent.Reconnected, () => note('reconnected'))
      .on(RoomEvent.Disconnected, (reason) => note(`disconnected reason=${reason}`))
      .on(RoomEvent.MediaDevicesError, (e) => note(`media devices error ${e && e.message}`));

    await room.connect(url, token);
    document.getElementById('who').textContent = room.localParticipant.identity;
    note(`connected as ${room.localParticipant.identity}`);
    if (opts.publish !== false) {
      await room.localParticipant.enableCameraAndMicrophone();
      note('camera and microphone published');
    }
    return window.state();
  };

  window.leave = async () => {
    if (!room) return;
    const r = room;
    room = null;
    await r.disconnect();
    mediaEl().replaceChildren();
  };

  window.state = () => {
    if (!room) return { identity: null, connectionState: 'none', remotes: [], chat, data, events };
    const remotes = [...room.remoteParticipants.values()].map((p) => ({
      identity: p.identity,
      sid: p.sid,
      name: p.name,
      metadata: p.metadata,
      attributes: { ...p.attributes },
      tracks: [...p.trackPublications.values()].map((pub) => ({
        sid: pub.trackSid,
        kind: pub.kind,
        source: pub.source,
        subscribed: pub.isSubscribed,
        muted: pub.isMuted,
      })),
    }));
    const local = [...room.localParticipant.trackPublications.values()].map((pub) => ({
      sid: pub.trackSid,
      kind: pub.kind,
      source: pub.source,
      mimeType: pub.mimeType,
    }));
    return {
      identity: room.localParticipant.identity,
      sid: room.localParticipant.sid,
      connectionState: room.state,
      remotes,
      local,
      chat,
      data,
      speakersSeen: [...speakersSeen],
      isRecording: room.isRecording,
      events,
    };
  };

  // Publishes a camera track that is a canvas of one colour (with a moving bar so the encoder
  // keeps sending frames) and a microphone track that is a sine tone: what the recording tests
  // look for in the composite.
  window.publishPattern = async ({ colour, toneHz, width = 640, height = 360 }) => {
    const canvas = document.createElement('canvas');
    canvas.width = width;
    canvas.height = height;
    const ctx = canvas.getContext('2d');
    let x = 0;
    const draw = () => {
      ctx.fillStyle = colour;
      ctx.fillRect(0, 0, width, height);
      ctx.fillStyle = '#808080';
      ctx.fillRect(x, height - 8, 16, 8);
      x = (x + 8) % width;
    };
    draw();
    setInterval(draw, 40);
    const video = canvas.captureStream(25).getVideoTracks()[0];
    await room.localParticipant.publishTrack(video, { source: Track.Source.Camera, simulcast: true });
    if (toneHz) {
      const audio = new AudioContext();
      const osc = audio.createOscillator();
      osc.frequency.value = toneHz;
      const gain = audio.createGain();
      gain.gain.value = 0.3;
      const dest = audio.createMediaStreamDestination();
      osc.connect(gain).connect(dest);
      osc.start();
      await room.localParticipant.publishTrack(dest.stream.getAudioTracks()[0], {
        source: Track.Source.Microphone,
        dtx: false,
      });
    }
    return window.state();
  };

  // Per subscribed remote track, the summed inbound-rtp counters of its RTCRtpReceiver.
  window.stats = async () => {
    if (!room) return [];
    const out = [];
    for (const p of room.remoteParticipants.values()) {
      for (const pub of p.trackPublications.values()) {
        const track = pub.track;
        if (!track) continue;
        const report = await track.getRTCStatsReport();
        let framesDecoded = 0;
        let bytesReceived = 0;
        let packetsReceived = 0;
        let frameWidth = 0;
        let codec = null;
        // For diagnostics when a test fails: what the decoder made of the stream.
        const more = { keyFramesDecoded: 0, framesDropped: 0, pliCount: 0, nackCount: 0, packetsLost: 0, decoder: null };
        report?.forEach((s) => {
          if (s.type === 'codec' && s.mimeType) codec = s.mimeType;
          if (s.type !== 'inbound-rtp') return;
          framesDecoded += s.framesDecoded ?? 0;
          bytesReceived += s.bytesReceived ?? 0;
          packetsReceived += s.packetsReceived ?? 0;
          frameWidth = Math.max(frameWidth, s.frameWidth ?? 0);
          for (const k of ['keyFramesDecoded', 'framesDropped', 'pliCount', 'nackCount', 'packetsLost']) more[k] += s[k] ?? 0;
          more.decoder = s.decoderImplementation ?? more.decoder;
        });
        out.push({
          participant: p.identity,
          sid: pub.trackSid,
          kind: pub.kind,
          framesDecoded,
          bytesReceived,
          packetsReceived,
          frameWidth,
          codec,
          ...more,
        });
      }
    }
    return out;
  };

  // The local microphone's sender: the codecs negotiated for it in the answer's order (it sends
  // with the first), and what it sent (outbound-rtp and the codec that names).
  window.localAudio = async () => {
    const pub = [...room.localParticipant.audioTrackPublications.values()][0];
    const sender = pub?.track?.sender;
    if (!sender) return null;
    const codecs = sender.getParameters().codecs.map((c) => ({ mimeType: c.mimeType, fmtp: c.sdpFmtpLine ?? '' }));
    const report = await sender.getStats();
    let packetsSent = 0;
    let codecId = null;
    const byId = new Map();
    report.forEach((s) => {
      if (s.type === 'codec') byId.set(s.id, s.mimeType);
      if (s.type === 'outbound-rtp') {
        packetsSent += s.packetsSent ?? 0;
        codecId = s.codecId;
      }
    });
    return { codecs, packetsSent, codec: byId.get(codecId) ?? null };
  };

  // The local camera's sender as getStats shows it, one entry per encoding (for diagnostics).
  window.localVideo = async () => {
    const pub = [...room.localParticipant.videoTrackPublications.values()][0];
    const sender = pub?.track?.sender;
    if (!sender) return null;
    const out = [];
    (await sender.getStats()).forEach((s) => {
      if (s.type !== 'outbound-rtp') return;
      out.push({
        rid: s.rid ?? null,
        scalabilityMode: s.scalabilityMode ?? null,
        encoder: s.encoderImplementation ?? null,
        frameWidth: s.frameWidth ?? 0,
        framesEncoded: s.framesEncoded ?? 0,
        keyFramesEncoded: s.keyFramesEncoded ?? 0,
        pliCount: s.pliCount ?? 0,
        qualityLimitationReason: s.qualityLimitationReason ?? null,
        targetBitrate: s.targetBitrate ?? null,
        active: s.active ?? null,
      });
    });
    return out;
  };

  // Resizes every video element (what adaptiveStream watches).
  window.resizeVideos = (width, height) => {
    for (const el of mediaEl().querySelectorAll('video')) {
      el.style.width = `${width}px`;
      el.style.height = `${height}px`;
    }
  };

  // Subscribes to or unsubscribes from a remote participant's tracks of one kind.
  window.setSubscribed = (identity, kind, subscribed) => {
    const p = [...room.remoteParticipants.values()].find((r) => r.identity === identity);
    if (!p) throw new Error(`no remote participant ${identity}`);
    for (const pub of p.trackPublications.values()) {
      if (pub.kind === kind) pub.setSubscribed(subscribed);
    }
  };

  // Asks for a frame rate of a remote participant's video (livekit-client's setVideoFPS;
  // 0 takes the wish back).
  window.setVideoFPS = (identity, fps) => {
    const p = [...room.remoteParticipants.values()].find((r) => r.identity === identity);
    if (!p) throw new Error(`no remote participant ${identity}`);
    for (const pub of p.videoTrackPublications.values()) pub.setVideoFPS(fps);
  };

  // livekit-client's own failure simulations ('signal-reconnect' drops the WebSocket).
  window.simulate = (scenario) => room.simulateScenario(scenario);
  // Closes the client's peer connections under it (as a crashed network stack or an
  // extension would), leaving its signal connection up: the server decides what comes next.
  window.closePeerConnections = () => {
    const m = room.engine.pcManager;
    for (const t of [m.publisher, m.subscriber]) t?._pc?.close();
  };

  window.setMicMuted = async (muted) => {
    await room.localParticipant.setMicrophoneEnabled(!muted);
  };

  // Name, metadata and attributes of the local participant (the token must allow it).
  window.updateSelf = async ({ name, metadata, attributes }) => {
    if (name !== undefined) await room.localParticipant.setName(name);
    if (metadata !== undefined) await room.localParticipant.setMetadata(metadata);
    if (attributes !== undefined) await room.localParticipant.setAttributes(attributes);
  };

  window.sendChat = async (text) => {
    await room.localParticipant.sendText(text, { topic: 'lk.chat' });
  };

  window.sendData = async (text, destinationIdentities, reliable = true) => {
    const opts = { reliable };
    if (destinationIdentities && destinationIdentities.length) {
      opts.destinationIdentities = destinationIdentities;
    }
    await room.localParticipant.publishData(new TextEncoder().encode(text), opts);
  };
})();

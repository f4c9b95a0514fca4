// Parloir meeting page: plain JS on top of livekit-client's UMD build (window.LivekitClient).
//
// Join form → /api/dev-token (with admin=1 for a host) → Room. The grid has one tile per camera
// (or initial) and a larger tile per screen share; chat rides lk.chat text streams, reactions
// reliable data packets on topic "reactions", raised hands the participant attribute
// "handRaisedAt". Subtitles from the speech plane arrive as lk.transcription text streams sent as
// the speaker; each viewer switches them on or off, a host for the whole meeting (room metadata
// "parloir.subtitles"). A host (token with roomAdmin) drives
// RoomService over Twirp with its own token.
// Tests find things by their data-testid attributes (tests/e2e/meeting.test.mjs).
'use strict';

(() => {
  const { Room, RoomEvent, Track, DisconnectReason } = window.LivekitClient;

  const REACTIONS = ['👍', '👏', '😂', '🎉', '❤️', '😮'];
  const REACTION_MS = 3000;
  const REACTION_TOPIC = 'reactions';
  const CHAT_TOPIC = 'lk.chat';
  const SUBTITLE_TOPIC = 'lk.transcription';
  const SUBTITLE_LINES = 3;
  const SUBTITLE_KEEP_MS = 8000;
  const HAND = 'handRaisedAt';

  const STRINGS = {
    en: {
      room: 'Room', name: 'Your name', host: 'Join as host', join: 'Join', joining: 'Joining…',
      leave: 'Leave', micOn: 'Mute', micOff: 'Unmute', camOn: 'Stop camera', camOff: 'Start camera',
      screenOn: 'Stop sharing', screenOff: 'Share screen', handUp: 'Lower hand', handDown: 'Raise hand',
      chat: 'Chat', participants: 'Participants', message: 'Message', send: 'Send', dismiss: 'Dismiss',
      subtitles: 'Subtitles', subtitlesOn: 'Subtitles on for everyone',
      subtitlesOff: 'Subtitles off for everyone',
      enableAudio: 'Enable audio', you: 'you', controls: 'Meeting controls', reactions: 'Reactions',
      react: (e) => `React with ${e}`, screenOf: (n) => `${n}'s screen`,
      micState: { on: 'microphone on', muted: 'microphone muted', none: 'no microphone' },
      camState: { on: 'camera on', off: 'camera off' },
      handRaised: 'hand raised', muteAll: 'Mute everyone', lowerAll: 'Lower all hands',
      mute: 'Mute', remove: 'Remove', confirmRemove: 'Confirm?',
      muteLabel: (n) => `Mute ${n}`, removeLabel: (n) => `Remove ${n} from the meeting`,
      hostFailed: 'Host action failed: ', actionFailed: 'Could not do that: ',
      failed: 'Could not join: ', disconnected: 'You were disconnected.',
      removed: 'You were removed from the meeting by the host.',
      duplicate: 'You joined this meeting from somewhere else, so this page left it.',
      roomDeleted: 'The meeting was ended.', shutdown: 'The server is restarting. Join again in a moment.',
      unread: (n) => `${n} unread`,
      recording: 'Recording', recordStart: 'Record the meeting', recordStop: 'Stop recording',
    },
    fr: {
      room: 'Salle', name: 'Votre nom', host: 'Rejoindre en tant qu’organisateur', join: 'Rejoindre',
      joining: 'Connexion…', leave: 'Quitter', micOn: 'Couper le micro', micOff: 'Activer le micro',
      camOn: 'Couper la caméra', camOff: 'Activer la caméra', screenOn: 'Arrêter le partage',
      screenOff: 'Partager l’écran', handUp: 'Baisser la main', handDown: 'Lever la main',
      chat: 'Discussion', participants: 'Participants', message: 'Message', send: 'Envoyer',
      subtitles: 'Sous-titres', subtitlesOn: 'Sous-titres pour tous',
      subtitlesOff: 'Pas de sous-titres pour tous',
      dismiss: 'Fermer', enableAudio: 'Activer le son', you: 'vous', controls: 'Commandes de la réunion',
      reactions: 'Réactions', react: (e) => `Réagir avec ${e}`, screenOf: (n) => `Écran de ${n}`,
      micState: { on: 'micro activé', muted: 'micro coupé', none: 'pas de micro' },
      camState: { on: 'caméra activée', off: 'caméra coupée' },
      handRaised: 'main levée', muteAll: 'Couper tous les micros', lowerAll: 'Baisser toutes les mains',
      mute: 'Couper', remove: 'Exclure', confirmRemove: 'Confirmer ?',
      muteLabel: (n) => `Couper le micro de ${n}`, removeLabel: (n) => `Exclure ${n} de la réunion`,
      hostFailed: 'Action d’organisateur impossible : ', actionFailed: 'Action impossible : ',
      failed: 'Connexion impossible : ', disconnected: 'Vous avez été déconnecté.',
      removed: 'L’organisateur vous a retiré de la réunion.',
      duplicate: 'Vous avez rejoint cette réunion ailleurs : cette page l’a quittée.',
      roomDeleted: 'La réunion est terminée.', shutdown: 'Le serveur redémarre. Rejoignez dans un instant.',
      unread: (n) => `${n} non lus`,
      recording: 'Enregistrement', recordStart: 'Enregistrer la réunion', recordStop: 'Arrêter l’enregistrement',
    },
  };
  const lang = (navigator.language || 'en').toLowerCase().startsWith('fr') ? 'fr' : 'en';
  const t = (key, ...args) => {
    const v = STRINGS[lang][key];
    return typeof v === 'function' ? v(...args) : v;
  };

  const $ = (sel) => document.querySelector(sel);
  const form = $('#join');
  const grid = $('#grid');
  const errorEl = $('#error');
  const noticeEl = $('#notice');
  const meetingErrorEl = $('#meeting-error');
  const micBtn = $('#mic');
  const camBtn = $('#cam');
  const screenBtn = $('#screen');
  const handBtn = $('#hand');
  const audioBtn = $('#audio');
  const chatPanel = $('#chat-panel');
  const chatLog = $('#chat-log');
  const chatForm = $('#chat-form');
  const chatToggle = $('#chat-toggle');
  const unreadEl = $('#unread');
  const peoplePanel = $('#people-panel');
  const peopleToggle = $('#people-toggle');
  const peopleList = $('#people');
  const hostTools = $('#host-tools');
  const subtitlesEl = $('#subtitles');
  const ccBtn = $('#cc');

  let room = null;
  let token = '';
  let isHost = false;
  let unread = 0;
  let speaking = new Set();
  // Subtitle lines on screen, by segment id.
  const subtitleLines = new Map();
  let subtitlesOn = localStorage.getItem('parloir.subtitles') === '1';

  document.documentElement.lang = lang;
  document.querySelectorAll('[data-i18n]').forEach((el) => { el.textContent = t(el.dataset.i18n); });
  $('#controls').setAttribute('aria-label', t('controls'));
  const reactionsEl = $('#reactions');
  reactionsEl.setAttribute('aria-label', t('reactions'));
  for (const emoji of REACTIONS) {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = emoji;
    b.title = t('react', emoji);
    b.setAttribute('aria-label', t('react', emoji));
    b.dataset.testid = 'reaction-button';
    b.dataset.emoji = emoji;
    b.addEventListener('click', () => sendReaction(emoji));
    reactionsEl.appendChild(b);
  }

  // Pre-fill from ?room=… and the last name used.
  const params = new URLSearchParams(location.search);
  form.room.value = params.get('room') || '';
  form.name.value = localStorage.getItem('parloir.name') || '';

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const roomName = form.room.value.trim();
    const name = form.name.value.trim();
    if (!roomName || !name) return;
    localStorage.setItem('parloir.name', name);
    const submit = form.querySelector('button[type=submit]');
    submit.disabled = true;
    submit.textContent = t('joining');
    errorEl.textContent = '';
    noticeEl.hidden = true;
    try {
      await join(roomName, name, form.host.checked);
      history.replaceState(null, '', `?room=${encodeURIComponent(roomName)}`);
    } catch (e) {
      errorEl.textContent = t('failed') + errText(e);
      const r = room;
      room = null;
      if (r) await r.disconnect();
      showLobby();
    } finally {
      submit.disabled = false;
      submit.textContent = t('join');
    }
  });

  function errText(e) {
    return e && e.message ? e.message : String(e);
  }

  // A URL-safe slug of the name plus a random suffix: a second tab does not evict the first.
  function makeIdentity(name) {
    const slug = name.normalize('NFD').replace(/[\u0300-\u036f]/g, '').toLowerCase()
      .replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 32) || 'guest';
    return `${slug}-${Math.random().toString(36).slice(2, 8)}`;
  }

  // The JWT's claims (no verification: the server does that); null if unreadable.
  function tokenClaims(jwt) {
    try {
      const b64 = jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      const bin = atob(b64.padEnd(b64.length + ((4 - (b64.length % 4)) % 4), '='));
      return JSON.parse(new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0))));
    } catch {
      return null;
    }
  }

  async function join(roomName, name, asHost) {
    const q = new URLSearchParams({ room: roomName, identity: makeIdentity(name), name });
    if (asHost) q.set('admin', '1');
    const res = await fetch(`/api/dev-token?${q}`);
    if (!res.ok) throw new Error(`dev-token: HTTP ${res.status} ${await res.text()}`);
    const body = await res.json();
    token = body.token;
    const video = tokenClaims(token)?.video || {};
    isHost = !!video.roomAdmin && (!video.room || video.room === roomName);
    const wsUrl = body.url || `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}`;

    room = new Room({ adaptiveStream: true, dynacast: true });
    room.registerTextStreamHandler(CHAT_TOPIC, async (reader, { identity }) => {
      const text = await reader.readAll();
      addChat(identity, text, false);
    });
    room.registerTextStreamHandler(SUBTITLE_TOPIC, async (reader, { identity }) => {
      const text = await reader.readAll();
      showSubtitle(identity, reader.info.attributes || {}, text);
    });
    room
      .on(RoomEvent.ParticipantConnected, scheduleRender)
      .on(RoomEvent.ParticipantDisconnected, scheduleRender)
      .on(RoomEvent.TrackSubscribed, onTrackSubscribed)
      .on(RoomEvent.TrackUnsubscribed, (track) => { track.detach().forEach((el) => el.remove()); scheduleRender(); })
      .on(RoomEvent.TrackPublished, scheduleRender)
      .on(RoomEvent.TrackUnpublished, scheduleRender)
      .on(RoomEvent.LocalTrackPublished, scheduleRender)
      .on(RoomEvent.LocalTrackUnpublished, scheduleRender)
      .on(RoomEvent.TrackMuted, scheduleRender)
      .on(RoomEvent.TrackUnmuted, scheduleRender)
      .on(RoomEvent.ParticipantNameChanged, scheduleRender)
      .on(RoomEvent.ParticipantAttributesChanged, scheduleRender)
      .on(RoomEvent.ActiveSpeakersChanged, markSpeakers)
      .on(RoomEvent.DataReceived, onData)
      .on(RoomEvent.RecordingStatusChanged, showRecording)
      .on(RoomEvent.AudioPlaybackStatusChanged, () => { audioBtn.hidden = !room || room.canPlaybackAudio; })
      .on(RoomEvent.Disconnected, onDisconnected);

    await room.connect(wsUrl, token);
    $('#room-name').textContent = roomName;
    $('#lobby').hidden = true;
    $('#meeting').hidden = false;
    hostTools.hidden = !isHost;
    showRecording(room.isRecording);
    chatLog.replaceChildren();
    setUnread(0);
    render();
    // The join click is a user gesture: use it to unlock audio playback.
    room.startAudio().catch(() => {});
    try {
      await room.localParticipant.enableCameraAndMicrophone();
    } catch (e) {
      console.warn('could not publish camera/microphone', e);
    }
    render();
  }

  function onTrackSubscribed(track) {
    if (track.kind === Track.Kind.Audio) $('#audio-sink').appendChild(track.attach());
    scheduleRender();
  }

  function showLobby() {
    grid.replaceChildren();
    subtitlesEl.replaceChildren();
    subtitleLines.clear();
    peopleList.replaceChildren();
    $('#audio-sink').replaceChildren();
    $('#meeting').hidden = true;
    $('#room-name').textContent = '';
    $('#lobby').hidden = false;
    meetingErrorEl.hidden = true;
    speaking = new Set();
  }

  function onDisconnected(reason) {
    if (!room) return; // a voluntary leave shows no message
    room = null;
    const R = DisconnectReason || {};
    const key = {
      [R.PARTICIPANT_REMOVED]: 'removed',
      [R.DUPLICATE_IDENTITY]: 'duplicate',
      [R.ROOM_DELETED]: 'roomDeleted',
      [R.SERVER_SHUTDOWN]: 'shutdown',
    }[reason] || 'disconnected';
    showLobby();
    noticeEl.textContent = t(key);
    noticeEl.dataset.reason = key;
    noticeEl.hidden = false;
    form.querySelector('button[type=submit]').focus();
  }

  // Renders are coalesced: a burst of events redraws once.
  let renderQueued = false;
  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    queueMicrotask(() => {
      renderQueued = false;
      render();
    });
  }

  function render() {
    if (!room) return;
    renderTiles();
    renderPeople();
    updateControls();
  }

  const people = () => (room ? [room.localParticipant, ...room.remoteParticipants.values()] : []);
  const displayName = (p) => p.name || p.identity;
  const handOf = (p) => {
    const v = p.attributes && p.attributes[HAND];
    if (!v) return null;
    const n = Number(v);
    return Number.isFinite(n) ? n : Number.MAX_SAFE_INTEGER;
  };
  function micState(p) {
    const pub = p.getTrackPublication(Track.Source.Microphone);
    if (!pub) return 'none';
    return pub.isMuted ? 'muted' : 'on';
  }
  function camState(p) {
    const pub = p.getTrackPublication(Track.Source.Camera);
    return pub && !pub.isMuted ? 'on' : 'off';
  }

  // ---- the grid: one camera tile per participant, a larger tile per screen share (CSS order
  // puts screen shares first).
  function renderTiles() {
    const wanted = [];
    for (const p of people()) {
      wanted.push({ p, source: Track.Source.Camera });
      const screen = p.getTrackPublication(Track.Source.ScreenShare);
      if (screen && screen.track) wanted.push({ p, source: Track.Source.ScreenShare });
    }
    const key = (identity, source) => `${identity}\n${source}`;
    const keep = new Set(wanted.map((w) => key(w.p.identity, w.source)));
    for (const tile of [...grid.children]) {
      if (!keep.has(key(tile.dataset.identity, tile.dataset.source))) {
        const v = tile.querySelector('video');
        if (v) v.srcObject = null;
        tile.remove();
      }
    }
    for (const { p, source } of wanted) {
      let tile = findTile(p.identity, source);
      if (!tile) tile = createTile(p, source);
      updateTile(tile, p, source);
    }
  }

  function findTile(identity, source) {
    return [...grid.children].find((el) => el.dataset.identity === identity && el.dataset.source === source);
  }

  function createTile(p, source) {
    const tile = document.createElement('div');
    const isScreen = source === Track.Source.ScreenShare;
    tile.className = `tile ${isScreen ? 'screen' : 'camera'}`;
    if (p === room.localParticipant) tile.classList.add('local');
    tile.dataset.testid = 'tile';
    tile.dataset.identity = p.identity;
    tile.dataset.source = source;
    tile.setAttribute('role', 'group');
    tile.innerHTML = `<video autoplay playsinline muted></video><div class="avatar" aria-hidden="true"></div>
      <span class="hand" data-testid="tile-hand" role="img" hidden>✋</span>
      <div class="label"><span class="mic state" data-testid="tile-mic" role="img"></span><span class="name" data-testid="tile-name"></span></div>
      <div class="reactions" data-testid="tile-reactions"></div>`;
    if (isScreen) tile.querySelector('.mic').remove();
    grid.appendChild(tile);
    return tile;
  }

  function updateTile(tile, p, source) {
    const isScreen = source === Track.Source.ScreenShare;
    const local = p === room.localParticipant;
    const label = displayName(p);
    const text = isScreen ? t('screenOf', label) : local ? `${label} (${t('you')})` : label;
    tile.querySelector('.name').textContent = text;
    tile.setAttribute('aria-label', text);
    tile.querySelector('.avatar').textContent = label.slice(0, 1).toUpperCase();
    const speakingNow = !isScreen && speaking.has(p.identity);
    tile.classList.toggle('speaking', speakingNow);
    tile.dataset.speaking = String(speakingNow);

    const hand = tile.querySelector('.hand');
    hand.hidden = isScreen || handOf(p) === null;
    hand.setAttribute('aria-label', t('handRaised'));
    const mic = tile.querySelector('.mic');
    if (mic) setState(mic, micState(p), t('micState')[micState(p)], micState(p) === 'on' ? '🎤' : '🔇');

    const pub = p.getTrackPublication(source);
    const video = tile.querySelector('video');
    const track = pub && !pub.isMuted ? pub.track : null;
    if (track) {
      if (video.dataset.sid !== pub.trackSid) {
        track.attach(video);
        video.dataset.sid = pub.trackSid;
      }
    } else if (video.dataset.sid) {
      delete video.dataset.sid;
      video.srcObject = null;
    }
    video.hidden = !track;
    tile.querySelector('.avatar').hidden = !!track;
  }

  function setState(el, state, label, glyph) {
    el.dataset.state = state;
    el.textContent = glyph;
    el.title = label;
    el.setAttribute('aria-label', label);
  }

  function markSpeakers(speakers) {
    speaking = new Set(speakers.map((p) => p.identity));
    for (const tile of grid.children) {
      const on = tile.dataset.source !== Track.Source.ScreenShare && speaking.has(tile.dataset.identity);
      tile.classList.toggle('speaking', on);
      tile.dataset.speaking = String(on);
    }
  }

  // ---- participant list: raised hands first (earliest first), then you, then by name.
  function renderPeople() {
    const local = room.localParticipant;
    const sorted = people().sort((a, b) => {
      const ha = handOf(a);
      const hb = handOf(b);
      if (ha !== null || hb !== null) {
        if (ha === null) return 1;
        if (hb === null) return -1;
        if (ha !== hb) return ha - hb;
      }
      if (a === local) return -1;
      if (b === local) return 1;
      return displayName(a).localeCompare(displayName(b), lang);
    });
    const rows = new Map([...peopleList.children].map((li) => [li.dataset.identity, li]));
    const ordered = sorted.map((p) => {
      const li = rows.get(p.identity) || createRow(p);
      rows.delete(p.identity);
      updateRow(li, p);
      return li;
    });
    for (const li of rows.values()) li.remove();
    const current = [...peopleList.children];
    if (current.length !== ordered.length || ordered.some((li, i) => current[i] !== li)) {
      const focused = document.activeElement;
      peopleList.replaceChildren(...ordered);
      if (focused && focused !== document.activeElement && peopleList.contains(focused)) focused.focus();
    }
  }

  function createRow(p) {
    const li = document.createElement('li');
    li.dataset.testid = 'participant';
    li.dataset.identity = p.identity;
    li.innerHTML = `<span class="hand" data-testid="participant-hand" role="img" hidden>✋</span>
      <span class="pname" data-testid="participant-name"></span>
      <span class="mic state" data-testid="mic-state" role="img"></span>
      <span class="cam state" data-testid="camera-state" role="img"></span>`;
    if (isHost && p !== room.localParticipant) {
      const { identity } = p;
      const mute = hostButton(t('mute'), 'host-mute', () => {
        const pub = room.getParticipantByIdentity(identity)?.getTrackPublication(Track.Source.Microphone);
        if (!pub) return Promise.resolve();
        return twirp('MutePublishedTrack', { identity, track_sid: pub.trackSid, muted: true });
      });
      const remove = hostButton(t('remove'), 'host-remove', null);
      remove.classList.add('danger');
      let armed = null;
      remove.addEventListener('click', () => {
        if (!armed) { // the first click asks for confirmation
          remove.textContent = t('confirmRemove');
          armed = setTimeout(() => { armed = null; remove.textContent = t('remove'); }, 4000);
          return;
        }
        clearTimeout(armed);
        armed = null;
        remove.textContent = t('remove');
        hostAction(remove, () => twirp('RemoveParticipant', { identity }));
      });
      li.append(mute, remove);
    }
    return li;
  }

  function hostButton(text, testid, action) {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'small';
    b.textContent = text;
    b.dataset.testid = testid;
    if (action) b.addEventListener('click', () => hostAction(b, action));
    return b;
  }

  function updateRow(li, p) {
    const local = p === room.localParticipant;
    const name = displayName(p);
    li.querySelector('.pname').textContent = local ? `${name} (${t('you')})` : name;
    const hand = handOf(p);
    li.dataset.hand = hand === null ? '' : String(hand);
    const handEl = li.querySelector('.hand');
    handEl.hidden = hand === null;
    handEl.setAttribute('aria-label', t('handRaised'));
    const mic = micState(p);
    setState(li.querySelector('.mic'), mic, t('micState')[mic], mic === 'on' ? '🎤' : '🔇');
    const cam = camState(p);
    setState(li.querySelector('.cam'), cam, t('camState')[cam], cam === 'on' ? '📷' : '🚫');
    const mute = li.querySelector('[data-testid=host-mute]');
    if (mute) {
      mute.disabled = mic !== 'on' || mute.dataset.busy === '1';
      mute.setAttribute('aria-label', t('muteLabel', name));
    }
    const remove = li.querySelector('[data-testid=host-remove]');
    if (remove) remove.setAttribute('aria-label', t('removeLabel', name));
  }

  // ---- host actions: RoomService over Twirp (JSON) with the host's own token.
  async function twirp(method, body) {
    const res = await fetch(`/twirp/livekit.RoomService/${method}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}` },
      body: JSON.stringify({ room: room.name, ...body }),
    });
    const text = await res.text();
    if (!res.ok) {
      let msg = `HTTP ${res.status}`;
      try {
        const j = JSON.parse(text);
        msg = j.msg || j.code || msg;
      } catch {
        if (text) msg += ` ${text.slice(0, 200)}`;
      }
      throw new Error(`${method}: ${msg}`);
    }
    return text ? JSON.parse(text) : {};
  }

  async function hostAction(btn, action) {
    btn.disabled = true;
    btn.dataset.busy = '1';
    try {
      await action();
    } catch (e) {
      showError(t('hostFailed') + errText(e));
    } finally {
      delete btn.dataset.busy;
      btn.disabled = false;
      scheduleRender();
    }
  }

  // Runs every call, then reports the failures together.
  async function allOrReport(calls) {
    const results = await Promise.allSettled(calls.map((c) => c()));
    const failed = results.filter((r) => r.status === 'rejected').map((r) => errText(r.reason));
    if (failed.length) throw new Error(failed.join('; '));
  }

  $('#mute-all').addEventListener('click', (ev) => hostAction(ev.currentTarget, () =>
    allOrReport([...room.remoteParticipants.values()]
      .map((p) => [p, p.getTrackPublication(Track.Source.Microphone)])
      .filter(([, pub]) => pub && !pub.isMuted)
      .map(([p, pub]) => () => twirp('MutePublishedTrack', { identity: p.identity, track_sid: pub.trackSid, muted: true })))));

  $('#lower-all').addEventListener('click', (ev) => hostAction(ev.currentTarget, () =>
    allOrReport(people()
      .filter((p) => handOf(p) !== null)
      .map((p) => () => twirp('UpdateParticipant', { identity: p.identity, attributes: { [HAND]: '' } })))));

  // Subtitles for the whole meeting: the room metadata key the server reads
  // (speech.rooms), merged into whatever JSON object the metadata already holds.
  function setRoomSubtitles(on) {
    let meta = {};
    try {
      const parsed = JSON.parse(room.metadata || '{}');
      if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) meta = parsed;
    } catch {
      // not JSON: replaced
    }
    meta['parloir.subtitles'] = on;
    return twirp('UpdateRoomMetadata', { metadata: JSON.stringify(meta) });
  }
  // Recording: everyone sees that the meeting is recorded (the room's active_recording, which
  // livekit-client reports as isRecording); a host starts and stops a room composite through the
  // Egress API with its own token (roomRecord).
  function showRecording(on) {
    $('#recording').hidden = !on;
    $('#record-start').hidden = !!on;
    $('#record-stop').hidden = !on;
  }

  async function egress(method, body) {
    const res = await fetch(`/twirp/livekit.Egress/${method}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}` },
      body: JSON.stringify(body),
    });
    const json = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(`${method}: ${json.msg || json.code || `HTTP ${res.status}`}`);
    return json;
  }

  $('#record-start').addEventListener('click', (ev) => hostAction(ev.currentTarget, () =>
    egress('StartRoomCompositeEgress', {
      room_name: room.name,
      layout: 'speaker',
      file_outputs: [{ filepath: '{room_name}-{time}.mp4' }],
    })));
  $('#record-stop').addEventListener('click', (ev) => hostAction(ev.currentTarget, async () => {
    const { items = [] } = await egress('ListEgress', { room_name: room.name, active: true });
    await allOrReport(items.map((i) => () => egress('StopEgress', { egress_id: i.egress_id })));
  }));

  $('#subtitles-on').addEventListener('click', (ev) => hostAction(ev.currentTarget, () => setRoomSubtitles(true)));
  $('#subtitles-off').addEventListener('click', (ev) => hostAction(ev.currentTarget, () => setRoomSubtitles(false)));

  function showError(msg) {
    meetingErrorEl.querySelector('span').textContent = msg;
    meetingErrorEl.hidden = false;
  }
  meetingErrorEl.querySelector('button').addEventListener('click', () => { meetingErrorEl.hidden = true; });

  // ---- chat
  function addChat(identity, text, mine) {
    const p = room && room.getParticipantByIdentity(identity);
    const li = document.createElement('li');
    li.dataset.testid = 'chat-message';
    li.dataset.from = identity;
    if (mine) li.classList.add('mine');
    const from = document.createElement('span');
    from.className = 'from';
    from.dataset.testid = 'chat-from';
    from.textContent = mine ? `${displayName(p)} (${t('you')})` : p ? displayName(p) : identity;
    const body = document.createElement('span');
    body.dataset.testid = 'chat-text';
    body.textContent = text;
    li.append(from, body);
    chatLog.appendChild(li);
    chatLog.scrollTop = chatLog.scrollHeight;
    if (!mine && chatPanel.hidden) setUnread(unread + 1);
  }

  function setUnread(n) {
    unread = n;
    unreadEl.hidden = n === 0;
    unreadEl.textContent = String(n);
    unreadEl.setAttribute('aria-label', t('unread', n));
  }

  chatForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const input = chatForm.text;
    const text = input.value.trim();
    if (!room || !text) return;
    input.value = '';
    try {
      await room.localParticipant.sendText(text, { topic: CHAT_TOPIC });
      addChat(room.localParticipant.identity, text, true);
    } catch (e) {
      input.value = text;
      showError(t('actionFailed') + errText(e));
    }
  });

  function togglePanel(panel, btn, focusSel) {
    panel.hidden = !panel.hidden;
    btn.setAttribute('aria-expanded', String(!panel.hidden));
    if (!panel.hidden && focusSel) panel.querySelector(focusSel).focus();
  }
  chatToggle.addEventListener('click', () => {
    togglePanel(chatPanel, chatToggle, '#chat-input');
    if (!chatPanel.hidden) setUnread(0);
  });
  peopleToggle.addEventListener('click', () => togglePanel(peoplePanel, peopleToggle, null));

  // ---- subtitles: one line per utterance, replaced as its interim text grows, kept a few
  // seconds once final; the newest SUBTITLE_LINES are shown.
  function showSubtitle(identity, attrs, text) {
    const id = attrs['lk.segment_id'] || `${identity}-${Date.now()}`;
    const final = attrs['lk.transcription_final'] === 'true';
    let line = subtitleLines.get(id);
    if (!text.trim()) {
      if (line) removeSubtitle(id);
      return;
    }
    if (!line) {
      const el = document.createElement('p');
      el.className = 'subtitle';
      el.dataset.testid = 'subtitle';
      const who = document.createElement('span');
      who.className = 'who';
      who.dataset.testid = 'subtitle-from';
      const body = document.createElement('span');
      body.className = 'text';
      body.dataset.testid = 'subtitle-text';
      el.append(who, body);
      subtitlesEl.appendChild(el);
      line = { el, timer: null };
      subtitleLines.set(id, line);
    }
    const p = room && room.getParticipantByIdentity(identity);
    line.el.dataset.identity = identity;
    line.el.dataset.final = String(final);
    line.el.querySelector('.who').textContent = p ? displayName(p) : identity;
    line.el.querySelector('.text').textContent = text;
    if (final) {
      clearTimeout(line.timer);
      line.timer = setTimeout(() => removeSubtitle(id), SUBTITLE_KEEP_MS);
    }
    while (subtitleLines.size > SUBTITLE_LINES) removeSubtitle(subtitleLines.keys().next().value);
  }

  function removeSubtitle(id) {
    const line = subtitleLines.get(id);
    if (!line) return;
    clearTimeout(line.timer);
    line.el.remove();
    subtitleLines.delete(id);
  }

  function updateSubtitlesButton() {
    subtitlesEl.hidden = !subtitlesOn;
    ccBtn.setAttribute('aria-pressed', String(subtitlesOn));
    ccBtn.dataset.state = subtitlesOn ? 'on' : 'off';
  }
  updateSubtitlesButton();
  ccBtn.addEventListener('click', () => {
    subtitlesOn = !subtitlesOn;
    localStorage.setItem('parloir.subtitles', subtitlesOn ? '1' : '0');
    updateSubtitlesButton();
  });

  // ---- reactions
  async function sendReaction(emoji) {
    if (!room) return;
    try {
      await room.localParticipant.publishData(new TextEncoder().encode(JSON.stringify({ emoji })),
        { reliable: true, topic: REACTION_TOPIC });
      showReaction(room.localParticipant.identity, emoji);
    } catch (e) {
      showError(t('actionFailed') + errText(e));
    }
  }

  function onData(payload, participant, _kind, topic) {
    if (topic !== REACTION_TOPIC || !participant) return;
    try {
      const { emoji } = JSON.parse(new TextDecoder().decode(payload));
      if (REACTIONS.includes(emoji)) showReaction(participant.identity, emoji);
    } catch {
      // not ours
    }
  }

  function showReaction(identity, emoji) {
    const tile = findTile(identity, Track.Source.Camera);
    if (!tile) return;
    const el = document.createElement('span');
    el.className = 'reaction';
    el.dataset.testid = 'reaction';
    el.textContent = emoji;
    el.style.left = `${10 + Math.floor(Math.random() * 70)}%`;
    tile.querySelector('.reactions').appendChild(el);
    setTimeout(() => el.remove(), REACTION_MS);
  }

  // ---- controls
  function updateControls() {
    if (!room) return;
    const lp = room.localParticipant;
    micBtn.textContent = t(lp.isMicrophoneEnabled ? 'micOn' : 'micOff');
    micBtn.classList.toggle('off', !lp.isMicrophoneEnabled);
    micBtn.dataset.state = lp.isMicrophoneEnabled ? 'on' : 'muted';
    camBtn.textContent = t(lp.isCameraEnabled ? 'camOn' : 'camOff');
    camBtn.classList.toggle('off', !lp.isCameraEnabled);
    camBtn.dataset.state = lp.isCameraEnabled ? 'on' : 'off';
    screenBtn.textContent = t(lp.isScreenShareEnabled ? 'screenOn' : 'screenOff');
    screenBtn.dataset.state = lp.isScreenShareEnabled ? 'on' : 'off';
    const raised = handOf(lp) !== null;
    handBtn.textContent = `✋ ${t(raised ? 'handUp' : 'handDown')}`;
    handBtn.dataset.state = raised ? 'raised' : 'down';
  }

  async function toggle(btn, action) {
    btn.disabled = true;
    try {
      await action();
    } catch (e) {
      // Closing the browser's screen picker is not an error worth showing.
      if (!(e && e.name === 'NotAllowedError')) showError(t('actionFailed') + errText(e));
      console.warn(e);
    } finally {
      btn.disabled = false;
      render();
    }
  }

  micBtn.addEventListener('click', () => room && toggle(micBtn, () =>
    room.localParticipant.setMicrophoneEnabled(!room.localParticipant.isMicrophoneEnabled)));
  camBtn.addEventListener('click', () => room && toggle(camBtn, () =>
    room.localParticipant.setCameraEnabled(!room.localParticipant.isCameraEnabled)));
  screenBtn.addEventListener('click', () => room && toggle(screenBtn, () =>
    room.localParticipant.setScreenShareEnabled(!room.localParticipant.isScreenShareEnabled)));
  handBtn.addEventListener('click', () => room && toggle(handBtn, () =>
    room.localParticipant.setAttributes({ [HAND]: handOf(room.localParticipant) === null ? String(Date.now()) : '' })));
  audioBtn.addEventListener('click', () => room && room.startAudio().then(() => { audioBtn.hidden = true; }));
  $('#leave').addEventListener('click', async () => {
    if (!room) return;
    const r = room;
    room = null; // a voluntary leave shows no "disconnected" message
    await r.disconnect();
    showLobby();
  });
})();

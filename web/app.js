// Parloir meeting page: plain JS on top of livekit-client's UMD build (window.LivekitClient).
'use strict';

(() => {
  const { Room, RoomEvent, Track } = window.LivekitClient;

  const STRINGS = {
    en: {
      room: 'Room', name: 'Your name', join: 'Join', joining: 'Joining…', leave: 'Leave',
      micOn: 'Mute', micOff: 'Unmute', camOn: 'Stop camera', camOff: 'Start camera',
      enableAudio: 'Enable audio', you: 'you', disconnected: 'Disconnected.',
      failed: 'Could not join: ',
    },
    fr: {
      room: 'Salle', name: 'Votre nom', join: 'Rejoindre', joining: 'Connexion…', leave: 'Quitter',
      micOn: 'Couper le micro', micOff: 'Activer le micro', camOn: 'Couper la caméra',
      camOff: 'Activer la caméra', enableAudio: 'Activer le son', you: 'vous',
      disconnected: 'Déconnecté.', failed: 'Connexion impossible : ',
    },
  };
  const lang = (navigator.language || 'en').toLowerCase().startsWith('fr') ? 'fr' : 'en';
  const t = (key) => STRINGS[lang][key];

  const $ = (sel) => document.querySelector(sel);
  const form = $('#join');
  const grid = $('#grid');
  const errorEl = $('#error');
  const micBtn = $('#mic');
  const camBtn = $('#cam');
  const audioBtn = $('#audio');

  let room = null;

  document.documentElement.lang = lang;
  document.querySelectorAll('[data-i18n]').forEach((el) => { el.textContent = t(el.dataset.i18n); });

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
    try {
      await join(roomName, name);
      history.replaceState(null, '', `?room=${encodeURIComponent(roomName)}`);
    } catch (e) {
      errorEl.textContent = t('failed') + (e && e.message ? e.message : e);
      if (room) await room.disconnect();
      room = null;
    } finally {
      submit.disabled = false;
      submit.textContent = t('join');
    }
  });

  async function join(roomName, name) {
    // A random suffix keeps identities unique, so a second tab does not evict the first.
    const identity = `${name.normalize('NFD').replace(/[\u0300-\u036f]/g, '').toLowerCase().replace(/[^a-z0-9]+/g, '-').slice(0, 32)}-${Math.random().toString(36).slice(2, 8)}`;
    const q = new URLSearchParams({ room: roomName, identity, name });
    const res = await fetch(`/api/dev-token?${q}`);
    if (!res.ok) throw new Error(`dev-token: HTTP ${res.status} ${await res.text()}`);
    const { token, url } = await res.json();
    const wsUrl = url || `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}`;

    room = new Room({ adaptiveStream: true, dynacast: true });
    room
      .on(RoomEvent.ParticipantConnected, render)
      .on(RoomEvent.ParticipantDisconnected, render)
      .on(RoomEvent.TrackSubscribed, onTrackSubscribed)
      .on(RoomEvent.TrackUnsubscribed, (track) => { track.detach().forEach((el) => el.remove()); render(); })
      .on(RoomEvent.LocalTrackPublished, render)
      .on(RoomEvent.LocalTrackUnpublished, render)
      .on(RoomEvent.TrackMuted, render)
      .on(RoomEvent.TrackUnmuted, render)
      .on(RoomEvent.ActiveSpeakersChanged, markSpeakers)
      .on(RoomEvent.AudioPlaybackStatusChanged, () => { audioBtn.hidden = room.canPlaybackAudio; })
      .on(RoomEvent.Disconnected, onDisconnected);

    await room.connect(wsUrl, token);
    $('#room-name').textContent = roomName;
    form.hidden = true;
    $('#meeting').hidden = false;
    render();
    // The join click is a user gesture: use it to unlock audio playback.
    room.startAudio().catch(() => {});
    try {
      await room.localParticipant.enableCameraAndMicrophone();
    } catch (e) {
      console.warn('could not publish camera/microphone', e);
    }
    updateControls();
    render();
  }

  function onTrackSubscribed(track) {
    if (track.kind === Track.Kind.Audio) {
      $('#audio-sink').appendChild(track.attach());
    }
    render();
  }

  function onDisconnected() {
    grid.replaceChildren();
    $('#audio-sink').replaceChildren();
    $('#meeting').hidden = true;
    $('#room-name').textContent = '';
    form.hidden = false;
    if (room) errorEl.textContent = t('disconnected');
    room = null;
  }

  // Keeps one tile per participant (local first), each showing its camera or its initial.
  function render() {
    if (!room) return;
    const people = [room.localParticipant, ...room.remoteParticipants.values()];
    const keep = new Set(people.map((p) => p.identity));
    for (const tile of [...grid.children]) {
      if (!keep.has(tile.dataset.identity)) tile.remove();
    }
    for (const p of people) {
      let tile = grid.querySelector(`[data-identity="${CSS.escape(p.identity)}"]`);
      if (!tile) {
        tile = document.createElement('div');
        tile.className = 'tile';
        tile.dataset.identity = p.identity;
        tile.innerHTML = '<video autoplay playsinline muted></video><div class="avatar"></div><div class="name"></div>';
        if (p === room.localParticipant) tile.classList.add('local');
        grid.appendChild(tile);
      }
      const label = p.name || p.identity;
      tile.querySelector('.name').textContent = p === room.localParticipant ? `${label} (${t('you')})` : label;
      tile.querySelector('.avatar').textContent = label.slice(0, 1).toUpperCase();

      const pub = p.getTrackPublication(Track.Source.Camera);
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
  }

  function markSpeakers(speakers) {
    const active = new Set(speakers.map((p) => p.identity));
    for (const tile of grid.children) tile.classList.toggle('speaking', active.has(tile.dataset.identity));
  }

  function updateControls() {
    if (!room) return;
    const lp = room.localParticipant;
    micBtn.textContent = t(lp.isMicrophoneEnabled ? 'micOn' : 'micOff');
    micBtn.classList.toggle('off', !lp.isMicrophoneEnabled);
    camBtn.textContent = t(lp.isCameraEnabled ? 'camOn' : 'camOff');
    camBtn.classList.toggle('off', !lp.isCameraEnabled);
  }

  async function toggle(btn, enabled, set) {
    btn.disabled = true;
    try {
      await set(!enabled);
    } catch (e) {
      console.warn(e);
    } finally {
      btn.disabled = false;
      updateControls();
      render();
    }
  }

  micBtn.addEventListener('click', () =>
    room && toggle(micBtn, room.localParticipant.isMicrophoneEnabled, (on) => room.localParticipant.setMicrophoneEnabled(on)));
  camBtn.addEventListener('click', () =>
    room && toggle(camBtn, room.localParticipant.isCameraEnabled, (on) => room.localParticipant.setCameraEnabled(on)));
  audioBtn.addEventListener('click', () => room && room.startAudio().then(() => { audioBtn.hidden = true; }));
  $('#leave').addEventListener('click', async () => {
    if (!room) return;
    const r = room;
    room = null; // a voluntary leave shows no "disconnected" message
    await r.disconnect();
    onDisconnected();
  });
})();

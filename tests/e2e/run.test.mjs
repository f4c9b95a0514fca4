// Browser end-to-end tests: unmodified livekit-client in headless Chromium against a Parloir server.
//
//   PARLOIR_BIN=target/release/parloir node --test tests/e2e/
//
// One Chromium, one browser context per participant. Every scenario runs on both signalling
// paths: two PeerConnections on /rtc (singlePeerConnection=false) and one PeerConnection on
// /rtc/v1 (singlePeerConnection=true; a server that answers 404 there makes the client fall back
// to /rtc, and the test must pass either way). On failure the page consoles, state() snapshots
// and the server's log are printed.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { execFileSync, spawnSync } from 'node:child_process';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

import { ParloirServer } from './server.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const API_KEY = 'devkey';
const API_SECRET = 'secret';
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const WAIT_MS = 45_000; // generous: this runs on a 2-core machine
const POLL_MS = 250;
const TEST_TIMEOUT_MS = 150_000;
const VERBOSE = !!process.env.E2E_VERBOSE;

const PARLOIR_BIN = process.env.PARLOIR_BIN ? path.resolve(process.env.PARLOIR_BIN) : '';
if (!PARLOIR_BIN) {
  throw new Error('PARLOIR_BIN is not set: PARLOIR_BIN=target/release/parloir node --test tests/e2e/');
}
if (!fs.existsSync(PARLOIR_BIN)) {
  throw new Error(`PARLOIR_BIN=${PARLOIR_BIN} does not exist (build it with cargo build --release)`);
}
if (!fs.existsSync(CHROMIUM)) {
  throw new Error(`Chromium not found at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_BIN)`);
}

// ---------------------------------------------------------------------------------------------
// Access tokens (HS256 JWT) minted with node's crypto.

function b64url(buf) {
  return Buffer.from(buf).toString('base64url');
}

// A back end's token: RoomService administration of one room, no joining.
function adminToken(room) {
  const now = Math.floor(Date.now() / 1000);
  const claims = { iss: API_KEY, nbf: now - 10, exp: now + 600, video: { roomAdmin: true, room } };
  const body = `${b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${b64url(JSON.stringify(claims))}`;
  return `${body}.${b64url(crypto.createHmac('sha256', API_SECRET).update(body).digest())}`;
}

// A RoomService call with a JSON body, as LiveKit's Node server SDK makes it.
async function roomService(room, method, body) {
  const res = await fetch(`http://127.0.0.1:${httpPort}/twirp/livekit.RoomService/${method}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${adminToken(room)}` },
    body: JSON.stringify(body),
  });
  const json = await res.json();
  assert.equal(res.status, 200, `${method}: ${JSON.stringify(json)}`);
  return json;
}

export function mintToken({ identity, name = identity, room, ttlSecs = 3600 }) {
  const now = Math.floor(Date.now() / 1000);
  const header = { alg: 'HS256', typ: 'JWT' };
  const claims = {
    iss: API_KEY,
    sub: identity,
    name,
    nbf: now - 10,
    exp: now + ttlSecs,
    video: {
      roomJoin: true,
      room,
      canPublish: true,
      canSubscribe: true,
      canPublishData: true,
      canUpdateOwnMetadata: true,
    },
  };
  const body = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  const sig = crypto.createHmac('sha256', API_SECRET).update(body).digest();
  return `${body}.${b64url(sig)}`;
}

// ---------------------------------------------------------------------------------------------
// Ports, the server process, the static page server.

const server = new ParloirServer({
  bin: PARLOIR_BIN,
  name: 'e2e',
  webDir: path.join(HERE, '..', '..', 'web'),
  verbose: VERBOSE,
});
// The server's HTTP port, once started.
let httpPort = 0;
// Its data directory (recordings/).
const DATA_DIR = fs.mkdtempSync(path.join(os.tmpdir(), 'parloir-e2e-'));

async function startServer() {
  await server.start({
    httpPort: Number(process.env.PARLOIR_E2E_HTTP_PORT) || 0,
    udpPort: Number(process.env.PARLOIR_E2E_UDP_PORT) || 0,
    extraArgs: ['--data-dir', DATA_DIR],
  });
  httpPort = server.httpPort;
}

const STATIC = {
  '/': [path.join(HERE, 'page/index.html'), 'text/html; charset=utf-8'],
  '/index.html': [path.join(HERE, 'page/index.html'), 'text/html; charset=utf-8'],
  '/page.js': [path.join(HERE, 'page/page.js'), 'text/javascript; charset=utf-8'],
  '/livekit-client.umd.js': [
    path.join(HERE, 'node_modules/livekit-client/dist/livekit-client.umd.js'),
    'text/javascript; charset=utf-8',
  ],
};

let pageServer = null;
let pageUrl = '';

async function startPageServer() {
  const umd = STATIC['/livekit-client.umd.js'][0];
  if (!fs.existsSync(umd)) throw new Error(`${umd} missing: run npm ci in ${HERE}`);
  pageServer = http.createServer((req, res) => {
    const entry = STATIC[new URL(req.url, 'http://x').pathname];
    if (req.url === '/favicon.ico') {
      res.writeHead(204).end();
      return;
    }
    if (!entry || req.method !== 'GET') {
      res.writeHead(404).end('not found');
      return;
    }
    fs.readFile(entry[0], (err, body) => {
      if (err) {
        res.writeHead(500).end(String(err));
        return;
      }
      res.writeHead(200, { 'content-type': entry[1], 'cache-control': 'no-store' }).end(body);
    });
  });
  await new Promise((resolve) => pageServer.listen(0, '127.0.0.1', resolve));
  pageUrl = `http://127.0.0.1:${pageServer.address().port}/`;
}

// ---------------------------------------------------------------------------------------------
// Browser and participants.

let browser = null;

const BROWSER_ARGS = [
  '--no-sandbox',
  '--headless',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--autoplay-policy=no-user-gesture-required',
];

async function launchBrowser() {
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: BROWSER_ARGS });
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: timed out after ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

class Participant {
  constructor(identity, context, page) {
    this.identity = identity;
    this.context = context;
    this.page = page;
    this.logs = [];
    this.lastState = null;
  }

  log(line) {
    this.logs.push(line);
    if (this.logs.length > 2000) this.logs.shift();
    if (VERBOSE) console.log(`[${this.identity}] ${line}`);
  }

  async state() {
    this.lastState = await withTimeout(this.page.evaluate(() => window.state()), 10_000, 'state()');
    return this.lastState;
  }

  stats() {
    return withTimeout(this.page.evaluate(() => window.stats()), 10_000, 'stats()');
  }

  localVideo() {
    return withTimeout(this.page.evaluate(() => window.localVideo()), 10_000, 'localVideo()');
  }

  sendChat(text) {
    return withTimeout(this.page.evaluate((t) => window.sendChat(t), text), 20_000, 'sendChat');
  }

  sendData(text, destinationIdentities, reliable = true) {
    return withTimeout(
      this.page.evaluate(([t, d, r]) => window.sendData(t, d, r), [text, destinationIdentities ?? null, reliable]),
      20_000,
      'sendData',
    );
  }

  leave() {
    return withTimeout(this.page.evaluate(() => window.leave()), 15_000, 'leave()');
  }
}

// One scenario's participants, with diagnostics on failure.
class Session {
  constructor(name) {
    this.name = name;
    this.participants = [];
  }

  async join(identity, room, opts) {
    const context = await browser.newContext({ permissions: ['camera', 'microphone'] });
    const page = await context.newPage();
    const p = new Participant(identity, context, page);
    this.participants.push(p);
    page.on('console', (m) => p.log(`console.${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => p.log(`pageerror: ${e.stack || e}`));
    page.on('crash', () => p.log('page crashed'));
    await page.goto(pageUrl);
    await page.waitForFunction(() => typeof window.join === 'function' && !!window.LivekitClient);
    const token = mintToken({ identity, room });
    const url = `ws://127.0.0.1:${httpPort}`;
    const t0 = Date.now();
    await withTimeout(
      page.evaluate(([u, tok, o]) => window.join(u, tok, o), [url, token, opts]),
      WAIT_MS,
      `${identity} join(${room})`,
    );
    p.log(`# joined ${room} in ${Date.now() - t0} ms`);
    return p;
  }

  async dump() {
    console.log(`\n######## diagnostics for "${this.name}" ########`);
    for (const p of this.participants) {
      let st = p.lastState;
      try {
        st = await p.state();
      } catch (e) {
        p.log(`# state() failed during dump: ${e.message}`);
      }
      let stats = null;
      try {
        stats = await p.stats();
      } catch {
        // page may be gone
      }
      const { events = [], ...rest } = st ?? {};
      console.log(`----- ${p.identity}: state() -----\n${JSON.stringify(rest)}`);
      console.log(events.map((e) => `[${p.identity}] event +${e.t}ms ${e.what}`).join('\n'));
      console.log(`----- ${p.identity}: stats() -----\n${JSON.stringify(stats)}`);
      console.log(`----- ${p.identity}: console (last 150 lines) -----`);
      console.log(p.logs.slice(-150).map((l) => `[${p.identity}] ${l}`).join('\n'));
    }
    server.dumpLog();
  }

  async close() {
    for (const p of this.participants) {
      try {
        await p.leave();
      } catch {
        // already gone
      }
      await p.context.close().catch(() => {});
    }
  }
}

// Polls `fn` until it returns a truthy value; on timeout the last value or error goes into the message.
async function waitFor(what, fn, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      last = v;
    } catch (e) {
      last = `error: ${e.message}`;
    }
    if (server.exit) throw new Error(`server exited (${JSON.stringify(server.exit)}) while waiting for ${what}`);
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
    }
    await sleep(POLL_MS);
  }
}

function scenario(name, fn) {
  test(name, { timeout: TEST_TIMEOUT_MS }, async () => {
    const s = new Session(name);
    try {
      await fn(s);
    } catch (e) {
      await s.dump().catch((d) => console.log(`dump failed: ${d}`));
      throw e;
    } finally {
      await s.close();
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Assertions on state() / stats().

// Does `st` show exactly `others` as remotes (optionally each with subscribed audio and video)?
function seesExactly(st, others, withMedia) {
  if (st.connectionState !== 'connected') return false;
  const ids = st.remotes.map((r) => r.identity).sort();
  if (JSON.stringify(ids) !== JSON.stringify([...others].sort())) return false;
  if (!withMedia) return true;
  return st.remotes.every((r) =>
    ['audio', 'video'].every((kind) => r.tracks.some((t) => t.kind === kind && t.subscribed)),
  );
}

async function waitForMesh(ps, withMedia) {
  await waitFor(`full mesh${withMedia ? ' with subscribed audio+video' : ''}`, async () => {
    for (const p of ps) {
      const others = ps.filter((o) => o !== p).map((o) => o.identity);
      if (!seesExactly(await p.state(), others, withMedia)) return false;
    }
    return true;
  });
}

// stats() summed per "remote identity/kind".
function byRemoteKind(stats) {
  const m = {};
  for (const s of stats) {
    const k = `${s.participant}/${s.kind}`;
    m[k] ??= { framesDecoded: 0, bytesReceived: 0 };
    m[k].framesDecoded += s.framesDecoded;
    m[k].bytesReceived += s.bytesReceived;
  }
  return m;
}

function mediaCounter(kind) {
  return kind === 'video' ? 'framesDecoded' : 'bytesReceived';
}

async function waitForMediaGrowth(p, remotes) {
  const keys = remotes.flatMap((r) => [`${r}/video`, `${r}/audio`]);
  // First: every remote track has decoded something.
  const first = await waitFor(`${p.identity}: media from ${remotes.join(', ')}`, async () => {
    const m = byRemoteKind(await p.stats());
    return keys.every((k) => (m[k]?.[mediaCounter(k.split('/')[1])] ?? 0) > 0) ? m : false;
  });
  // Then: the counters keep rising (media is flowing, not a single burst).
  await waitFor(`${p.identity}: media counters rising (from ${JSON.stringify(first)})`, async () => {
    const m = byRemoteKind(await p.stats());
    return keys.every((k) => {
      const c = mediaCounter(k.split('/')[1]);
      return (m[k]?.[c] ?? 0) > first[k][c] + (c === 'framesDecoded' ? 10 : 2000);
    });
  }, 30_000);
}

function uniq() {
  return crypto.randomBytes(3).toString('hex');
}

// ---------------------------------------------------------------------------------------------
// The suite.

before(async () => {
  await startPageServer();
  await startServer();
  await launchBrowser();
});

after(async () => {
  await browser?.close().catch(() => {});
  await server.stop();
  pageServer?.close();
  fs.rmSync(DATA_DIR, { recursive: true, force: true });
});

// One counter of /metrics.
async function metric(name) {
  const text = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
  const m = text.match(new RegExp(`^${name} (\\d+)$`, 'm'));
  assert.ok(m, `/metrics has no ${name}`);
  return Number(m[1]);
}

// Signal connections the server accepted on one path, from /metrics.
async function signalConnections(path) {
  const text = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
  const m = text.match(new RegExp(`^parloir_signal_connections_total\\{path="${path}"\\} (\\d+)$`, 'm'));
  assert.ok(m, `/metrics has no signal connection counter for ${path}`);
  return Number(m[1]);
}

for (const singlePeerConnection of [false, true]) {
  const pathName = singlePeerConnection ? 'single-pc-v1' : 'dual-pc-v0';
  const opts = { singlePeerConnection };

  describe(`signalling ${pathName} (singlePeerConnection=${singlePeerConnection})`, () => {
    scenario('three participants receive each other\'s audio and video', async (s) => {
      const room = `e2e-media-${pathName}-${uniq()}`;
      const ids = ['alice', 'bob', 'carol'];
      const path = singlePeerConnection ? '/rtc/v1' : '/rtc';
      const before = await signalConnections(path);
      const ps = [];
      for (const id of ids) ps.push(await s.join(id, room, opts));
      await waitForMesh(ps, true);
      // The path under test served all three (no fallback from /rtc/v1 to /rtc).
      assert.equal(await signalConnections(path), before + 3, `three joins on ${path}`);
      for (const p of ps) {
        await waitForMediaGrowth(p, ids.filter((i) => i !== p.identity));
      }
    });

    scenario('chat and data packets reach the right participants', async (s) => {
      const room = `e2e-data-${pathName}-${uniq()}`;
      const [a, b, c] = [
        await s.join('alice', room, opts),
        await s.join('bob', room, opts),
        await s.join('carol', room, opts),
      ];
      await waitForMesh([a, b, c], false);

      // lk.chat text stream from alice reaches bob and carol.
      const chatText = `bonjour ${uniq()} ✓`;
      await a.sendChat(chatText);
      for (const p of [b, c]) {
        await waitFor(`${p.identity} receives alice's chat`, async () =>
          (await p.state()).chat.some((m) => m.from === 'alice' && m.text === chatText),
        );
      }

      // A broadcast data packet from bob reaches alice and carol.
      const broadcast = `broadcast ${uniq()}`;
      await b.sendData(broadcast);
      for (const p of [a, c]) {
        await waitFor(`${p.identity} receives bob's data packet`, async () =>
          (await p.state()).data.some((d) => d.from === 'bob' && d.payload === broadcast),
        );
      }

      // A lossy packet (the `_lossy` channel) from alice reaches bob and carol on loopback.
      const lossy = `lossy ${uniq()}`;
      await a.sendData(lossy, null, false);
      for (const p of [b, c]) {
        await waitFor(`${p.identity} receives alice's lossy packet`, async () =>
          (await p.state()).data.some((d) => d.from === 'alice' && d.payload === lossy),
        );
      }

      // A data packet from carol addressed to alice reaches alice only.
      const direct = `for alice only ${uniq()}`;
      await c.sendData(direct, ['alice']);
      await waitFor('alice receives carol\'s addressed data packet', async () =>
        (await a.state()).data.some((d) => d.from === 'carol' && d.payload === direct),
      );
      await sleep(2000); // give a misrouted copy time to arrive
      const bobData = (await b.state()).data;
      assert.ok(
        !bobData.some((d) => d.payload === direct),
        `bob received a packet addressed to alice only: ${JSON.stringify(bobData)}`,
      );
      // Nobody hears their own messages back.
      assert.ok(!(await a.state()).chat.some((m) => m.text === chatText), 'alice got her own chat back');
      assert.ok(!(await b.state()).data.some((d) => d.payload === broadcast), 'bob got his own data back');
    });

    scenario('mute, name, metadata, attributes and speaking reach the others', async (s) => {
      const room = `e2e-state-${pathName}-${uniq()}`;
      const [a, b] = [await s.join('alice', room, opts), await s.join('bob', room, opts)];
      await waitForMesh([a, b], true);
      const aliceSeenByBob = async () => (await b.state()).remotes.find((r) => r.identity === 'alice');
      const aliceMic = async () =>
        (await aliceSeenByBob())?.tracks.find((t) => t.kind === 'audio');

      await a.page.evaluate(() => window.setMicMuted(true));
      await waitFor('bob sees alice muted', async () => (await aliceMic())?.muted === true);
      await a.page.evaluate(() => window.setMicMuted(false));
      await waitFor('bob sees alice unmuted', async () => (await aliceMic())?.muted === false);
      await waitForMediaGrowth(b, ['alice']);

      const hand = String(Date.now());
      await a.page.evaluate((hand) =>
        window.updateSelf({ name: 'Alice Liddell', metadata: '{"role":"host"}', attributes: { handRaisedAt: hand } }), hand);
      await waitFor('bob sees alice\'s new name, metadata and attributes', async () => {
        const r = await aliceSeenByBob();
        return r?.name === 'Alice Liddell' && r?.metadata === '{"role":"host"}' && r?.attributes?.handRaisedAt === hand;
      });

      // Chromium's fake microphone beeps; its RFC 6464 levels make alice an active speaker.
      await waitFor('bob sees alice speaking', async () => (await b.state()).speakersSeen.includes('alice'));
    });

    scenario('unsubscribing and subscribing again stops and restarts media', async (s) => {
      const room = `e2e-subs-${pathName}-${uniq()}`;
      const [a, b] = [await s.join('alice', room, opts), await s.join('bob', room, opts)];
      await waitForMesh([a, b], true);
      const aliceVideo = async () =>
        (await b.state()).remotes.find((r) => r.identity === 'alice')?.tracks.find((t) => t.kind === 'video');

      await b.page.evaluate(() => window.setSubscribed('alice', 'video', false));
      await waitFor('bob is unsubscribed from alice\'s video', async () => (await aliceVideo())?.subscribed === false);
      await b.page.evaluate(() => window.setSubscribed('alice', 'video', true));
      await waitFor('bob is subscribed to alice\'s video again', async () => (await aliceVideo())?.subscribed === true);
      await waitForMediaGrowth(b, ['alice']);
      // And once more: the second time needs a new receive m-line on a single connection.
      await b.page.evaluate(() => window.setSubscribed('alice', 'video', false));
      await waitFor('bob is unsubscribed again', async () => (await aliceVideo())?.subscribed === false);
      await b.page.evaluate(() => window.setSubscribed('alice', 'video', true));
      await waitForMediaGrowth(b, ['alice']);
    });

    for (const codec of ['h264', 'vp9']) {
      scenario(`a ${codec} publisher is decoded by the others`, async (s) => {
        const room = `e2e-${codec}-${pathName}-${uniq()}`;
        const a = await s.join('alice', room, { ...opts, videoCodec: codec });
        const b = await s.join('bob', room, opts);
        await waitForMesh([a, b], true);
        await waitForMediaGrowth(b, ['alice']);
        const video = (await b.stats()).find((t) => t.participant === 'alice' && t.kind === 'video');
        assert.equal(video?.codec?.toLowerCase(), `video/${codec}`, JSON.stringify(video));
      });
    }

    // livekit-client publishes a microphone with RED and DTX unless told not to, and leaves both
    // to the server's answer: RED first, and usedtx=1 on Opus.
    scenario('a microphone is sent in RED with DTX, and heard', async (s) => {
      const room = `e2e-red-${pathName}-${uniq()}`;
      const [a, b] = [await s.join('alice', room, opts), await s.join('bob', room, opts)];
      await waitForMesh([a, b], true);
      await waitForMediaGrowth(b, ['alice']);
      const sent = await a.page.evaluate(() => window.localAudio());
      const heard = (await b.stats()).find((t) => t.participant === 'alice' && t.kind === 'audio');
      console.log(`microphone: sent ${JSON.stringify(sent)}; heard ${JSON.stringify(heard)}`);
      assert.equal(sent?.codecs[0]?.mimeType?.toLowerCase(), 'audio/red', JSON.stringify(sent));
      const opus = sent.codecs.find((c) => c.mimeType.toLowerCase() === 'audio/opus');
      assert.match(opus?.fmtp ?? '', /usedtx=1/, JSON.stringify(sent));
      assert.ok(heard?.packetsReceived > 0, JSON.stringify(heard));
    });

    scenario('a client whose WebSocket drops resumes and keeps its media', async (s) => {
      const room = `e2e-resume-${pathName}-${uniq()}`;
      const [a, b] = [await s.join('alice', room, opts), await s.join('bob', room, opts)];
      await waitForMesh([a, b], true);
      const sidBefore = (await a.state()).sid;
      await a.page.evaluate(() => window.simulate('signal-reconnect'));
      await waitFor('alice resumes', async () => (await a.state()).events.some((e) => e.what === 'reconnected'));
      const st = await a.state();
      assert.equal(st.sid, sidBefore, 'a resume keeps the participant (no new join)');
      assert.ok(!st.events.some((e) => e.what.startsWith('disconnected')), JSON.stringify(st.events));
      const bobSeesAlice = (await b.state()).remotes.find((r) => r.identity === 'alice');
      assert.equal(bobSeesAlice?.sid, sidBefore, 'bob still sees the same alice');
      // Media keeps flowing both ways after the resume.
      await waitForMediaGrowth(a, ['bob']);
      await waitForMediaGrowth(b, ['alice']);
    });

    scenario('a client whose peer connections close under it is told to join again, and does', async (s) => {
      const room = `e2e-rejoin-${pathName}-${uniq()}`;
      const [a, b] = [await s.join('alice', room, opts), await s.join('bob', room, opts)];
      await waitForMesh([a, b], true);
      const sidBefore = (await a.state()).sid;
      await a.page.evaluate(() => window.closePeerConnections());
      // The server cannot bring a closed connection back: it tells the client to rejoin
      // (LeaveRequest action RECONNECT, as LiveKit does), not to give up.
      await waitFor('alice joins again', async () => (await a.state()).events.some((e) => e.what === 'reconnected'));
      const st = await a.state();
      assert.ok(!st.events.some((e) => e.what.startsWith('disconnected')), JSON.stringify(st.events));
      assert.notEqual(st.sid, sidBefore, 'a full reconnect is a new participant');
      await waitFor('bob sees the new alice', async () =>
        (await b.state()).remotes.some((r) => r.identity === 'alice' && r.sid === st.sid));
      await waitForMediaGrowth(a, ['bob']);
      await waitForMediaGrowth(b, ['alice']);
    });

    scenario('a back end drives the room over the RoomService API', async (s) => {
      const room = `e2e-api-${pathName}-${uniq()}`;
      const [a, b] = [await s.join('alice', room, opts), await s.join('bob', room, opts)];
      await waitForMesh([a, b], true);
      const listed = await roomService(room, 'ListParticipants', { room });
      assert.deepEqual(listed.participants.map((p) => p.identity).sort(), ['alice', 'bob']);

      await roomService(room, 'UpdateParticipant', { room, identity: 'alice', name: 'Alice (host)' });
      await waitFor('bob sees alice\'s new name', async () =>
        (await b.state()).remotes.find((r) => r.identity === 'alice')?.name === 'Alice (host)');

      const payload = Buffer.from(`from the back end ${uniq()}`).toString('base64');
      await roomService(room, 'SendData', { room, data: payload, kind: 'RELIABLE', topic: 'api', destination_identities: ['bob'] });
      await waitFor('bob\'s page receives the data', async () =>
        (await b.state()).data.some((d) => d.topic === 'api' && Buffer.from(d.payload).toString('base64') === payload));

      const mic = (await b.state()).remotes.find((r) => r.identity === 'alice').tracks.find((t) => t.kind === 'audio');
      const muted = await roomService(room, 'MutePublishedTrack', { room, identity: 'alice', track_sid: mic.sid, muted: true });
      assert.equal(muted.track.muted, true);
      await waitFor('bob sees alice\'s microphone muted', async () =>
        (await b.state()).remotes.find((r) => r.identity === 'alice')?.tracks.find((t) => t.sid === mic.sid)?.muted === true);

      await roomService(room, 'RemoveParticipant', { room, identity: 'bob' });
      await waitFor('bob\'s page is disconnected', async () =>
        (await b.state()).events.some((e) => e.what.startsWith('disconnected')));
      await waitFor('alice sees bob gone', async () => seesExactly(await a.state(), [], false));
    });

    scenario('with UDP blocked, a client still joins over ICE-TCP', async (s) => {
      const room = `e2e-tcp-${pathName}-${uniq()}`;
      const before = await metric('parloir_ice_tcp_packets_in_total');
      const a = await s.join('alice', room, opts);
      const b = await s.join('bob', room, { ...opts, udpBlocked: true });
      await waitForMesh([a, b], true);
      await waitForMediaGrowth(b, ['alice']);
      await waitForMediaGrowth(a, ['bob']);
      const after = await metric('parloir_ice_tcp_packets_in_total');
      assert.ok(after > before + 100, `bob's media came over ICE-TCP (${before} → ${after} packets)`);
    });

    scenario('a participant who leaves disappears for the others', async (s) => {
      const room = `e2e-leave-${pathName}-${uniq()}`;
      const [a, b, c] = [
        await s.join('alice', room, opts),
        await s.join('bob', room, opts),
        await s.join('carol', room, opts),
      ];
      await waitForMesh([a, b, c], true);
      await c.leave();
      await waitFor('alice and bob see carol gone', async () =>
        seesExactly(await a.state(), ['bob'], false) && seesExactly(await b.state(), ['alice'], false),
      );
      // The two who stayed still have each other's media.
      await waitForMesh([a, b], true);
    });
  });
}

// The meeting page the server itself serves on / (what `make run` opens): two tabs join one room
// through its form and each shows the other's video tile playing.
describe('simulcast', () => {
  // livekit-client publishes the fake 1280x720 camera as three layers (320x180, 640x360,
  // 1280x720): VP8 as three simulcast encodings, VP9 as one SVC encoding (L3T3_KEY) whose
  // frames carry the three spatial layers. A subscriber with adaptiveStream asks for the size
  // its video element shows, and the server forwards the layer that fits (getStats frameWidth
  // shows which): another simulcast encoding, or the frames cut down to fewer spatial layers.
  for (const codec of ['vp8', 'vp9', 'av1']) {
    scenario(`${codec}: a small tile gets the low layer, a large tile the high layer, and back`, async (s) => {
      const room = `e2e-simulcast-${codec}-${uniq()}`;
      const alice = await s.join('alice', room, { singlePeerConnection: true, videoCodec: codec });
      const bob = await s.join('bob', room, { singlePeerConnection: true, publish: false, adaptiveStream: true });
      // Waits until bob's view of alice's video passes `ok`; a timeout says what bob last
      // decoded and what alice's encoder was sending.
      let seen;
      const until = async (what, ok) => {
        try {
          return await waitFor(what, async () => {
            seen = (await bob.stats()).find((t) => t.participant === 'alice' && t.kind === 'video');
            return seen && ok(seen) ? seen : false;
          });
        } catch (e) {
          const sent = await alice.localVideo().catch((f) => `error: ${f.message}`);
          e.message += `; bob last decoded ${JSON.stringify(seen)}; alice sends ${JSON.stringify(sent)}`;
          throw e;
        }
      };
      // The page's video elements are 160x120.
      const small = await until("bob decodes alice's low layer in a small tile", (v) =>
        v.framesDecoded > 30 && v.frameWidth > 0 && v.frameWidth <= 320);
      assert.equal(small.codec?.toLowerCase(), `video/${codec}`, JSON.stringify(small));
      await bob.page.evaluate(() => window.resizeVideos(1280, 720));
      // Under CPU pressure Chromium may scale every layer down, so "higher" is asked relative
      // to what the small tile got: at least twice as wide.
      const large = await until('bob decodes a higher layer in a large tile', (v) => v.frameWidth >= 2 * small.frameWidth);
      await bob.page.evaluate(() => window.resizeVideos(160, 90));
      const back = await until('bob is back on the low layer', (v) =>
        v.frameWidth <= small.frameWidth && v.framesDecoded > large.framesDecoded);
      // Frame rate: bob asks for 4 frames/s (setVideoFPS) and gets fewer temporal layers, then
      // takes the wish back and gets them all again. Alice's encoder sends three temporal
      // layers (Chromium's VP8 simulcast encodes each layer L1T3; VP9 and AV1 are L3T3_KEY):
      // layer 0 alone is a quarter of its frames (5 of the fake camera's 20 per second), which
      // gives 4. Bob's rate is compared with the pictures alice's encoder made in the same 4 s
      // (its busiest encoding), measured once the change settled. On a loaded machine bob's
      // bandwidth estimate may fall for a while (scheduling delays look like a queue), and his
      // receive budget then sends layer 0 alone until it recovers: each phase is measured
      // again until it shows what it should, for at most 25 s.
      const rate = async () => {
        const frames = async () => {
          const got = (await bob.stats()).find((t) => t.participant === 'alice' && t.kind === 'video').framesDecoded;
          // An SVC encoding counts a frame per spatial layer (L3T3_KEY: three a picture).
          const pictures = (e) => e.framesEncoded / Number(/^L(\d)/.exec(e.scalabilityMode ?? '')?.[1] ?? 1);
          const sent = Math.max(0, ...(await alice.localVideo()).map(pictures));
          return { got, sent, at: Date.now() };
        };
        await sleep(1500);
        const from = await frames();
        await sleep(4000);
        const to = await frames();
        const s = (to.at - from.at) / 1000;
        return { got: (to.got - from.got) / s, sent: (to.sent - from.sent) / s };
      };
      const phases = [];
      const phase = async (name, ok) => {
        const deadline = Date.now() + 25_000;
        const seen = [];
        let r;
        do {
          r = await rate();
          seen.push(`${r.got.toFixed(1)}/${r.sent.toFixed(1)}`);
        } while (!ok(r) && Date.now() < deadline);
        phases.push(`${name} ${seen.join(' ')}`);
        return ok(r);
      };
      const full = await phase('all layers', (r) => r.got > 0.6 * r.sent);
      await bob.page.evaluate(() => window.setVideoFPS('alice', 4));
      const slow = await phase('asking for 4', (r) => r.got < 0.45 * r.sent);
      await bob.page.evaluate(() => window.setVideoFPS('alice', 0));
      const again = await phase('without a wish', (r) => r.got > 0.6 * r.sent);
      const sent = await alice.localVideo();
      console.log(`${codec} frames decoded/encoded per second: ${phases.join('; ')}`);
      assert.ok(full && slow && again,
        `fewer frames only while asked: ${phases.join('; ')}; alice sends ${JSON.stringify(sent)}`);
      console.log(`${codec} frame widths: small ${small.frameWidth}, large ${large.frameWidth}, small again ${back.frameWidth}; ` +
        `decoder ${back.decoder}, key frames decoded ${back.keyFramesDecoded}, dropped ${back.framesDropped}; ` +
        `alice sends ${sent.map((e) => `${e.rid ?? '-'} ${e.scalabilityMode ?? '-'} ${e.frameWidth} (${e.encoder}, ${e.qualityLimitationReason})`).join(', ')}`);
    });
  }
});

describe('meeting page', () => {
  scenario('two tabs meet through the page on /', async (s) => {
    const room = `page-${uniq()}`;
    const tabs = [];
    for (const name of ['Ana', 'Bruno']) {
      const context = await browser.newContext({ permissions: ['camera', 'microphone'] });
      const page = await context.newPage();
      const p = new Participant(name, context, page);
      s.participants.push(p);
      page.on('console', (m) => p.log(`console.${m.type()}: ${m.text()}`));
      page.on('pageerror', (e) => p.log(`pageerror: ${e.stack || e}`));
      await page.goto(`http://127.0.0.1:${httpPort}/`);
      await page.fill('input[name=room]', room);
      await page.fill('input[name=name]', name);
      await page.click('form#join button[type=submit]');
      tabs.push(page);
    }
    for (const [i, page] of tabs.entries()) {
      const other = i === 0 ? 'Bruno' : 'Ana';
      await waitFor(`${i === 0 ? 'Ana' : 'Bruno'} shows ${other}'s video playing`, async () =>
        page.evaluate((other) => {
          const tiles = [...document.querySelectorAll('#grid .tile:not(.local)')];
          const tile = tiles.find((t) => t.querySelector('.name')?.textContent.includes(other));
          const video = tile?.querySelector('video');
          return !!video && video.readyState >= 2 && video.videoWidth > 0 && !video.paused;
        }, other),
      );
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Recording through the Egress API, as LiveKit's server SDKs call it (Twirp, JSON).

function recorderToken() {
  const now = Math.floor(Date.now() / 1000);
  const claims = { iss: API_KEY, nbf: now - 10, exp: now + 600, video: { roomRecord: true } };
  const body = `${b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${b64url(JSON.stringify(claims))}`;
  return `${body}.${b64url(crypto.createHmac('sha256', API_SECRET).update(body).digest())}`;
}

async function egress(method, body) {
  const res = await fetch(`http://127.0.0.1:${httpPort}/twirp/livekit.Egress/${method}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${recorderToken()}` },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

// ffprobe's view of a file: streams and duration.
function probe(file) {
  const out = execFileSync('ffprobe', ['-v', 'error', '-show_entries',
    'stream=codec_type,codec_name,width,height,r_frame_rate:format=duration', '-of', 'json', file]);
  return JSON.parse(out.toString());
}

// The mean RGB of a square of the frame at `seconds` (decoded by ffmpeg).
function rgbAt(file, seconds, width, height, cx, cy, half = 20) {
  const raw = execFileSync('ffmpeg', ['-v', 'error', '-ss', String(seconds), '-i', file, '-frames:v', '1',
    '-f', 'rawvideo', '-pix_fmt', 'rgb24', '-'], { maxBuffer: 64 * 1024 * 1024 });
  assert.equal(raw.length, width * height * 3, 'one RGB frame');
  const sum = [0, 0, 0];
  let n = 0;
  for (let y = cy - half; y < cy + half; y++) {
    for (let x = cx - half; x < cx + half; x++) {
      const i = (y * width + x) * 3;
      sum[0] += raw[i]; sum[1] += raw[i + 1]; sum[2] += raw[i + 2];
      n++;
    }
  }
  return sum.map((v) => Math.round(v / n));
}

// RMS level (dBFS) of the recording's audio between two times, band-passed around `hz`.
function toneLevel(file, from, to, hz) {
  const res = spawnSync('ffmpeg', ['-v', 'info', '-ss', String(from), '-to', String(to), '-i', file, '-vn',
    '-af', `bandpass=f=${hz}:width_type=h:w=60,astats=measure_perchannel=none:measure_overall=RMS_level`,
    '-f', 'null', '-']);
  const m = [...res.stderr.toString().matchAll(/RMS level dB: (-?[\d.]+|-inf)/g)].pop();
  return m && m[1] !== '-inf' ? Number(m[1]) : -200;
}

describe('recording', () => {
  scenario('a room composite records each camera in its tile and the mixed audio', async (s) => {
    const room = `rec-${uniq()}`;
    // Red with a 440 Hz tone joins first (left tile of the grid), blue with 1000 Hz second.
    // Red publishes VP8 simulcast, blue VP9 SVC (one stream carrying its spatial layers, which
    // the recorder gets as superframes).
    const red = await s.join('red', room, { publish: false });
    await red.page.evaluate(() => window.publishPattern({ colour: '#e02020', toneHz: 440 }));
    const blue = await s.join('blue', room, { publish: false, videoCodec: 'vp9' });
    await blue.page.evaluate(() => window.publishPattern({ colour: '#2040e0', toneHz: 1000 }));
    await waitFor('each sees the other\'s video', async () => {
      const [a, b] = [await red.state(), await blue.state()];
      return [a, b].every((st) => st.remotes.some((r) => r.tracks.some((t) => t.kind === 'video' && t.subscribed)));
    });

    // Bad requests get Twirp errors and leave the meeting as it was.
    const file = (name) => ({ file_outputs: [{ filepath: name }] });
    const bad = [
      [{ room_name: `nobody-${uniq()}`, layout: 'grid', ...file('x.mp4') }, 404, 'not_found'],
      [{ room_name: room, layout: 'mosaic', ...file('x.mp4') }, 400, 'invalid_argument'],
      [{ room_name: room, layout: 'grid', ...file('../outside.mp4') }, 400, 'invalid_argument'],
      [{ room_name: room, layout: 'grid', ...file('x.mp4'), advanced: { video_codec: 'VP8' } }, 400, 'invalid_argument'],
      [{ room_name: room, layout: 'grid', file_outputs: [{ filepath: 'a.mp4' }, { filepath: 'b.mp4' }] }, 400, 'invalid_argument'],
      [{ room_name: room, layout: 'grid', stream_outputs: [{ urls: ['http://not-rtmp/x'] }] }, 400, 'invalid_argument'],
    ];
    for (const [body, status, code] of bad) {
      const r = await egress('StartRoomCompositeEgress', body);
      assert.equal(r.status, status, JSON.stringify([body, r.body]));
      assert.equal(r.body.code, code);
    }
    assert.equal((await red.state()).isRecording, false);

    // The recording starts and stops somewhere within its requests: on a loaded machine an
    // answer can take half a second, so the span is bracketed by when each request left and
    // when its answer came.
    const startSent = Date.now();
    const started = await egress('StartRoomCompositeEgress', {
      room_name: room,
      layout: 'grid',
      file_outputs: [{ filepath: `{room_name}/composite.mp4` }],
      advanced: { width: 640, height: 360, framerate: 15 },
    });
    assert.equal(started.status, 200, JSON.stringify(started.body));
    const t0 = Date.now();
    const id = started.body.egress_id;
    assert.match(id, /^EG_/);
    assert.equal(started.body.status, 'EGRESS_ACTIVE');
    // Everyone in the room is shown that the meeting is being recorded.
    await waitFor('the clients show the recording', async () =>
      (await red.state()).isRecording && (await blue.state()).isRecording);
    const listed = await egress('ListEgress', { room_name: room, active: true });
    assert.deepEqual(listed.body.items.map((i) => i.egress_id), [id]);
    // Someone who only watches joins during the recording: a tile with their name.
    await s.join('viewer', room, { publish: false });

    await sleep(10_000);
    const stopSent = Date.now();
    const stopping = await egress('StopEgress', { egress_id: id });
    const [shortest, longest] = [(stopSent - t0) / 1000, (Date.now() - startSent) / 1000];
    assert.equal(stopping.status, 200, JSON.stringify(stopping.body));
    const done = await waitFor('the egress completes', async () => {
      const r = await egress('ListEgress', { egress_id: id });
      const info = r.body.items?.[0];
      return info && ['EGRESS_COMPLETE', 'EGRESS_FAILED'].includes(info.status) ? info : null;
    });
    assert.equal(done.status, 'EGRESS_COMPLETE', JSON.stringify(done));
    await waitFor('the clients no longer show the recording', async () => !(await red.state()).isRecording);
    const path_ = done.file_results[0].filename;
    assert.ok(path_.startsWith(DATA_DIR), path_);

    const info = probe(path_);
    const v = info.streams.find((x) => x.codec_type === 'video');
    const a = info.streams.find((x) => x.codec_type === 'audio');
    assert.equal(v.codec_name, 'h264');
    assert.equal(a.codec_name, 'aac');
    assert.equal(`${v.width}x${v.height}`, '640x360');
    assert.equal(v.r_frame_rate, '15/1');
    const duration = Number(info.format.duration);
    assert.ok(duration > shortest - 0.5 && duration < longest + 0.5,
      `duration ${duration} s for ${shortest} to ${longest} s recorded`);

    // Three tiles in join order: red top left, blue top right, the viewer's placeholder (dark
    // grey, with the name) centred below.
    const left = rgbAt(path_, duration - 3, 640, 360, 160, 80);
    const right = rgbAt(path_, duration - 3, 640, 360, 480, 80);
    const viewer = rgbAt(path_, duration - 3, 640, 360, 200, 220, 10);
    const near = (c, want) => c.every((x, i) => Math.abs(x - want[i]) < 40);
    assert.ok(near(left, [0xe0, 0x20, 0x20]), `left tile ${left}`);
    assert.ok(near(right, [0x20, 0x40, 0xe0]), `right tile ${right}`);
    assert.ok(near(viewer, [0x30, 0x30, 0x30]), `the viewer's tile ${viewer}`);
    // Both tones are in the mix.
    const at440 = toneLevel(path_, duration - 5, duration - 1, 440);
    const at1000 = toneLevel(path_, duration - 5, duration - 1, 1000);
    const at3000 = toneLevel(path_, duration - 5, duration - 1, 3000);
    assert.ok(at440 > -35 && at1000 > -35, `440 Hz ${at440} dB, 1000 Hz ${at1000} dB`);
    assert.ok(at3000 < at440 - 20, `3000 Hz ${at3000} dB against 440 Hz ${at440} dB`);

    console.log(`# recording: ${duration.toFixed(2)} s for ${shortest.toFixed(2)} to ${longest.toFixed(2)} s; tiles ${left} / ${right} / ${viewer}; `
      + `440 Hz ${at440.toFixed(1)} dB, 1000 Hz ${at1000.toFixed(1)} dB, 3000 Hz ${at3000.toFixed(1)} dB`);
    if (process.env.PARLOIR_E2E_KEEP) fs.copyFileSync(path_, process.env.PARLOIR_E2E_KEEP);
    // The meeting went on throughout.
    for (const p of [red, blue]) assert.equal((await p.state()).connectionState, 'connected');
  });
});

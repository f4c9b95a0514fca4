// Browser tests of the meeting page the server serves on / (web/): people join through its form
// and the tests click what a person would click, finding things by data-testid.
//
//   PARLOIR_BIN=target/release/parloir node --test tests/e2e/meeting.test.mjs
//
// One Chromium (fake camera, microphone and screen), one browser context per person; one room
// per describe block, joined once. The host scenario needs /api/dev-token?admin=1 to give a
// roomAdmin token; with a server that does not, it is skipped (PARLOIR_E2E_MINT_ADMIN=1 makes
// the test answer that request itself with a token minted here, to try the page meanwhile).
// On failure each page's DOM summary and console, then the server log, are printed.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

import { ParloirServer } from './server.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const WAIT_MS = 30_000; // generous: this runs on a 2-core machine
const POLL_MS = 200;
const TEST_TIMEOUT_MS = 120_000;
const VERBOSE = !!process.env.E2E_VERBOSE;
const MINT_ADMIN = process.env.PARLOIR_E2E_MINT_ADMIN === '1';

const PARLOIR_BIN = process.env.PARLOIR_BIN ? path.resolve(process.env.PARLOIR_BIN) : '';
if (!PARLOIR_BIN) throw new Error('PARLOIR_BIN is not set: PARLOIR_BIN=target/release/parloir node --test tests/e2e/');
if (!fs.existsSync(PARLOIR_BIN)) throw new Error(`PARLOIR_BIN=${PARLOIR_BIN} does not exist`);
if (!fs.existsSync(CHROMIUM)) throw new Error(`Chromium not found at ${CHROMIUM} (set CHROMIUM_BIN)`);

// ---------------------------------------------------------------------------------------------
// The server.

const server = new ParloirServer({
  bin: PARLOIR_BIN,
  name: 'meeting',
  webDir: path.join(HERE, '..', '..', 'web'),
  verbose: VERBOSE,
});

// ---------------------------------------------------------------------------------------------
// Tokens: the claims of one the server hands out, and (PARLOIR_E2E_MINT_ADMIN=1) our own.

function claims(jwt) {
  return JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString());
}

function mintAdminToken(room, identity, name) {
  const now = Math.floor(Date.now() / 1000);
  const body = {
    iss: 'devkey', sub: identity, name, nbf: now - 10, exp: now + 3600,
    video: {
      roomJoin: true, room, canPublish: true, canSubscribe: true, canPublishData: true,
      canUpdateOwnMetadata: true, roomAdmin: true, roomList: true, roomCreate: true,
    },
  };
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const unsigned = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(body)}`;
  return `${unsigned}.${crypto.createHmac('sha256', 'secret').update(unsigned).digest('base64url')}`;
}

// 'server' when /api/dev-token?admin=1 gives roomAdmin, 'minted' when we stand in for it, else null.
let adminSource = null;

async function probeAdmin() {
  const q = new URLSearchParams({ room: 'probe', identity: 'probe', name: 'probe', admin: '1' });
  const { token } = await (await fetch(`${server.base}/api/dev-token?${q}`)).json();
  if (claims(token).video?.roomAdmin) return 'server';
  return MINT_ADMIN ? 'minted' : null;
}

// ---------------------------------------------------------------------------------------------
// Browser and people.

let browser = null;

async function launchBrowser() {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox', '--headless', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
      '--autoplay-policy=no-user-gesture-required',
      '--auto-select-desktop-capture-source=Entire screen',
    ],
  });
}

class Person {
  constructor(name, context, page) {
    this.name = name;
    this.context = context;
    this.page = page;
    this.identity = null;
    this.logs = [];
  }

  log(line) {
    this.logs.push(line);
    if (this.logs.length > 1000) this.logs.shift();
    if (VERBOSE) console.log(`[${this.name}] ${line}`);
  }

  $(testid, extra = '') {
    return this.page.locator(`[data-testid="${testid}"]${extra}`);
  }

  row(who) {
    return this.$('participant', `[data-identity="${who.identity}"]`);
  }

  tile(who, source = 'camera') {
    return this.$('tile', `[data-identity="${who.identity}"][data-source="${source}"]`);
  }

  // A summary of what the page shows, for failure diagnostics.
  summary() {
    return this.page.evaluate(() => {
      const q = (sel, root = document) => [...root.querySelectorAll(sel)];
      const attr = (el, sel, a) => el.querySelector(sel)?.getAttribute(a) ?? null;
      return {
        meetingVisible: !document.querySelector('[data-testid=meeting]').hidden,
        notice: document.querySelector('[data-testid=disconnected-message]').textContent,
        joinError: document.querySelector('[data-testid=join-error]').textContent,
        meetingError: document.querySelector('[data-testid=meeting-error]').textContent.trim(),
        tiles: q('[data-testid=tile]').map((el) => {
          const v = el.querySelector('video');
          return `${el.dataset.identity}/${el.dataset.source} video=${v.hidden ? 'hidden' : `${v.videoWidth}x${v.videoHeight} rs=${v.readyState}`} mic=${attr(el, '[data-testid=tile-mic]', 'data-state')} reactions=${el.querySelector('[data-testid=tile-reactions]').textContent}`;
        }),
        participants: q('[data-testid=participant]').map((el) =>
          `${el.dataset.identity} hand=${el.dataset.hand} mic=${attr(el, '[data-testid=mic-state]', 'data-state')} cam=${attr(el, '[data-testid=camera-state]', 'data-state')}`),
        chat: q('[data-testid=chat-message]').map((el) => `${el.dataset.from}: ${el.textContent}`),
        micButton: document.querySelector('[data-testid=toggle-mic]').dataset.state,
        handButton: document.querySelector('[data-testid=toggle-hand]').dataset.state,
      };
    });
  }
}

class Meeting {
  constructor(name) {
    this.name = name;
    this.people = [];
  }

  // Opens the page, fills the join form and waits for the meeting view; learns the identity.
  async join(name, room, { host = false, locale = 'en-US' } = {}) {
    const context = await browser.newContext({ permissions: ['camera', 'microphone'], locale });
    const page = await context.newPage();
    const p = new Person(name, context, page);
    this.people.push(p);
    page.on('console', (m) => p.log(`console.${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => p.log(`pageerror: ${e.stack || e}`));
    if (host && adminSource === 'minted') {
      await page.route('**/api/dev-token?*', (route) => {
        const q = new URL(route.request().url()).searchParams;
        if (q.get('admin') !== '1') return route.continue();
        const token = mintAdminToken(q.get('room'), q.get('identity'), q.get('name'));
        return route.fulfill({ json: { token, url: server.wsUrl } });
      });
    }
    await page.goto(`${server.base}/`);
    await p.$('join-room').fill(room);
    await p.$('join-name').fill(name);
    if (host) await p.$('join-host').check();
    await p.$('join-submit').click();
    await p.$('meeting').waitFor({ state: 'visible', timeout: WAIT_MS });
    const local = p.page.locator('[data-testid=tile].local.camera');
    await waitFor(`${name} publishes camera and microphone`, async () =>
      (await local.locator('video').evaluate((v) => v.readyState >= 2 && v.videoWidth > 0))
      && (await p.$('toggle-mic').getAttribute('data-state')) === 'on');
    p.identity = await local.getAttribute('data-identity');
    p.log(`# joined ${room} as ${p.identity}`);
    return p;
  }

  async dump() {
    console.log(`\n######## diagnostics for "${this.name}" ########`);
    for (const p of this.people) {
      let s;
      try {
        s = await p.summary();
      } catch (e) {
        s = `summary failed: ${e.message}`;
      }
      console.log(`----- ${p.name} (${p.identity}) -----\n${JSON.stringify(s, null, 1)}`);
      console.log(p.logs.slice(-80).map((l) => `[${p.name}] ${l}`).join('\n'));
    }
    server.dumpLog();
  }

  async close() {
    for (const p of this.people) await p.context.close().catch(() => {});
    this.people = [];
  }
}

// Polls `fn` until it returns a truthy value; the last value or error goes into the timeout message.
async function waitFor(what, fn, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      last = v;
    } catch (e) {
      last = `error: ${e.message.split('\n')[0]}`;
    }
    if (server.exit) throw new Error(`server exited (${JSON.stringify(server.exit)}) while waiting for ${what}`);
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
    await sleep(POLL_MS);
  }
}

const attr = (locator, name) => locator.getAttribute(name, { timeout: 2000 });
const count = (locator) => locator.count();

// A test that prints the meeting's diagnostics when it fails.
function step(meeting, name, fn) {
  test(name, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    try {
      await fn(t);
    } catch (e) {
      await meeting.dump().catch((d) => console.log(`dump failed: ${d}`));
      throw e;
    }
  });
}

function uniq() {
  return crypto.randomBytes(3).toString('hex');
}

// The server's data directory (the host's recordings go to its recordings/).
const DATA_DIR = fs.mkdtempSync(path.join(os.tmpdir(), 'parloir-meeting-'));

before(async () => {
  await server.start({ tcp: false, extraArgs: ['--data-dir', DATA_DIR] });
  adminSource = await probeAdmin();
  await launchBrowser();
});

after(async () => {
  fs.rmSync(DATA_DIR, { recursive: true, force: true });
  await browser?.close().catch(() => {});
  await server.stop();
});

// ---------------------------------------------------------------------------------------------
// Ana (English) and Bruno (French) in one room.

describe('meeting page: screen share, mute, hands, reactions, chat', () => {
  const m = new Meeting('meeting page');
  let ana;
  let bruno;

  before(async () => {
    const room = `meet-${uniq()}`;
    try {
      ana = await m.join('Ana', room);
      bruno = await m.join('Bruno Lefèvre', room, { locale: 'fr-FR' });
      await bruno.$('toggle-participants').click();
      await waitFor('each sees the other in the list with a playing camera tile', async () => {
        for (const [p, other] of [[ana, bruno], [bruno, ana]]) {
          if (!(await p.tile(other).locator('video').evaluate((v) => v.readyState >= 2 && v.videoWidth > 0))) return false;
        }
        return (await count(bruno.row(ana))) === 1;
      });
    } catch (e) {
      await m.dump();
      throw e;
    }
  });
  after(() => m.close());

  step(m, 'the page speaks the browser\'s language', async () => {
    assert.equal(await bruno.page.evaluate(() => document.documentElement.lang), 'fr');
    assert.equal(await ana.page.evaluate(() => document.documentElement.lang), 'en');
    assert.equal((await bruno.$('leave').textContent()).trim(), 'Quitter');
    assert.equal((await ana.$('leave').textContent()).trim(), 'Leave');
  });

  step(m, 'a screen share from Ana appears on Bruno\'s page as a larger tile, first', async () => {
    await ana.$('toggle-screen').click();
    await waitFor('Ana shares her screen', async () => (await attr(ana.$('toggle-screen'), 'data-state')) === 'on');
    const screen = bruno.tile(ana, 'screen_share');
    await waitFor('Bruno shows Ana\'s screen playing', async () =>
      screen.locator('video').evaluate((v) => v.readyState >= 2 && v.videoWidth > 0 && !v.paused));
    const box = await screen.boundingBox();
    for (const other of [bruno.tile(ana), bruno.tile(bruno)]) {
      const b = await other.boundingBox();
      assert.ok(box.width > b.width && box.height > b.height, `screen tile ${JSON.stringify(box)} not larger than ${JSON.stringify(b)}`);
      assert.ok(box.y < b.y, `screen tile ${JSON.stringify(box)} is not above camera tile ${JSON.stringify(b)}`);
    }
    await ana.$('toggle-screen').click();
    await waitFor('Ana stops sharing: her own screen tile goes', async () =>
      (await attr(ana.$('toggle-screen'), 'data-state')) === 'off' && (await count(ana.tile(ana, 'screen_share'))) === 0);
  });

  // livekit-client unpublishes by removing the sender and offering again; the server sees the
  // m-line stop sending and unpublishes the track for everyone.
  step(m, 'a stopped screen share leaves the others\' pages', async () => {
    await waitFor('Ana\'s screen tile disappears from Bruno\'s page', async () =>
      (await count(bruno.tile(ana, 'screen_share'))) === 0, 10_000);
  });

  step(m, 'Ana\'s mute shows as muted on Bruno\'s page', async () => {
    const micOfAna = bruno.row(ana).locator('[data-testid=mic-state]');
    assert.equal(await attr(micOfAna, 'data-state'), 'on');
    await ana.$('toggle-mic').click();
    await waitFor('Bruno lists Ana as muted', async () => (await attr(micOfAna, 'data-state')) === 'muted');
    assert.equal(await attr(bruno.tile(ana).locator('[data-testid=tile-mic]'), 'data-state'), 'muted');
    await ana.$('toggle-mic').click();
    await waitFor('Bruno lists Ana as unmuted', async () => (await attr(micOfAna, 'data-state')) === 'on');
  });

  step(m, 'raised hands show on the other page, first in the list in the order raised', async () => {
    const order = async () => bruno.$('participant').evaluateAll((els) => els.map((el) => el.dataset.identity));
    // Not raised: Bruno is first in his own list.
    assert.deepEqual(await order(), [bruno.identity, ana.identity]);
    await ana.$('toggle-hand').click();
    await waitFor('Bruno sees Ana\'s hand, Ana first', async () =>
      (await bruno.tile(ana).locator('[data-testid=tile-hand]').isVisible())
      && (await bruno.row(ana).locator('[data-testid=participant-hand]').isVisible())
      && JSON.stringify(await order()) === JSON.stringify([ana.identity, bruno.identity]));
    await bruno.$('toggle-hand').click();
    await waitFor('Bruno\'s list: both hands, Ana\'s (earlier) first', async () =>
      (await attr(bruno.row(bruno), 'data-hand')) !== ''
      && JSON.stringify(await order()) === JSON.stringify([ana.identity, bruno.identity]));
    // Ana lowers and raises again: now she is after Bruno.
    await ana.$('toggle-hand').click();
    await waitFor('Ana\'s hand down on Bruno\'s page', async () => (await attr(bruno.row(ana), 'data-hand')) === '');
    await ana.$('toggle-hand').click();
    await waitFor('Bruno\'s list: Bruno\'s hand first, then Ana\'s', async () =>
      (await attr(bruno.row(ana), 'data-hand')) !== ''
      && JSON.stringify(await order()) === JSON.stringify([bruno.identity, ana.identity]));
    for (const p of [ana, bruno]) await p.$('toggle-hand').click();
    await waitFor('both hands down on Ana\'s page', async () =>
      (await attr(ana.row(ana), 'data-hand')) === '' && (await attr(ana.row(bruno), 'data-hand')) === '');
  });

  step(m, 'a reaction from Ana floats over her tile on both pages for about 3 s', async () => {
    await ana.$('reaction-button', '[data-emoji="🎉"]').click();
    const onBruno = bruno.tile(ana).locator('[data-testid=reaction]');
    const onAna = ana.tile(ana).locator('[data-testid=reaction]');
    const t0 = Date.now();
    await waitFor('Bruno and Ana show Ana\'s 🎉 over her tile', async () =>
      (await onBruno.allTextContents()).includes('🎉') && (await onAna.allTextContents()).includes('🎉'), 10_000);
    await waitFor('the reaction goes away', async () => (await count(onBruno)) === 0 && (await count(onAna)) === 0, 8_000);
    assert.ok(Date.now() - t0 >= 1500, 'the reaction vanished too soon');
    assert.equal(await count(bruno.tile(bruno).locator('[data-testid=reaction]')), 0, 'the reaction landed on the wrong tile');
  });

  step(m, 'chat from Ana reaches Bruno with Ana\'s name', async () => {
    const text = `Bonjour ${uniq()} ✓ <b>not bold</b>`;
    await ana.$('toggle-chat').click();
    await ana.$('chat-input').fill(text);
    await ana.$('chat-input').press('Enter');
    const msg = bruno.$('chat-message', `[data-from="${ana.identity}"]`);
    await waitFor('Bruno receives Ana\'s message', async () => (await count(msg)) === 1);
    assert.equal(await msg.locator('[data-testid=chat-text]').textContent(), text);
    assert.equal(await msg.locator('[data-testid=chat-from]').textContent(), 'Ana');
    assert.equal(await msg.locator('b').count(), 0, 'chat text was interpreted as HTML');
    // Bruno's chat panel is closed: an unread badge, cleared when he opens it.
    assert.equal((await bruno.page.locator('#unread').textContent()).trim(), '1');
    await bruno.$('toggle-chat').click();
    assert.ok(await msg.isVisible());
    assert.ok(await bruno.page.locator('#unread').isHidden());
    // Ana sees her own message once.
    assert.equal(await count(ana.$('chat-message', `[data-from="${ana.identity}"]`)), 1);
  });
});

// ---------------------------------------------------------------------------------------------
// A host with Ana and Bruno.

describe('meeting page: host controls', () => {
  const m = new Meeting('host controls');

  after(() => m.close());

  step(m, 'the host mutes one, mutes everyone, lowers all hands, turns subtitles off and on and removes one', async (t) => {
    if (!adminSource) {
      t.skip('/api/dev-token?admin=1 does not give a roomAdmin token on this server yet (set PARLOIR_E2E_MINT_ADMIN=1 to test the page with tokens minted by the test)');
      return;
    }
    t.diagnostic(`admin tokens from: ${adminSource}`);
    const room = `host-${uniq()}`;
    const host = await m.join('Hélène', room, { host: true, locale: 'fr-FR' });
    const ana = await m.join('Ana', room);
    const bruno = await m.join('Bruno', room);
    assert.ok(await host.$('host-tools').isHidden(), 'host tools shown before opening the list');
    await host.$('toggle-participants').click();
    assert.ok(await host.$('host-tools').isVisible(), 'the host has no host tools');
    await ana.$('toggle-participants').click();
    assert.ok(await ana.$('host-tools').isHidden(), 'a participant has host tools');
    assert.equal(await count(ana.$('host-mute')), 0, 'a participant has mute buttons');
    const mic = (p, who) => attr(p.row(who).locator('[data-testid=mic-state]'), 'data-state');
    await waitFor('the host sees Ana and Bruno with microphones on', async () =>
      (await mic(host, ana)) === 'on' && (await mic(host, bruno)) === 'on');

    // Mute Bruno.
    await host.row(bruno).locator('[data-testid=host-mute]').click();
    await waitFor('Bruno\'s page shows his microphone muted', async () =>
      (await attr(bruno.$('toggle-mic'), 'data-state')) === 'muted');
    await waitFor('the host and Ana see Bruno muted', async () =>
      (await mic(host, bruno)) === 'muted' && (await mic(ana, bruno)) === 'muted');
    assert.equal(await mic(host, ana), 'on');

    // Bruno unmutes himself; the host mutes everyone but herself.
    await bruno.$('toggle-mic').click();
    await waitFor('the host sees Bruno unmuted', async () => (await mic(host, bruno)) === 'on');
    await host.$('host-mute-all').click();
    await waitFor('Ana\'s and Bruno\'s pages show their microphones muted', async () =>
      (await attr(ana.$('toggle-mic'), 'data-state')) === 'muted'
      && (await attr(bruno.$('toggle-mic'), 'data-state')) === 'muted');
    assert.equal(await attr(host.$('toggle-mic'), 'data-state'), 'on', 'the host muted herself');
    assert.equal(await mic(host, host), 'on');

    // Hands: Ana and the host raise theirs; "lower all hands" clears them on every page.
    await ana.$('toggle-hand').click();
    await host.$('toggle-hand').click();
    await waitFor('every page shows Ana\'s and the host\'s hands', async () => {
      for (const p of [host, ana, bruno]) {
        if ((await attr(p.row(ana), 'data-hand')) === '' || (await attr(p.row(host), 'data-hand')) === '') return false;
      }
      return true;
    });
    await host.$('host-lower-all').click();
    await waitFor('every page shows no raised hand', async () => {
      for (const p of [host, ana, bruno]) {
        if ((await attr(p.row(ana), 'data-hand')) !== '' || (await attr(p.row(host), 'data-hand')) !== '') return false;
      }
      return (await attr(ana.$('toggle-hand'), 'data-state')) === 'down';
    });

    // Subtitles off, then on, for the whole meeting: the room metadata the server reads.
    const roomMetadata = async () => {
      const res = await fetch(`${server.base}/twirp/livekit.RoomService/ListRooms`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${mintAdminToken(room, 'probe', 'probe')}` },
        body: JSON.stringify({ names: [room] }),
      });
      const { rooms } = await res.json();
      return JSON.parse(rooms?.[0]?.metadata || '{}');
    };
    await host.$('host-subtitles-off').click();
    await waitFor('the room metadata says no subtitles', async () =>
      (await roomMetadata())['parloir.subtitles'] === false);
    await host.$('host-subtitles-on').click();
    await waitFor('the room metadata says subtitles', async () =>
      (await roomMetadata())['parloir.subtitles'] === true);

    // The host records the meeting: everyone's page says so, until the host stops.
    assert.ok(await ana.$('recording-indicator').isHidden(), 'a recording shown before any');
    await host.$('host-record-start').click();
    await waitFor('every page shows that the meeting is recorded', async () => {
      for (const p of [host, ana, bruno]) if (!(await p.$('recording-indicator').isVisible())) return false;
      return host.$('host-record-stop').isVisible();
    });
    await sleep(2000);
    await host.$('host-record-stop').click();
    await waitFor('no page shows a recording any more', async () => {
      for (const p of [host, ana, bruno]) if (await p.$('recording-indicator').isVisible()) return false;
      return host.$('host-record-start').isVisible();
    });
    const recordings = path.join(DATA_DIR, 'recordings');
    const files = fs.readdirSync(recordings).filter((f) => f.startsWith(room) && f.endsWith('.mp4'));
    assert.equal(files.length, 1, `recordings: ${fs.readdirSync(recordings)}`);
    assert.ok(fs.statSync(path.join(recordings, files[0])).size > 1000, 'the recording has media');

    // A Twirp error is shown on the page.
    await host.page.route('**/twirp/livekit.RoomService/RemoveParticipant', (route) =>
      route.fulfill({ status: 403, json: { code: 'permission_denied', msg: 'refused by the test' } }));
    const remove = host.row(bruno).locator('[data-testid=host-remove]');
    await remove.click(); // asks for confirmation
    await remove.click();
    await waitFor('the host\'s page shows the Twirp error', async () =>
      (await host.$('meeting-error').isVisible()) && (await host.$('meeting-error').textContent()).includes('refused by the test'));
    await host.page.unroute('**/twirp/livekit.RoomService/RemoveParticipant');

    // Remove Bruno for real.
    await remove.click();
    await remove.click();
    await waitFor('Bruno\'s page says the host removed him', async () =>
      (await bruno.$('disconnected-message').isVisible())
      && (await attr(bruno.$('disconnected-message'), 'data-reason')) === 'removed');
    assert.ok(await bruno.$('join-form').isVisible(), 'Bruno\'s page does not offer to join again');
    await waitFor('Bruno is gone from the host\'s and Ana\'s pages', async () =>
      (await count(host.row(bruno))) === 0 && (await count(ana.tile(bruno))) === 0);
  });
});

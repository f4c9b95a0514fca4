// Live subtitles in the browser: two people in Chromium speak in turn through the SFU, their
// fake microphones fed from WAV files (--use-file-for-fake-audio-capture) of espeak-ng speech;
// a third person, who switched subtitles on, sees each utterance with the speaker's name, and
// the room's transcript holds the segments with the right names in the right order.
//
//   PARLOIR_BIN=target/release/parloir node --test tests/e2e/subtitles.test.mjs
//
// The speech plane does not depend on the UDP backend, so `make e2e` (the suite once per
// backend) runs this file once, with the mmsg backend or when PARLOIR_IO is not set.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

import { ParloirServer } from './server.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const PARLOIR_BIN = process.env.PARLOIR_BIN ? path.resolve(process.env.PARLOIR_BIN) : '';
const RUN = !process.env.PARLOIR_IO || process.env.PARLOIR_IO === 'mmsg';
const WAIT_MS = 60_000;

const ENGLISH = 'Good morning everyone, the meeting starts now. We will review the budget for next year. '
  + 'Paul will send the report on Friday.';
const REPLY = 'Thank you Alice. I have read the report and I agree with the new budget. '
  + 'Let us meet again next Monday.';
// Word error bound. The browser's audio processing (echo cancellation, noise suppression, gain
// control) sits between the WAV and the encoder here, on top of espeak-ng's synthetic voice:
// English came through with 0 to 1 wrong words; espeak-ng's French came out at WER 0.5 after it
// (through the LiveKit SDK, without that processing, it is 0 to 0.1: tests/sdk/test_speech.py
// checks French), so both people speak English here, in two voices.
const MAX_WER = 0.2;
// Each fake microphone loops its file: Alice speaks from 1 s, Bob from 12 s, of 26 s.
const CYCLE_S = 26;

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'parloir-subtitles-'));
const transcripts = path.join(tmp, 'transcripts');
const server = new ParloirServer({ bin: PARLOIR_BIN, name: 'subtitles', webDir: path.join(HERE, '..', '..', 'web') });
const browsers = [];
// Every page opened, by name, so that a failure shows each one's console, even mid-join.
const opened = {};

// A 48 kHz mono WAV of `text` spoken by espeak-ng `voice`, starting at `at` seconds of CYCLE_S.
function speechWav(name, voice, text, at) {
  const raw = path.join(tmp, `${name}-raw.wav`);
  const out = path.join(tmp, `${name}.wav`);
  execFileSync('espeak-ng', ['-v', voice, '-w', raw, text]);
  execFileSync('ffmpeg', ['-nostdin', '-v', 'error', '-y', '-i', raw, '-af',
    `adelay=${at * 1000}:all=1,apad=whole_dur=${CYCLE_S}`, '-ar', '48000', '-ac', '1', out]);
  return out;
}

function silenceWav() {
  const out = path.join(tmp, 'silence.wav');
  execFileSync('ffmpeg', ['-nostdin', '-v', 'error', '-y', '-f', 'lavfi', '-i', 'anullsrc=r=48000:cl=mono',
    '-t', String(CYCLE_S), out]);
  return out;
}

async function launch(wav) {
  const b = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox', '--headless', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
      `--use-file-for-fake-audio-capture=${wav}`, '--autoplay-policy=no-user-gesture-required',
    ],
  });
  browsers.push(b);
  return b;
}

async function join(browser, room, name) {
  const context = await browser.newContext({ permissions: ['camera', 'microphone'], locale: 'en-US' });
  const page = await context.newPage();
  opened[name] = page;
  page.logs = [];
  page.on('console', (m) => page.logs.push(`console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => page.logs.push(`pageerror: ${e.stack || e}`));
  // Keep the page's peer connections, to read their audio statistics.
  await page.addInitScript(() => {
    const Native = window.RTCPeerConnection;
    window.__pcs = [];
    window.RTCPeerConnection = class extends Native {
      constructor(...args) { super(...args); window.__pcs.push(this); }
    };
  });
  await page.goto(`${server.base}/`);
  await page.locator('[data-testid=join-room]').fill(room);
  await page.locator('[data-testid=join-name]').fill(name);
  await page.locator('[data-testid=join-submit]').click();
  await page.locator('[data-testid=meeting]').waitFor({ state: 'visible', timeout: 30_000 });
  await page.waitForFunction(() => document.querySelector('[data-testid=toggle-mic]')?.dataset.state === 'on',
    null, { timeout: 30_000 });
  return page;
}

// What each page's microphone captured and sent, and what it received: the energy of its
// captured audio (after the browser's processing: echo cancellation, gain control) and of each
// stream it plays, to tell a microphone that was quiet from one that was lost on the way.
async function audioStats(page) {
  return page.evaluate(async () => {
    const out = [];
    for (const pc of window.__pcs || []) {
      if (pc.connectionState === 'closed') continue;
      const stats = await pc.getStats();
      stats.forEach((s) => {
        if (s.kind !== 'audio' && s.type !== 'media-source') return;
        if (s.type === 'media-source' && s.kind === 'audio') {
          out.push(`captured energy ${s.totalAudioEnergy?.toFixed(3)} over ${s.totalSamplesDuration?.toFixed(1)} s`
            + ` level ${s.audioLevel?.toFixed(3)} ERL ${s.echoReturnLoss} ERLE ${s.echoReturnLossEnhancement}`);
        } else if (s.type === 'outbound-rtp') {
          out.push(`sent ${s.packetsSent} packets ${s.bytesSent} bytes`);
        } else if (s.type === 'inbound-rtp') {
          out.push(`received ${s.trackIdentifier}: ${s.packetsReceived} packets, lost ${s.packetsLost},`
            + ` energy ${s.totalAudioEnergy?.toFixed(3)} over ${s.totalSamplesDuration?.toFixed(1)} s,`
            + ` concealed ${s.concealedSamples}/${s.totalSamplesReceived}`);
        }
      });
    }
    return out;
  }).catch((e) => [`no stats: ${e}`]);
}

function words(text) {
  return text.toLowerCase().split(/[^\p{L}\p{N}']+/u).filter(Boolean);
}

function wer(reference, hypothesis) {
  const r = words(reference);
  const h = words(hypothesis);
  let row = Array.from({ length: h.length + 1 }, (_, j) => j);
  for (let i = 0; i < r.length; i++) {
    const next = [i + 1];
    for (let j = 0; j < h.length; j++) {
      next.push(Math.min(row[j] + (r[i] === h[j] ? 0 : 1), row[j + 1] + 1, next[j] + 1));
    }
    row = next;
  }
  return row[h.length] / Math.max(1, r.length);
}

before(async () => {
  if (!RUN) return;
  assert.ok(PARLOIR_BIN && fs.existsSync(PARLOIR_BIN), 'PARLOIR_BIN is the parloir binary');
  await server.start({
    tcp: false,
    extraArgs: ['--speech', '--speech-languages', 'en,fr', '--transcripts-dir', transcripts],
  });
});

after(async () => {
  for (const b of browsers) await b.close().catch(() => {});
  await server.stop();
  fs.rmSync(tmp, { recursive: true, force: true });
});

test('subtitles name each speaker at a third browser, and the transcript keeps their order', {
  skip: RUN ? false : `the speech plane does not depend on the UDP backend (${process.env.PARLOIR_IO})`,
  timeout: 180_000,
}, async () => {
  const room = `subtitles-${Date.now().toString(36)}`;
  const aliceWav = speechWav('alice', 'en', ENGLISH, 1);
  const bobWav = speechWav('bob', 'en-us', REPLY, 12);
  const [aliceBrowser, bobBrowser, carolBrowser] = await Promise.all([
    launch(aliceWav), launch(bobWav), launch(silenceWav()),
  ]);
  const pages = {};
  try {
    // Carol is there first, with subtitles on; Alice and Bob join together so that their
    // microphones start together and they speak in turn.
    pages.carol = await join(carolBrowser, room, 'Carol Petit');
    const cc = pages.carol.locator('[data-testid=toggle-subtitles]');
    await cc.click();
    assert.equal(await cc.getAttribute('aria-pressed'), 'true');
    [pages.alice, pages.bob] = await Promise.all([
      join(aliceBrowser, room, 'Alice Martin'), join(bobBrowser, room, 'Bernard Dupont'),
    ]);
    // Carol's page: remember every final line the first time it shows.
    const seen = new Map();
    const deadline = Date.now() + WAIT_MS;
    while (Date.now() < deadline) {
      const lines = await pages.carol.locator('[data-testid=subtitle]').evaluateAll((els) => els.map((el) => ({
        final: el.dataset.final === 'true',
        who: el.querySelector('[data-testid=subtitle-from]').textContent,
        text: el.querySelector('[data-testid=subtitle-text]').textContent,
        visible: el.offsetParent !== null,
      })));
      for (const l of lines) if (l.final && !seen.has(l.who)) seen.set(l.who, l);
      if (seen.has('Alice Martin') && seen.has('Bernard Dupont')) break;
      await sleep(200);
    }
    for (const [who, page] of Object.entries(pages)) {
      console.log(`audio at ${who}:\n  ${(await audioStats(page)).join('\n  ')}`);
    }
    const alice = seen.get('Alice Martin');
    const bob = seen.get('Bernard Dupont');
    assert.ok(alice, `Carol saw Alice's subtitle (saw ${JSON.stringify([...seen.values()])})`);
    assert.ok(bob, `Carol saw Bob's subtitle (saw ${JSON.stringify([...seen.values()])})`);
    assert.ok(alice.visible && bob.visible, 'the subtitles are on screen');
    assert.ok(wer(ENGLISH, alice.text) <= MAX_WER, `Alice: WER ${wer(ENGLISH, alice.text).toFixed(2)} "${alice.text}"`);
    assert.ok(wer(REPLY, bob.text) <= MAX_WER, `Bob: WER ${wer(REPLY, bob.text).toFixed(2)} "${bob.text}"`);
    assert.deepEqual([...seen.keys()].slice(0, 2), ['Alice Martin', 'Bernard Dupont'], 'Alice first, then Bob');
    // Whoever did not switch them on sees none.
    assert.equal(await pages.alice.locator('[data-testid=subtitles]').isVisible(), false);
    // Carol switches them off.
    await cc.click();
    assert.equal(await pages.carol.locator('[data-testid=subtitles]').isVisible(), false);

    // The transcript: the final segments with real names, Alice's before Bob's.
    // The meeting's transcript is <room sid>.jsonl.
    const lines = fs.readdirSync(transcripts).filter((f) => f.endsWith('.jsonl'))
      .map((f) => fs.readFileSync(path.join(transcripts, f), 'utf8').trim().split('\n').map((l) => JSON.parse(l)))
      .find((ls) => ls[0]?.room === room) || [];
    const firstAlice = lines.findIndex((l) => l.name === 'Alice Martin');
    const firstBob = lines.findIndex((l) => l.name === 'Bernard Dupont');
    assert.ok(firstAlice >= 0 && firstBob > firstAlice, JSON.stringify(lines));
    assert.equal(lines[firstAlice].language, 'en');
    assert.equal(lines[firstBob].language, 'en');
    assert.ok(lines[firstAlice].end_ms <= lines[firstBob].start_ms, 'in time order');
    assert.ok(lines.every((l) => l.room === room && l.identity && l.track && l.text));
  } catch (e) {
    for (const [who, page] of Object.entries(opened)) {
      console.log(`----- ${who} -----\n${page.logs.slice(-40).join('\n')}`);
    }
    server.dumpLog(120);
    // What the SFU and the speech plane counted: enough to tell a microphone that never
    // reached the speech plane from one it could not hear.
    const metrics = await fetch(`${server.base}/metrics`).then((r) => r.text()).catch((m) => `${m}`);
    console.log(metrics.split('\n').filter((l) => /^parloir_(speech|audio|frames|tracks|participants)/.test(l)).join('\n'));
    throw e;
  }
});

// The Parloir server process for the browser tests: free ports, start, wait for /healthz, keep
// its log, stop. Shared by run.test.mjs and meeting.test.mjs.
import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export function freePort(kind) {
  return new Promise((resolve, reject) => {
    const s = kind === 'udp' ? dgram.createSocket('udp4') : net.createServer();
    s.once('error', reject);
    const done = () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    };
    if (kind === 'udp') s.bind(0, '127.0.0.1', done);
    else s.listen(0, '127.0.0.1', done);
  });
}

export class ParloirServer {
  // bin: the parloir binary; name: for the log file. start({ extraArgs }): more `serve` arguments.
  constructor({ bin, name, webDir, verbose = false }) {
    this.bin = bin;
    this.name = name;
    this.webDir = webDir;
    this.verbose = verbose;
    this.log = [];
    this.proc = null;
    this.exit = null;
    this.httpPort = 0;
    this.udpPort = 0;
    this.tcpPort = 0;
  }

  get base() {
    return `http://127.0.0.1:${this.httpPort}`;
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.httpPort}`;
  }

  // Starts the server (ICE-TCP on a free port when `tcp`, else off) and waits for /healthz.
  async start({ tcp = true, httpPort = 0, udpPort = 0, extraArgs = [] } = {}) {
    this.httpPort = httpPort || (await freePort('tcp'));
    this.udpPort = udpPort || (await freePort('udp'));
    this.tcpPort = tcp ? await freePort('tcp') : 0;
    const args = [
      'serve', '--dev', '--http-addr', `127.0.0.1:${this.httpPort}`, '--udp-port', String(this.udpPort),
      '--tcp-port', String(this.tcpPort), '--web-dir', this.webDir,
    ];
    // `make e2e-backends` runs the whole suite once per UDP backend.
    if (process.env.PARLOIR_IO) args.push('--io', process.env.PARLOIR_IO);
    args.push(...extraArgs);
    // More `serve` arguments for the whole suite: each-backend.sh runs it once more with every
    // room spanning two media workers.
    args.push(...(process.env.PARLOIR_E2E_SERVE_ARGS || '').split(' ').filter(Boolean));
    this.log.push(`# ${this.bin} ${args.join(' ')}`);
    this.proc = spawn(this.bin, args, {
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    for (const stream of ['stdout', 'stderr']) {
      this.proc[stream].on('data', (chunk) => this.#record(stream, chunk));
    }
    this.proc.on('exit', (code, signal) => {
      this.exit = { code, signal };
      this.log.push(`# server exited code=${code} signal=${signal}`);
    });
    this.proc.on('error', (e) => {
      this.exit = { error: e.message };
      this.log.push(`# spawn error: ${e.message}`);
    });
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline && !this.exit) {
      try {
        if ((await fetch(`${this.base}/healthz`, { signal: AbortSignal.timeout(1000) })).status === 200) return;
      } catch {
        // not listening yet
      }
      await sleep(100);
    }
    this.dumpLog();
    throw new Error(
      this.exit
        ? `server exited before /healthz answered: ${JSON.stringify(this.exit)}`
        : `server did not answer 200 on ${this.base}/healthz within 30 s`,
    );
  }

  async stop() {
    if (!this.proc || this.exit) return;
    this.proc.kill('SIGTERM');
    for (let i = 0; i < 30 && !this.exit; i++) await sleep(100);
    if (!this.exit) this.proc.kill('SIGKILL');
  }

  // Prints the end of the log and writes all of it to a temporary file.
  dumpLog(tail = 200) {
    const file = path.join(os.tmpdir(), `parloir-${this.name}-server-${process.pid}.log`);
    try {
      fs.writeFileSync(file, `${this.log.join('\n')}\n`);
    } catch {
      // best effort
    }
    console.log(`\n===== server log (last ${tail} of ${this.log.length} lines; full log: ${file}) =====`);
    console.log(this.log.slice(-tail).join('\n'));
    console.log('===== end of server log =====\n');
  }

  #record(stream, chunk) {
    for (const line of chunk.toString().split('\n')) {
      if (!line) continue;
      this.log.push(`${stream}: ${line}`);
      if (this.verbose) console.log(`[server ${stream}] ${line}`);
    }
    if (this.log.length > 20_000) this.log.splice(0, this.log.length - 20_000);
  }
}

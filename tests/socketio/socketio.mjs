// Socket.IO behind wslb: three socket.io backends (each its own session store, as three
// servers would be) behind the real wslb binary with cookie affinity, and 100
// socket.io-client clients with the default transports: long-polling first, then the
// upgrade to WebSocket. Every client must connect, upgrade to websocket and get an
// acknowledgement for each of its events, and no backend may see an unknown session.
// Then the same without affinity shows the failure it prevents: polls of one session
// reach other backends, which answer 400 "Session ID unknown".
//
//   WSLB=target/debug/wslb node socketio.mjs
import { createServer } from 'node:http';
import { spawn } from 'node:child_process';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Server } from 'socket.io';
import { io } from 'socket.io-client';

const WSLB = process.env.WSLB;
if (!WSLB) throw new Error('set WSLB to the wslb binary');
const CLIENTS = 100;
const EVENTS = 3;

function backend(name) {
  return new Promise((resolve) => {
    const http = createServer();
    const server = new Server(http);
    const stats = { name, connections: 0, unknownSession: 0, events: 0 };
    server.engine.on('connection_error', (err) => {
      if (err.code === 1) stats.unknownSession++; // "Session ID unknown"
    });
    server.on('connection', (socket) => {
      stats.connections++;
      socket.on('ev', (n, ack) => {
        stats.events++;
        ack({ name, n, transport: socket.conn.transport.name });
      });
    });
    http.listen(0, '127.0.0.1', () => resolve({ http, server, stats, port: http.address().port }));
  });
}

function freePort() {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const port = s.address().port;
      s.close(() => resolve(port));
    });
  });
}

async function startWslb(ports, sticky) {
  const dir = mkdtempSync(join(tmpdir(), 'wslb-socketio-'));
  const port = await freePort();
  const config = join(dir, 'wslb.toml');
  writeFileSync(config, [
    `listen = "127.0.0.1:${port}"`,
    `backends = [${ports.map((p) => `"127.0.0.1:${p}"`).join(', ')}]`,
    `workers = 2`,
    sticky ? `sticky = "cookie"` : `sticky = "none"`,
    `[admin]`,
    `listen = ""`,
  ].join('\n') + '\n');
  const child = spawn(WSLB, ['run', '--config', config], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr.on('data', (d) => { log += d; });
  for (let i = 0; i < 100 && !log.includes('balancing'); i++) await new Promise((r) => setTimeout(r, 50));
  if (!log.includes('balancing')) throw new Error(`wslb did not start:\n${log}`);
  return { child, port, log: () => log };
}

// One client: connect (polling, then upgrade), wait for the upgrade, send EVENTS events
// and await each acknowledgement. Resolves with what happened; never rejects.
function client(port, i, timeoutMs) {
  return new Promise((resolve) => {
    const socket = io(`http://127.0.0.1:${port}`, {
      withCredentials: true, // Node: keep cookies (the sticky one) like a browser does
      reconnection: false,
      timeout: timeoutMs,
    });
    const out = { i, connected: false, upgraded: false, acks: 0, names: new Set(), error: null };
    const done = () => { clearTimeout(timer); socket.close(); resolve(out); };
    const timer = setTimeout(() => { out.error = out.error || 'timed out'; done(); }, timeoutMs);
    socket.on('connect_error', (e) => { out.error = `connect_error: ${e.message}`; done(); });
    socket.on('disconnect', (why) => { if (out.acks < EVENTS) { out.error = `disconnect: ${why}`; done(); } });
    socket.on('connect', () => {
      out.connected = true;
      const engine = socket.io.engine;
      const run = async () => {
        out.upgraded = engine.transport.name === 'websocket';
        for (let n = 0; n < EVENTS; n++) {
          const ack = await socket.timeout(timeoutMs).emitWithAck('ev', n).catch((e) => ({ error: e.message }));
          if (ack.error || ack.n !== n) { out.error = `ack ${n}: ${JSON.stringify(ack)}`; return done(); }
          out.acks++;
          out.names.add(ack.name);
          out.lastTransport = ack.transport;
        }
        done();
      };
      if (engine.transport.name === 'websocket') run();
      else engine.once('upgrade', run);
    });
  });
}

function fail(msg) {
  console.error(`FAIL ${msg}`);
  process.exitCode = 1;
}

const backends = await Promise.all(['b0', 'b1', 'b2'].map(backend));
const ports = backends.map((b) => b.port);

// 1. Cookie affinity: everyone connects, upgrades and is acknowledged, on one backend.
let lb = await startWslb(ports, true);
let t = Date.now();
let results = await Promise.all(Array.from({ length: CLIENTS }, (_, i) => client(lb.port, i, 15000)));
const ok = results.filter((r) => r.connected && r.upgraded && r.acks === EVENTS && r.names.size === 1 && r.lastTransport === 'websocket' && !r.error);
const unknown = backends.reduce((n, b) => n + b.stats.unknownSession, 0);
const spread = backends.map((b) => `${b.stats.name}=${b.stats.connections}`).join(' ');
console.log(`affinity on: ${ok.length}/${CLIENTS} clients connected, upgraded to websocket and got ${EVENTS} acks each (${Date.now() - t} ms); sessions per backend ${spread}; unknown-session errors ${unknown}`);
if (ok.length !== CLIENTS) fail(`with affinity: ${JSON.stringify(results.filter((r) => !ok.includes(r)).slice(0, 3).map((r) => ({ ...r, names: [...r.names] })))}`);
if (unknown !== 0) fail(`with affinity, ${unknown} unknown-session errors`);
if (backends.some((b) => b.stats.connections === 0)) fail(`a backend got no session: ${spread}`);
lb.child.kill('SIGTERM');
await new Promise((r) => lb.child.once('exit', r));

// 2. Without affinity: round robin sends one session's requests to all three backends.
for (const b of backends) b.stats.unknownSession = 0;
lb = await startWslb(ports, false);
results = await Promise.all(Array.from({ length: 20 }, (_, i) => client(lb.port, i, 5000)));
const failed = results.filter((r) => r.error || r.acks !== EVENTS).length;
const unknownOff = backends.reduce((n, b) => n + b.stats.unknownSession, 0);
console.log(`affinity off: ${failed}/20 clients failed; backends answered ${unknownOff} requests 400 "Session ID unknown"`);
if (unknownOff === 0) fail('without affinity no backend saw an unknown session: the test shows nothing');
lb.child.kill('SIGTERM');
await new Promise((r) => lb.child.once('exit', r));

for (const b of backends) { b.server.close(); b.http.close(); }
console.log(process.exitCode ? 'socketio: FAIL' : 'socketio: ok');
process.exit(process.exitCode || 0);

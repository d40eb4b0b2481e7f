// wss:// in a real browser: the real `wslb run --tls-cert --tls-key` in front of two
// `wslb echo` backends, and headless Chromium as the client, verifying the certificate
// chain for real: a test CA made here with the openssl CLI is trusted through an NSS
// database in a temporary HOME (certutil, Debian's libnss3-tools), which is where Chromium
// on Linux reads user trust from; nothing ignores certificate errors. Asserts that text
// and binary messages come back byte for byte, that the close code comes back, what
// Chromium says about the connection (issuer, protocol), that the same browser without the
// CA refuses the certificate, that ws:// and wss:// to a compressing backend (Python
// websockets) negotiate permessage-deflate end to end (`WebSocket.extensions`) and echo
// byte for byte, and what wslb's /metrics counted. Every address is
// 127.0.0.1 with a port 0 the processes report on stderr.
//
// Environment (tests/browser/run.sh sets them): WSLB (the built binary), CHROMIUM.

import { execFileSync, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import { runSteps } from "./steps.mjs";

const wslbPath = process.env.WSLB;
const browserPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
// Guards against a hang, not measurements: each wait ends at the event it waits for.
const GUARD_MS = 30_000;
const procs = [];
const work = mkdtempSync(join(tmpdir(), "wslb-wss-"));

// ---- the test PKI: a CA and a leaf for localhost, made now, deleted at the end ----
const run = (cmd, args) => execFileSync(cmd, args, { cwd: work, stdio: ["ignore", "pipe", "pipe"] });
const CA_NAME = "wslb browser test CA";
run("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
  "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=" + CA_NAME,
  "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
run("openssl", ["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
  "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=localhost"]);
writeFileSync(join(work, "leaf.ext"), [
  "subjectAltName=DNS:localhost",
  "basicConstraints=critical,CA:FALSE",
  "keyUsage=critical,digitalSignature",
  "extendedKeyUsage=serverAuth",
  "subjectKeyIdentifier=hash",
  "authorityKeyIdentifier=keyid",
].join("\n") + "\n");
run("openssl", ["x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "0x5eed",
  "-days", "2", "-extfile", "leaf.ext", "-out", "leaf.pem"]);

// Two HOMEs for Chromium: one whose NSS database trusts the CA, one with none.
const trusting = join(work, "home-trusting");
const nssdb = join(trusting, ".pki", "nssdb");
mkdirSync(nssdb, { recursive: true });
run("certutil", ["-d", "sql:" + nssdb, "-N", "--empty-password"]);
run("certutil", ["-d", "sql:" + nssdb, "-A", "-t", "C,,", "-n", "wslb-test", "-i", join(work, "ca.pem")]);
const untrusting = join(work, "home-untrusting");
mkdirSync(untrusting, { recursive: true });

// Starts `wslb args...` and resolves with the first stderr lines matching `pattern`'s groups.
function start(args, pattern) {
  const p = spawn(wslbPath, args, { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, NO_COLOR: "1" } });
  procs.push(p);
  const lines = createInterface({ input: p.stderr });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("wslb " + args[0] + " never said " + pattern)), GUARD_MS);
    const seen = {};
    lines.on("line", (l) => {
      for (const [name, re] of Object.entries(pattern)) {
        const m = l.match(re);
        if (m) seen[name] = m[1];
      }
      if (Object.keys(seen).length === Object.keys(pattern).length) {
        clearTimeout(timer);
        resolve(seen);
      }
    });
    p.once("exit", (code) => reject(new Error("wslb " + args[0] + " exited " + code)));
  });
}

function cleanUp() {
  for (const p of procs) if (p.exitCode === null) p.kill("SIGKILL");
  rmSync(work, { recursive: true, force: true });
}

let contexts = [];
let failed = 1;
try {
  const echoes = [];
  for (let i = 0; i < 2; i++) {
    const e = await start(["echo", "--listen", "127.0.0.1:0", "--workers", "1"], { addr: /echo backend on (\S+)/ });
    echoes.push(e.addr);
  }
  const lb = await start(
    ["run", "--listen", "127.0.0.1:0", "--workers", "2", "--admin", "127.0.0.1:0",
      "--tls-cert", join(work, "leaf.pem"), "--tls-key", join(work, "leaf.key"),
      ...echoes.flatMap((a) => ["--backend", a])],
    { listen: /balancing (?:wss:\/\/)?(\d+\.\d+\.\d+\.\d+:\d+)/, admin: /admin server on (http:\/\/\S+\/)/ },
  );
  const port = lb.listen.split(":").pop();
  const origin = "https://localhost:" + port;

  // `home`: the HOME Chromium runs with (its NSS database).
  async function browser(home) {
    const profile = join(home, "profile");
    const context = await chromium.launchPersistentContext(profile, {
      executablePath: browserPath,
      headless: true,
      env: { ...process.env, HOME: home },
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--disable-background-networking", "--disable-component-update", "--no-first-run",
        // Only 127.0.0.1, where wslb listens: never ::1.
        "--host-resolver-rules=MAP localhost 127.0.0.1"],
    });
    contexts.push(context);
    return context.pages()[0] ?? (await context.newPage());
  }

  // The bytes both sides expect, and a checksum (FNV-1a) to compare them by.
  const BINARY_LEN = 300_000;
  const byteAt = (i) => (i * 7 + 3 + (i >> 8)) & 255;
  const fnv = (n, at) => {
    let h = 0x811c9dc5;
    for (let i = 0; i < n; i++) h = Math.imul(h ^ at(i), 0x01000193) >>> 0;
    return h;
  };
  const TEXT = "héllo, wörld ✓ wss ".repeat(200);

  // In the page: opens `url`, sends TEXT and the binary message, checks each echo byte for
  // byte, closes with 4000; resolves with what it saw.
  async function exchange(page, url) {
    return page.evaluate(async ({ url, text, n }) => {
      const byteAt = (i) => (i * 7 + 3 + (i >> 8)) & 255;
      const ws = new WebSocket(url);
      ws.binaryType = "arraybuffer";
      const next = () => new Promise((ok, fail) => {
        ws.onmessage = (m) => ok(m.data);
        ws.onclose = (e) => fail(new Error("closed " + e.code + " before the echo"));
      });
      await new Promise((ok, fail) => {
        ws.onopen = ok;
        ws.onerror = () => fail(new Error("the wss:// connection failed to open"));
      });
      ws.onerror = null;
      ws.send(text);
      const textBack = await next();
      const bin = new Uint8Array(n);
      for (let i = 0; i < n; i++) bin[i] = byteAt(i);
      ws.send(bin);
      const back = new Uint8Array(await next());
      let firstDiff = -1;
      for (let i = 0; i < Math.min(back.length, n); i++) if (back[i] !== bin[i]) { firstDiff = i; break; }
      let h = 0x811c9dc5;
      for (let i = 0; i < back.length; i++) h = Math.imul(h ^ back[i], 0x01000193) >>> 0;
      const closed = new Promise((ok) => { ws.onclose = (e) => ok({ code: e.code, reason: e.reason, clean: e.wasClean }); });
      ws.close(4000, "browser done");
      return { textSame: textBack === text, textLen: textBack.length, binLen: back.length, firstDiff, fnv: h, close: await closed, extensions: ws.extensions };
    }, { url, text: TEXT, n: BINARY_LEN });
  }

  const page = await browser(trusting);
  const steps = [
    ["Chromium verifies wslb's certificate: the https page comes from wslb, issued by the test CA", async () => {
      const res = await page.goto(origin + "/", { timeout: GUARD_MS });
      // A GET without an upgrade: wslb's answer, over the verified TLS connection.
      assert.equal(res.status(), 426);
      const sec = await res.securityDetails();
      assert.equal(sec.issuer, CA_NAME);
      assert.equal(sec.subjectName, "localhost");
      assert.equal(sec.protocol, "TLS 1.3");
    }],

    ["wss://localhost echoes text and binary byte for byte and returns close code 4000", async () => {
      // From the page above (a secure context of the same origin).
      const r = await exchange(page, "wss://localhost:" + port + "/browser");
      assert.equal(r.textSame, true, "text echo differs (" + r.textLen + " chars)");
      assert.equal(r.binLen, BINARY_LEN);
      assert.equal(r.firstDiff, -1, "binary echo differs at byte " + r.firstDiff);
      assert.equal(r.fnv, fnv(BINARY_LEN, byteAt));
      assert.deepEqual(r.close, { code: 4000, reason: "browser done", clean: true });
    }],

    ["the same Chromium without the CA in its NSS database refuses the certificate", async () => {
      const stranger = await browser(untrusting);
      // (Only the page: a socket needs a page of that origin to open from, since Chromium's
      // local network access checks block one from about:blank, whatever the certificate.)
      await assert.rejects(stranger.goto(origin + "/", { timeout: GUARD_MS }), /ERR_CERT_AUTHORITY_INVALID/);
    }],

    ["ws:// and wss:// to a compressing backend negotiate permessage-deflate end to end and echo byte for byte", async () => {
      // Python websockets with compression on, behind wslb over ws and over wss
      // (extensions = "pass", the default): the relay passes the compressed frames on.
      const server = spawn("python3", [new URL("../deflate/server.py", import.meta.url).pathname], { stdio: ["ignore", "pipe", "inherit"] });
      procs.push(server);
      const backendPort = await new Promise((ok, fail) => {
        createInterface({ input: server.stdout }).once("line", (l) => ok(l.trim()));
        server.once("exit", (c) => fail(new Error("deflate server exited " + c)));
      });
      const backend = "127.0.0.1:" + backendPort;
      const plain = await start(["run", "--listen", "127.0.0.1:0", "--workers", "1", "--admin", "", "--backend", backend],
        { listen: /balancing (\d+\.\d+\.\d+\.\d+:\d+)/ });
      const secure = await start(["run", "--listen", "127.0.0.1:0", "--workers", "1", "--admin", "", "--backend", backend,
        "--tls-cert", join(work, "leaf.pem"), "--tls-key", join(work, "leaf.key")],
        { listen: /balancing (?:wss:\/\/)?(\d+\.\d+\.\d+\.\d+:\d+)/ });
      const wsPort = plain.listen.split(":").pop();
      const wssPort = secure.listen.split(":").pop();
      // A page of each origin to open the socket from (the plain GET is proxied to the
      // backend, which answers it itself).
      const httpPage = await page.context().newPage();
      await httpPage.goto("http://localhost:" + wsPort + "/", { timeout: GUARD_MS });
      for (const [p, url] of [[httpPage, "ws://localhost:" + wsPort + "/deflate"]]) {
        const r = await exchange(p, url);
        assert.match(r.extensions, /^permessage-deflate/, url + ": extensions " + JSON.stringify(r.extensions));
        assert.equal(r.textSame, true);
        assert.equal(r.firstDiff, -1);
        assert.equal(r.fnv, fnv(BINARY_LEN, byteAt));
        assert.deepEqual(r.close, { code: 4000, reason: "browser done", clean: true });
      }
      const httpsPage = await page.context().newPage();
      await httpsPage.goto("https://localhost:" + wssPort + "/", { timeout: GUARD_MS });
      const r = await exchange(httpsPage, "wss://localhost:" + wssPort + "/deflate");
      assert.match(r.extensions, /^permessage-deflate/, "wss: extensions " + JSON.stringify(r.extensions));
      assert.equal(r.textSame, true);
      assert.equal(r.fnv, fnv(BINARY_LEN, byteAt));
      assert.deepEqual(r.close, { code: 4000, reason: "browser done", clean: true });
    }],

    ["/metrics counted the TLS handshakes and the browser's close codes", async () => {
      const metrics = await (await fetch(lb.admin + "metrics")).text();
      const m = metrics.match(/^wslb_tls_handshakes_total\{version="1\.3"\} (\d+)$/m);
      assert.ok(m, "no wslb_tls_handshakes_total{version=\"1.3\"} in /metrics");
      // At least the page's and the socket's (Chromium may open more connections).
      assert.ok(Number(m[1]) >= 2, "TLS 1.3 handshakes: " + m[1]);
      // The browser's 4000 and the echo's answer (codes 4000-4999 are counted as 4xxx).
      assert.match(metrics, /^wslb_closes_total\{code="4xxx",by="client"\} 1$/m);
      assert.match(metrics, /^wslb_closes_total\{code="4xxx",by="backend"\} 1$/m);
    }],
  ];
  failed = await runSteps(steps, "browser (wss)");
} finally {
  for (const c of contexts) await c.close().catch(() => {});
  cleanUp();
}
process.exit(failed === 0 ? 0 : 1);

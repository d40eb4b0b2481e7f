// The status page of the real `wslb run`, with real traffic: two `wslb echo` backends,
// wslb with its admin server, and Chromium itself as the WebSocket client (ten sockets
// opened from a second page, messages echoed through wslb). Asserts what the status page
// shows: each backend's open connections, the totals, a message rate, and that the
// counts go back to zero when the clients close. Every address is a port 0 the processes
// report on stderr.
//
// Environment (tests/browser/run.sh sets them): WSLB (the built binary), CHROMIUM.

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
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

// Starts `wslb args...` and resolves with the first stderr line matching `pattern`'s group.
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

const echoes = [];
for (let i = 0; i < 2; i++) {
  const e = await start(["echo", "--listen", "127.0.0.1:0", "--workers", "1"], { addr: /echo backend on (\S+)/ });
  echoes.push(e.addr);
}
const lb = await start(
  ["run", "--listen", "127.0.0.1:0", "--workers", "2", "--admin", "127.0.0.1:0",
   ...echoes.flatMap((a) => ["--backend", a])],
  { listen: /balancing (\S+)/, admin: /admin server on (http:\/\/\S+\/)/ },
);

const profile = mkdtempSync(join(tmpdir(), "wslb-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: browserPath,
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
    "--disable-background-networking", "--disable-component-update", "--no-first-run"],
  viewport: { width: 1280, height: 600 },
});
const status = context.pages()[0] ?? (await context.newPage());
const clients = await context.newPage();
const problems = [];
status.on("console", (m) => m.type() === "error" && problems.push("console: " + m.text()));
status.on("pageerror", (e) => problems.push("page error: " + e.message));

const waitFor = (fn, arg) => status.waitForFunction(fn, arg, { timeout: GUARD_MS });
const text = (sel) => status.locator(sel).innerText();
const number = (s) => Number(s.replace(/[,k]/g, ""));
const openByBackend = () => status.locator("#backends tr[data-backend]").evaluateAll((trs) =>
  Object.fromEntries(trs.map((tr) => [tr.dataset.backend, Number(tr.querySelector(".open").textContent.replace(/,/g, ""))])));

const steps = [
  ["the page of the real binary loads, both backends up", async () => {
    const res = await status.goto(lb.admin);
    assert.equal(res.status(), 200);
    await waitFor(() => document.querySelectorAll("#backends tr[data-backend]").length === 2);
    assert.equal(await text("#backends-up"), "2 / 2");
    assert.equal(await text("#state-text"), "Serving");
  }],

  ["ten browser WebSockets through wslb show as 5 + 5 open connections", async () => {
    // Chromium as the client: ten sockets, each echoing a message through wslb.
    const echoed = await clients.evaluate(async (url) => {
      window.sockets = [];
      const opened = [];
      for (let i = 0; i < 10; i++) {
        const ws = new WebSocket(url);
        window.sockets.push(ws);
        opened.push(new Promise((ok, fail) => {
          ws.onerror = () => fail(new Error("socket " + i));
          ws.onopen = () => ws.send("hello " + i);
          ws.onmessage = (m) => ok(m.data);
        }));
      }
      return Promise.all(opened);
    }, "ws://" + lb.listen + "/");
    assert.deepEqual(echoed, [...Array(10).keys()].map((i) => "hello " + i));
    await waitFor(() => document.getElementById("open").textContent === "10");
    const open = await openByBackend();
    assert.deepEqual(Object.keys(open).sort(), [...echoes].sort());
    assert.deepEqual(Object.values(open), [5, 5], "round robin: " + JSON.stringify(open));
  }],

  ["messages through wslb show as a message rate", async () => {
    // Keep the sockets chatting until the page has seen the counters move.
    await clients.evaluate(() => {
      window.chat = setInterval(() => window.sockets.forEach((ws) => ws.send("tick")), 50);
    });
    await waitFor(() => Number(document.getElementById("msg-rate").textContent.replace(/[,k]/g, "")) > 0);
    assert.ok(number(await text("#msg-rate")) > 0);
    await clients.evaluate(() => clearInterval(window.chat));
  }],

  ["closing the clients brings every count back to zero", async () => {
    await clients.evaluate(() => window.sockets.forEach((ws) => ws.close(1000)));
    await waitFor(() => document.getElementById("open").textContent === "0");
    assert.deepEqual(Object.values(await openByBackend()), [0, 0]);
    // /metrics agrees with what the page shows.
    const metrics = await (await status.request.get(lb.admin + "metrics")).text();
    assert.match(metrics, /^wslb_connections_accepted_total 10$/m);
    assert.match(metrics, /^wslb_closes_total\{code="1000",by="client"\} 10$/m);
  }],

  ["no console error on the page", async () => {
    assert.deepEqual(problems, []);
  }],
];

const failed = await runSteps(steps, "browser (real traffic)");
await context.close();
rmSync(profile, { recursive: true, force: true });
for (const p of procs) if (p.exitCode === null) p.kill("SIGKILL");
process.exit(failed === 0 ? 0 : 1);

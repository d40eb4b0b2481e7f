// The admin status page in a real browser: Debian's Chromium, headless, driven by
// playwright-core (which downloads no browser), against `examples/admin_demo` (three
// backends, the third down, counters that move). Asserts what the page shows, saves a
// screenshot, and prints "N passed, M failed".
//
// Environment (tests/browser/run.sh sets them):
//   ADMIN_DEMO  path of the built admin_demo example
//   CHROMIUM    the browser (default /usr/bin/chromium)
//   SCREENSHOT  where the screenshot goes (default target/browser/status-page.png; run.sh sets it)

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import { runSteps } from "./steps.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, "../..");
const demoPath = process.env.ADMIN_DEMO ?? join(repo, "target/debug/examples/admin_demo");
const browserPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const screenshot = process.env.SCREENSHOT ?? join(repo, "target/browser/status-page.png");
// Guards against a hang, not measurements: each wait ends at the event it waits for.
const GUARD_MS = 30_000;

// The demo: its address from its first line, then "ok <command>" for each command sent.
const demo = spawn(demoPath, [], { stdio: ["pipe", "pipe", "inherit"] });
const lines = createInterface({ input: demo.stdout });
const waiting = [];
lines.on("line", (line) => {
  const i = waiting.findIndex((w) => w.test(line));
  if (i >= 0) waiting.splice(i, 1)[0].resolve(line);
});
function nextLine(test, what) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("admin_demo never said " + what)), GUARD_MS);
    waiting.push({ test, resolve: (l) => { clearTimeout(timer); resolve(l); } });
  });
}
async function command(cmd) {
  const said = nextLine((l) => l === "ok " + cmd, "ok " + cmd);
  demo.stdin.write(cmd + "\n");
  await said;
}

const first = await nextLine((l) => l.startsWith("admin "), "its address");
const base = first.split(" ")[1];
const origin = new URL(base).origin;

const profile = mkdtempSync(join(tmpdir(), "wslb-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: browserPath,
  headless: true,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
  ],
  viewport: { width: 1280, height: 600 },
  colorScheme: "light",
});
const page = context.pages()[0] ?? (await context.newPage());

// Everything the page does, to check it loads nothing from elsewhere and nothing fails.
const problems = [];
page.on("console", (m) => m.type() === "error" && problems.push("console: " + m.text()));
page.on("pageerror", (e) => problems.push("page error: " + e.message));
page.on("requestfailed", (r) => problems.push("failed: " + r.url() + " " + r.failure()?.errorText));
page.on("request", (r) => {
  if (!r.url().startsWith(origin + "/") && !r.url().startsWith("data:")) {
    problems.push("external request: " + r.url());
  }
});
page.on("response", (r) => r.status() >= 400 && problems.push(r.status() + " " + r.url()));

const samples = () => page.evaluate(() => Number(document.body.dataset.samples ?? 0));
const waitFor = (fn, arg) => page.waitForFunction(fn, arg, { timeout: GUARD_MS });
const text = (sel) => page.locator(sel).innerText();
const number = (s) => Number(s.replace(/,/g, ""));
async function rows() {
  return page.locator("#backends tr[data-backend]").evaluateAll((trs) =>
    trs.map((tr) => ({
      address: tr.querySelector(".addr").textContent,
      health: tr.querySelector(".health").textContent.trim(),
      open: tr.querySelector(".open").textContent,
    })),
  );
}

const steps = [
  ["the page loads and polls", async () => {
    const res = await page.goto(base);
    assert.equal(res.status(), 200);
    assert.equal(await page.title(), "wslb status");
    await waitFor(() => Number(document.body.dataset.samples ?? 0) >= 1);
    assert.equal(await text("#state-text"), "Serving");
    assert.match(await text("#build"), /^v\d+\.\d+\.\d+ · io_uring$/);
  }],

  ["each backend's row shows its address, health and open connections", async () => {
    await waitFor(() => document.querySelectorAll("#backends tr[data-backend]").length === 3);
    const shown = await rows();
    assert.deepEqual(shown.map((r) => r.address), ["10.0.0.11:9000", "10.0.0.12:9000", "10.0.0.13:9000"]);
    assert.deepEqual(shown.map((r) => r.health), ["up", "up", "down"]);
    const open = shown.map((r) => number(r.open));
    assert.ok(open[0] > 0 && open[1] > 0, "up backends have open connections: " + open);
    assert.equal(open[2], 0, "the down backend has none");
    // What /backends says agrees (open counts move between fetches; health does not).
    const api = await (await page.request.get(base + "backends")).json();
    assert.deepEqual(api.map((b) => [b.address, b.up ? "up" : "down"]), shown.map((r) => [r.address, r.health]));
    assert.equal(await text("#backends-up"), "2 / 3");
  }],

  ["rates appear once the counters have moved between two fetches", async () => {
    const now = await samples();
    await waitFor((n) => Number(document.body.dataset.samples) >= n + 1, now);
    await waitFor(() => Number(document.getElementById("msg-rate").textContent.replace(/[,k]/g, "")) > 0);
    const msg = await text("#msg-rate");
    const conn = await text("#conn-rate");
    assert.ok(number(msg.replace("k", "")) > 0, "message rate " + msg);
    assert.ok(number(conn) > 0, "connection rate " + conn);
    assert.match(await text("#byte-unit"), /B\/s$/);
  }],

  ["screenshot", async () => {
    // Enough polls for the message-rate chart to have a line.
    await waitFor(() => Number(document.body.dataset.samples) >= 8);
    mkdirSync(dirname(screenshot), { recursive: true });
    await page.screenshot({ path: screenshot, fullPage: true });
  }],

  ["draining shows in the banner and the state, and /readyz says 503", async () => {
    assert.equal(await page.locator("#draining").isVisible(), false);
    await command("drain");
    await page.locator("#draining").waitFor({ state: "visible", timeout: GUARD_MS });
    assert.equal(await text("#state-text"), "Draining");
    assert.equal(await text("#readiness"), "not ready: draining");
    const ready = await page.request.get(base + "readyz");
    assert.equal(ready.status(), 503);
    assert.equal(await ready.text(), "draining\n");
    await command("undrain");
    await page.locator("#draining").waitFor({ state: "hidden", timeout: GUARD_MS });
    assert.equal(await text("#state-text"), "Serving");
  }],

  ["a backend going down shows as down with its connections gone", async () => {
    await command("down 1");
    await waitFor(() => document.querySelector('#backends tr[data-backend="10.0.0.11:9000"] .health')?.textContent.trim() === "down");
    const shown = await rows();
    assert.equal(number(shown[0].open), 0);
    assert.equal(await text("#backends-up"), "1 / 3");
    await command("down 2");
    await waitFor(() => document.getElementById("state-text").textContent === "Not ready");
    assert.equal(await text("#readiness"), "not ready: every backend is down");
    await command("up 1");
    await command("up 2");
    await waitFor(() => document.getElementById("state-text").textContent === "Serving");
  }],

  ["no console error, failed or external request", async () => {
    assert.deepEqual(problems, []);
  }],

  ["a stopped server shows as unreachable", async () => {
    demo.stdin.end(); // end of stdin stops the demo
    await new Promise((r) => demo.once("exit", r));
    await page.locator("#unreachable").waitFor({ state: "visible", timeout: GUARD_MS });
    assert.equal(await text("#state-text"), "Unreachable");
  }],
];

const failed = await runSteps(steps, "browser");
await context.close();
rmSync(profile, { recursive: true, force: true });
if (demo.exitCode === null) demo.kill();
process.exit(failed === 0 ? 0 : 1);

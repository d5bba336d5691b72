// Page-to-live: how long after a person opens the demo page (http://127.0.0.1:3000/, served by
// the gateway as `bash scripts/run.sh` runs it: the demo's default timings) the page shows live
// data. Headless Chromium (Debian's `chromium`, driven by playwright-core from tests/e2e) opens
// the page ROUNDS times, each in a fresh browser context (no cache), and records, from the
// navigation's start, when the socket is connected, the user id shown, the city's weather
// shown, the first ticker tick shown, and all four request answers shown as success.
// Run: node bench/page-to-live.mjs (needs target/release/flux-gateway and the built plugins).

import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
process.env.FLUX_GATEWAY_BIN ??= join(root, "target/release/flux-gateway");
const { startGateway } = await import("../tests/e2e/harness.mjs");
const { chromium } = createRequire(join(root, "tests/e2e/package.json"))("playwright-core");

const ROUNDS = Number(process.env.ROUNDS ?? 10);
const MILESTONES = ["connected", "userId", "weather", "ticker", "fourAnswers"];

const gateway = await startGateway("[demo]\nenabled = true\n");
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_BIN ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});

/** In the page: the first moment (ms since navigation start) each milestone is visible. */
function watchMilestones() {
  const seen = {};
  const checks = {
    connected: () => document.getElementById("status")?.dataset.state === "connected",
    userId: () => document.getElementById("user-id")?.textContent.trim().length > 0,
    weather: () => !["", "—"].includes(document.getElementById("weather-temp")?.textContent.trim() ?? ""),
    ticker: () => !["", "—"].includes(document.getElementById("ticker-seq")?.textContent.trim() ?? ""),
    fourAnswers: () => document.querySelectorAll('[id^="state-"][data-state="success"]').length === 4,
  };
  return new Promise((done, failed) => {
    const deadline = setTimeout(() => failed(new Error(`not live after 10 s: ${JSON.stringify(seen)}`)), 10_000);
    const check = () => {
      for (const [name, visible] of Object.entries(checks)) if (!(name in seen) && visible()) seen[name] = performance.now();
      if (Object.keys(seen).length === Object.keys(checks).length) {
        clearTimeout(deadline);
        done(seen);
      } else requestAnimationFrame(check);
    };
    check();
  });
}

const samples = Object.fromEntries(MILESTONES.map((m) => [m, []]));
try {
  for (let round = 0; round < ROUNDS; round++) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    await page.goto(`${gateway.url}/`, { waitUntil: "commit" });
    const seen = await page.evaluate(watchMilestones);
    for (const m of MILESTONES) samples[m].push(seen[m]);
    await context.close();
  }
} finally {
  await browser.close();
  await gateway.stop();
}

const stats = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  return { median: sorted[Math.floor(sorted.length / 2)], max: sorted[sorted.length - 1] };
};
console.log(`| milestone (${ROUNDS} page loads, ms from navigation start) | median | max |`);
console.log("| --- | ---: | ---: |");
for (const m of MILESTONES) {
  const { median, max } = stats(samples[m]);
  console.log(`| ${m} | ${median.toFixed(0)} | ${max.toFixed(0)} |`);
}
console.log(`\nper load, in order (ms): ${MILESTONES.map((m) => `${m} ${samples[m].map((v) => v.toFixed(0)).join(" ")}`).join("; ")}`);

// Headless Chromium on the chat page of a running qwen-tune server (started by the Go test
// TestChatPageInBrowser with the scripted test engine): sends a message, waits for the
// streamed reply rendered as Markdown, stops a long reply with the stop button, and keeps a
// screenshot. QT_BASE_URL, QT_API_KEY, QT_CHROMIUM, QT_SCREENSHOT.
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const browser = await chromium.launch({ executablePath: process.env.QT_CHROMIUM, args: ["--no-sandbox"] });
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 760 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(process.env.QT_BASE_URL + "/");
  assert.equal(await page.locator("#settings").isVisible(), false);
  await page.click("#toggle-settings");
  assert.equal(await page.locator("#settings").isVisible(), true);
  await page.fill("#api_key", process.env.QT_API_KEY);
  await page.dispatchEvent("#api_key", "change");
  await page.fill("#system", "You are a test.");
  await page.dispatchEvent("#system", "change");

  // a message and its streamed, Markdown-rendered reply
  await page.fill("#input", "Hello from the browser");
  await page.press("#input", "Enter");
  const reply = page.locator(".msg.assistant").last();
  await reply.locator("pre code").waitFor({ timeout: 15000 });
  await page.waitForFunction(() => !document.querySelector(".msg.assistant.streaming"), null, { timeout: 15000 });
  assert.match(await reply.innerText(), /You said: Hello from the browser/);
  assert.equal(await reply.locator("strong").innerText(), "Hello");
  assert.equal(await reply.locator("pre code").innerText(), "fmt.Println(42)");
  assert.match(await page.locator("#status").innerText(), /prompt \+ \d+ reply tokens/);

  // the stop button ends a long reply and keeps what came
  await page.fill("#input", "slow, please");
  await page.press("#input", "Enter");
  await page.locator("#stop").waitFor({ state: "visible" });
  await page.waitForFunction(() => (document.querySelector(".msg.assistant:last-child")?.innerText || "").includes("word word"), null, { timeout: 15000 });
  await page.click("#stop");
  await page.waitForFunction(() => document.getElementById("status").innerText === "stopped", null, { timeout: 15000 });
  assert.ok(await page.locator("#send").isVisible());

  // the history survives a reload
  await page.reload();
  await page.locator(".msg.user").nth(1).waitFor();
  assert.equal(await page.locator(".msg.user").count(), 2);
  await page.screenshot({ path: process.env.QT_SCREENSHOT, fullPage: true });
  assert.deepEqual(errors, []);
  console.log("ok: page streamed, rendered, stopped; screenshot", process.env.QT_SCREENSHOT);
} finally {
  await browser.close();
}

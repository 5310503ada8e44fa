// OpenAI's official Node client against a running qwen-tune server (started by the Go test
// TestOpenAINodeClient with the scripted test engine): QT_BASE_URL, QT_API_KEY.
import { test } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";

const baseURL = process.env.QT_BASE_URL + "/v1";
const client = new OpenAI({ baseURL, apiKey: process.env.QT_API_KEY, maxRetries: 0 });
const echo = (text) => `You said: ${text}\n\n**Hello** from the \`scripted\` engine.\n\n\`\`\`go\nfmt.Println(42)\n\`\`\``;

test("chat, not streamed", async () => {
  const r = await client.chat.completions.create({ model: "scripted", messages: [{ role: "user", content: "Hello" }] });
  assert.equal(r.object, "chat.completion");
  assert.equal(r.choices[0].message.role, "assistant");
  assert.equal(r.choices[0].message.content, echo("Hello"));
  assert.equal(r.choices[0].finish_reason, "stop");
  assert.ok(r.usage.prompt_tokens > 0 && r.usage.completion_tokens > 0);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
});

test("chat, streamed, with usage in the last chunk", async () => {
  const stream = await client.chat.completions.create({ model: "scripted", stream: true, stream_options: { include_usage: true }, messages: [{ role: "user", content: "Hi there" }] });
  let text = "", finish = null, usage = null, chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    if (chunk.usage) usage = chunk.usage;
    const c = chunk.choices[0];
    if (!c) continue;
    text += c.delta.content ?? "";
    if (c.finish_reason) finish = c.finish_reason;
  }
  assert.equal(text, echo("Hi there"));
  assert.equal(finish, "stop");
  assert.ok(usage && usage.completion_tokens > 0);
  assert.ok(chunks > 5, `only ${chunks} chunks`);
});

test("stop sequences, streamed and not", async () => {
  const r = await client.chat.completions.create({ model: "scripted", stop: ["END"], messages: [{ role: "user", content: "stop test" }] });
  assert.equal(r.choices[0].message.content, "alpha beta ");
  assert.equal(r.choices[0].finish_reason, "stop");
  const stream = await client.chat.completions.create({ model: "scripted", stream: true, stop: "a E", messages: [{ role: "user", content: "stop test" }] });
  let text = "";
  for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
  assert.equal(text, "alpha bet");
});

test("a tool call round trip", async () => {
  const tools = [{ type: "function", function: { name: "get_weather", description: "Weather of a city.", parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } } }];
  const messages = [{ role: "user", content: "What is the weather in Paris?" }];
  const first = await client.chat.completions.create({ model: "scripted", messages, tools });
  assert.equal(first.choices[0].finish_reason, "tool_calls");
  const call = first.choices[0].message.tool_calls[0];
  assert.equal(call.type, "function");
  assert.equal(call.function.name, "get_weather");
  assert.deepEqual(JSON.parse(call.function.arguments), { city: "Paris" });
  messages.push(first.choices[0].message);
  messages.push({ role: "tool", tool_call_id: call.id, content: JSON.stringify({ sky: "sunny", celsius: 22 }) });
  const second = await client.chat.completions.create({ model: "scripted", messages, tools });
  assert.equal(second.choices[0].finish_reason, "stop");
  assert.equal(second.choices[0].message.content, "It is sunny in Paris, 22 degrees.");
  // streamed, the call arrives as a tool_calls delta the client can accumulate
  const stream = await client.chat.completions.create({ model: "scripted", stream: true, messages: messages.slice(0, 1), tools });
  let name = "", args = "", finish = null;
  for await (const chunk of stream) {
    const c = chunk.choices[0];
    if (!c) continue;
    for (const tc of c.delta.tool_calls ?? []) { name += tc.function?.name ?? ""; args += tc.function?.arguments ?? ""; }
    if (c.finish_reason) finish = c.finish_reason;
  }
  assert.equal(name, "get_weather");
  assert.deepEqual(JSON.parse(args), { city: "Paris" });
  assert.equal(finish, "tool_calls");
});

test("legacy completions and the model list", async () => {
  const r = await client.completions.create({ model: "scripted", prompt: "stop test", stop: ["END"], max_tokens: 20 });
  assert.equal(r.choices[0].text, "alpha beta ");
  const models = await client.models.list();
  assert.deepEqual(models.data.map((m) => m.id), ["scripted"]);
});

test("errors: 400, 401 and the OpenAI error body", async () => {
  await assert.rejects(client.chat.completions.create({ model: "scripted", messages: [{ role: "wizard", content: "x" }] }), (e) => {
    assert.ok(e instanceof OpenAI.BadRequestError);
    assert.equal(e.status, 400);
    assert.match(e.message, /unknown role "wizard"/);
    assert.equal(e.param, "messages[0].role");
    return true;
  });
  await assert.rejects(client.chat.completions.create({ model: "scripted", messages: [{ role: "user", content: "word ".repeat(3000) }] }), (e) => {
    assert.equal(e.status, 400);
    assert.equal(e.code, "context_length_exceeded");
    return true;
  });
  const stranger = new OpenAI({ baseURL, apiKey: "not-the-key", maxRetries: 0 });
  await assert.rejects(stranger.chat.completions.create({ model: "scripted", messages: [{ role: "user", content: "hi" }] }), (e) => {
    assert.ok(e instanceof OpenAI.AuthenticationError);
    assert.equal(e.status, 401);
    return true;
  });
});

test("429 when the queue is full", async () => {
  // the server admits 2 requests at once: one slow reply generating, one waiting, more refused
  const slow = () => client.chat.completions.create({ model: "scripted", max_tokens: 15, messages: [{ role: "user", content: "slow" }] });
  const results = await Promise.allSettled(Array.from({ length: 8 }, slow));
  const refused = results.filter((r) => r.status === "rejected");
  const served = results.filter((r) => r.status === "fulfilled");
  assert.ok(refused.length > 0, "nothing was refused");
  assert.ok(served.length > 0, "nothing was served");
  for (const r of refused) {
    assert.ok(r.reason instanceof OpenAI.RateLimitError, String(r.reason));
    assert.equal(r.reason.status, 429);
  }
  for (const r of served) assert.equal(r.value.choices[0].finish_reason, "length");
});

test("cancelling a stream stops the generation", async () => {
  const controller = new AbortController();
  const stream = await client.chat.completions.create({ model: "scripted", stream: true, messages: [{ role: "user", content: "slow cancel me" }] }, { signal: controller.signal });
  let chunks = 0;
  try {
    for await (const _ of stream) {
      if (++chunks === 3) controller.abort();
    }
  } catch (e) {
    assert.ok(e.name === "AbortError" || e instanceof OpenAI.APIUserAbortError, String(e));
  }
  assert.ok(chunks < 50, `${chunks} chunks arrived after the abort`); // the whole reply is 401 tokens
  // the server is free again soon: a quick request is answered
  const r = await client.chat.completions.create({ model: "scripted", messages: [{ role: "user", content: "after" }] });
  assert.equal(r.choices[0].message.content, echo("after"));
});

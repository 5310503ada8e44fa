// The Vercel AI SDK (ai + @ai-sdk/openai) and LangChain's @langchain/openai against a running
// qwen-tune server (started by the Go test TestAISDKAndLangChain with the scripted test
// engine): QT_BASE_URL, QT_API_KEY. Each library is used as its documentation shows.
import { test } from "node:test";
import assert from "node:assert/strict";
import { generateText, streamText, generateObject, streamObject, tool } from "ai";
import { createOpenAI } from "@ai-sdk/openai";
import { ChatOpenAI } from "@langchain/openai";
import { z } from "zod";

const baseURL = process.env.QT_BASE_URL + "/v1";
const apiKey = process.env.QT_API_KEY;
const vercel = createOpenAI({ baseURL, apiKey }).chat("scripted");
const langchain = new ChatOpenAI({ model: "scripted", apiKey, configuration: { baseURL }, maxRetries: 0 });

const recipe = z.object({
  name: z.string(),
  minutes: z.number().int(),
  course: z.enum(["starter", "main", "dessert"]),
  ingredients: z.array(z.string()).min(1).max(3),
});
const pancakes = { name: "Pancakes", minutes: 20, course: "dessert", ingredients: ["flour", "milk"] };
const tools = {
  get_weather: tool({ description: "Weather of a city.", inputSchema: z.object({ city: z.string() }) }),
  get_time: tool({ description: "The time in a zone.", inputSchema: z.object({ zone: z.enum(["UTC", "CET"]), h24: z.boolean() }) }),
};

test("AI SDK: generateText and streamText", async () => {
  const { text, finishReason, usage } = await generateText({ model: vercel, prompt: "Hello" });
  assert.match(text, /^You said: Hello/);
  assert.equal(finishReason, "stop");
  assert.ok(usage.outputTokens > 0);
  const result = streamText({ model: vercel, system: "Be brief.", prompt: "Hi there" });
  let streamed = "";
  for await (const part of result.textStream) streamed += part;
  assert.match(streamed, /^You said: Hi there/);
  assert.equal(await result.finishReason, "stop");
});

test("AI SDK: toolChoice required and a named tool", async () => {
  // the scripted model answers "chat only" in plain text: the server must call anyway
  const required = await generateText({ model: vercel, tools, toolChoice: "required", prompt: "chat only please" });
  assert.equal(required.toolCalls.length, 1);
  const call = required.toolCalls[0];
  assert.ok(call.toolName in tools, call.toolName);
  tools[call.toolName].inputSchema.parse(call.input);
  const named = await generateText({ model: vercel, tools, toolChoice: { type: "tool", toolName: "get_time" }, prompt: "What is the weather in Paris?" });
  assert.equal(named.toolCalls[0].toolName, "get_time");
  tools.get_time.inputSchema.parse(named.toolCalls[0].input);
  const auto = await generateText({ model: vercel, tools, prompt: "What is the weather in Paris?" });
  assert.deepEqual(auto.toolCalls.map((c) => [c.toolName, c.input]), [["get_weather", { city: "Paris" }]]);
  const streamed = streamText({ model: vercel, tools, toolChoice: "required", prompt: "chat only" });
  const calls = await streamed.toolCalls;
  assert.equal(calls.length, 1);
  assert.equal(await streamed.finishReason, "tool-calls");
});

test("AI SDK: generateObject and streamObject with a Zod schema", async () => {
  const { object } = await generateObject({ model: vercel, schema: recipe, prompt: "a recipe please" });
  assert.deepEqual(object, pancakes);
  // off the model's own path the reply still parses and validates
  const forced = await generateObject({ model: vercel, schema: recipe, prompt: "Hello" });
  recipe.parse(forced.object);
  const stream = streamObject({ model: vercel, schema: recipe, prompt: "a recipe please" });
  let partials = 0;
  for await (const _ of stream.partialObjectStream) partials++;
  assert.deepEqual(await stream.object, pancakes);
  assert.ok(partials > 1, `${partials} partial objects`);
});

test("AI SDK: logprobs", async () => {
  const r = await generateText({ model: vercel, prompt: "Hi", providerOptions: { openai: { logprobs: 2 } } });
  const lp = r.providerMetadata?.openai?.logprobs;
  assert.ok(Array.isArray(lp) && lp.length > 0, JSON.stringify(r.providerMetadata));
  assert.equal(lp.map((t) => t.token).join(""), r.text);
  assert.equal(lp[0].top_logprobs.length, 2);
});

test("LangChain: invoke, stream and logprobs", async () => {
  const r = await langchain.invoke([["system", "Be brief."], ["human", "Hello"]]);
  assert.match(r.content, /^You said: Hello/);
  let streamed = "";
  for await (const chunk of await langchain.stream("Hi there")) streamed += chunk.content;
  assert.match(streamed, /^You said: Hi there/);
  const withLogprobs = new ChatOpenAI({ model: "scripted", apiKey, configuration: { baseURL }, maxRetries: 0, logprobs: true, topLogprobs: 3 });
  const l = await withLogprobs.invoke("Hi");
  const content = l.response_metadata.logprobs.content;
  assert.equal(content.map((t) => t.token).join(""), l.content);
  assert.equal(content[0].top_logprobs.length, 3);
});

test("LangChain: withStructuredOutput, by JSON schema and by function calling", async () => {
  for (const method of [undefined, "jsonSchema", "functionCalling", "jsonMode"]) {
    const structured = langchain.withStructuredOutput(recipe, method ? { method } : undefined);
    const prompt = method === "jsonMode" ? "Reply in JSON: a recipe please" : "a recipe please";
    const r = await structured.invoke(prompt);
    if (method === "functionCalling") recipe.parse(r); // a forced call: its arguments validate
    else assert.deepEqual(r, pancakes, `method ${method}`);
    // JSON mode promises JSON, not the schema: only the schema methods hold off their path
    if (method !== "jsonMode") recipe.parse(await structured.invoke("Hello"));
  }
});

test("LangChain: bindTools with tool_choice", async () => {
  const lcTools = [
    { type: "function", function: { name: "get_weather", description: "Weather of a city.", parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } } },
    { type: "function", function: { name: "get_time", description: "The time in a zone.", parameters: { type: "object", properties: { zone: { enum: ["UTC", "CET"] } }, required: ["zone"], additionalProperties: false } } },
  ];
  const any = await langchain.bindTools(lcTools, { tool_choice: "any" }).invoke("chat only please");
  assert.equal(any.tool_calls.length, 1);
  const named = await langchain.bindTools(lcTools, { tool_choice: "get_time" }).invoke("What is the weather in Paris?");
  assert.equal(named.tool_calls[0].name, "get_time");
  assert.ok(["UTC", "CET"].includes(named.tool_calls[0].args.zone));
  const auto = await langchain.bindTools(lcTools).invoke("What is the weather in Paris?");
  assert.deepEqual(auto.tool_calls.map((c) => [c.name, c.args]), [["get_weather", { city: "Paris" }]]);
});

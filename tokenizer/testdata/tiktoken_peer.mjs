// Peer benchmark: OpenAI's tiktoken (npm package "tiktoken", Rust core compiled to WASM)
// encoding the same text as BenchmarkEncodeQwen, with the same vocabulary and pattern.
//
//   npm install tiktoken@1.0.22 && node tiktoken_peer.mjs QWEN_TIKTOKEN MIXED_TXT
//
// NFC normalisation is included, as in Qwen's tokenizer and qwen-tune.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(process.cwd() + "/");
const { Tiktoken } = require("tiktoken/lite");

const [vocabPath, textPath] = process.argv.slice(2);
const pattern = String.raw`(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`;
const ranks = readFileSync(vocabPath, "utf8");
const ordinary = ranks.split("\n").filter((l) => l.length > 0).length;
const specials = { "<|endoftext|>": ordinary, "<|im_start|>": ordinary + 1, "<|im_end|>": ordinary + 2 };
for (let i = 0; i < 205; i++) specials[`<|extra_${i}|>`] = ordinary + 3 + i;
const enc = new Tiktoken(ranks, specials, pattern);

const text = readFileSync(textPath, "utf8").repeat(100);
const bytes = Buffer.byteLength(text);
function run() {
  return enc.encode(text.normalize("NFC"), "all");
}
let ids = run(); // warm up
const rounds = 10;
const t0 = process.hrtime.bigint();
for (let i = 0; i < rounds; i++) ids = run();
const secs = Number(process.hrtime.bigint() - t0) / 1e9;
console.log(JSON.stringify({ peer: "tiktoken (npm, WASM)", bytes, tokens: ids.length, mb_per_s: (bytes * rounds) / secs / 1e6 }));

function hostile(name, s) {
  const t = process.hrtime.bigint();
  const n = enc.encode(s.normalize("NFC"), "all").length;
  console.log(JSON.stringify({ peer: "tiktoken (npm, WASM)", input: name, tokens: n, seconds: Number(process.hrtime.bigint() - t) / 1e9 }));
}
hostile("1MB of <|endoftext|>", "<|endoftext|>".repeat(Math.floor((1 << 20) / 13)));
if (process.env.HOSTILE_SPACES) hostile("1MB of spaces", " ".repeat(1 << 20));

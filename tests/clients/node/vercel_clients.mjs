// The Vercel AI SDK against the router (tests/clients/test_vercel.py):
//   node vercel_clients.mjs PROVIDER SCENARIO BASE_URL MODEL
// PROVIDER: compatible (@ai-sdk/openai-compatible) | openai-chat (@ai-sdk/openai, .chat())
//           | openai-responses (@ai-sdk/openai's default, /v1/responses)
//           | anthropic (@ai-sdk/anthropic, the Messages endpoint)
// SCENARIO: text (streamText) | tool (generateText with a tool, two steps) |
//           structured (generateObject with a zod schema)
// Prints one JSON line: {"text", "tool_calls", "object"}. Any failure exits non-zero.
import { generateObject, generateText, stepCountIs, streamText, tool } from "ai";
import { createAnthropic } from "@ai-sdk/anthropic";
import { createOpenAI } from "@ai-sdk/openai";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { z } from "zod";

const [provider, scenario, base, modelName] = process.argv.slice(2);
const KEY = "sk-not-checked";

function model() {
  if (provider === "compatible") {
    return createOpenAICompatible({ name: "router", baseURL: `${base}/v1`, apiKey: KEY,
                                    supportsStructuredOutputs: true })(modelName);
  }
  if (provider === "openai-chat") {
    return createOpenAI({ baseURL: `${base}/v1`, apiKey: KEY }).chat(modelName);
  }
  if (provider === "openai-responses") {  // the default: the Responses API
    return createOpenAI({ baseURL: `${base}/v1`, apiKey: KEY, fetch: countingFetch })(modelName);
  }
  return createAnthropic({ baseURL: `${base}/v1`, apiKey: KEY })(modelName);
}

// With the Responses API the SDK defaults to `store: true` and then refers to its earlier
// output items by `item_reference` (which the router resolves from what it remembered):
// the requests it sends are counted here, so the test sees that it did.
let itemReferences = 0;
async function countingFetch(url, init) {
  if (typeof init?.body === "string" && String(url).endsWith("/responses")) {
    const body = JSON.parse(init.body);
    for (const item of body.input ?? []) if (item.type === "item_reference") itemReferences++;
  }
  return fetch(url, init);
}
const calls = [];
const weather = tool({
  description: "Current weather for a city",
  inputSchema: z.object({ city: z.string() }),
  execute: async ({ city }) => {
    calls.push({ city });
    return `sunny and 21 degrees in ${city}`;
  },
});
const Weather = z.object({
  city: z.string(),
  unit: z.enum(["celsius", "fahrenheit"]),
  temperature: z.number(),
  sunny: z.boolean(),
});

async function main() {
  if (scenario === "text") {
    const result = streamText({ model: model(), prompt: "Say hello", maxRetries: 0 });
    let text = "";
    for await (const piece of result.textStream) text += piece;
    return { text };
  }
  if (scenario === "tool") {
    const result = await generateText({
      model: model(), prompt: "What is the weather in Paris?", tools: { get_weather: weather },
      stopWhen: stepCountIs(3), maxRetries: 0,
    });
    return { text: result.text, tool_calls: calls, item_references: itemReferences };
  }
  const result = await generateObject({
    model: model(), schema: Weather, schemaName: "Weather",
    prompt: "Describe the weather in Oslo.", maxRetries: 0,
  });
  return { object: result.object };
}

main().then(
  (out) => { console.log(JSON.stringify(out)); },
  (err) => { console.error(err?.stack ?? String(err)); if (err?.responseBody) console.error(err.responseBody); process.exit(1); },
);

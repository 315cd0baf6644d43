// Drives Switchboard with the Vercel AI SDK's default OpenAI provider (the Responses API), as a
// Node user would: generateText, then streamText. Prints one JSON line for the Python test.
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, streamText, tool, stepCountIs } from "ai";
import { z } from "zod";

const [baseURL, model] = process.argv.slice(2);
const openai = createOpenAI({ baseURL, apiKey: "sk-node-client" });

const generated = await generateText({ model: openai(model), prompt: "Hello from Node" });

const streamed = streamText({ model: openai(model), prompt: "Streaming from Node" });
let text = "";
for await (const delta of streamed.textStream) text += delta;
const usage = await streamed.usage;

const weather = tool({
  description: "The weather in a city",
  inputSchema: z.object({ city: z.string() }),
  execute: async ({ city }) => `Sunny in ${city}`,
});
const agent = await generateText({
  model: openai(model),
  prompt: "Weather in Paris?",
  tools: { weather },
  stopWhen: stepCountIs(3),
});

console.log(JSON.stringify({
  generated: generated.text,
  generatedUsage: generated.usage,
  streamed: text,
  streamedUsage: usage,
  agentText: agent.text,
  agentSteps: agent.steps.length,
  agentToolResults: agent.steps.flatMap((s) => s.toolResults.map((r) => r.output)),
}));

// The Vercel AI SDK (`ai` with `@ai-sdk/openai`'s default provider, the OpenAI Responses API) through keyrelay.
//
// Config: one JSON object as argv[2], or on stdin without an argument:
//   {"baseURL": "http://127.0.0.1:PORT/v1", "apiKey": "kr_live_...", "model": "oa-model", "mode": "generate"|"stream"}
// Runs generateText or streamText with one tool (get_weather, executed here) and a multi-step stop condition, so
// that the tool result goes back to the model and the model answers. Prints one JSON line with what happened;
// on failure prints one JSON line {"error": ...} and exits 1. Every HTTP exchange the SDK made is in "requests"
// (method, URL, JSON body, status, x-request-id), on success and on failure.
//
// Used by tests/integration/protocols/test_vercel_ai_sdk.py.

import { createOpenAI } from "@ai-sdk/openai";
import { generateText, isStepCount, streamText, tool } from "ai";
import { z } from "zod";

const TOOL_RESULT = "sunny and 21 C";
const PROMPT = "What is the weather in Paris for the next 2 days? Use the tool.";
const MAX_STEPS = 5;

async function readConfig() {
  if (process.argv.length > 2) return JSON.parse(process.argv[2]);
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

// A fetch that records each exchange (the SDK's own requests, untouched) for the report.
function recordingFetch(requests) {
  return async (input, init = {}) => {
    const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
    let body = init.body;
    if (typeof body === "string") {
      try {
        body = JSON.parse(body);
      } catch {
        // keep the text
      }
    } else if (body !== undefined) {
      body = `<${typeof body}>`;
    }
    const exchange = { method: init.method ?? "GET", url, body };
    requests.push(exchange);
    const response = await fetch(input, init);
    exchange.status = response.status;
    exchange.requestId = response.headers.get("x-request-id");
    exchange.contentType = response.headers.get("content-type");
    return response;
  };
}

function weatherTool(executed) {
  return tool({
    description: "The weather in a city for some days.",
    inputSchema: z.object({
      city: z.string().describe("The city"),
      days: z.number().describe("How many days"),
    }),
    execute: async (input) => {
      executed.push(input);
      return TOOL_RESULT;
    },
  });
}

function describeSteps(steps) {
  return steps.map((step) => ({
    finishReason: step.finishReason,
    rawFinishReason: step.rawFinishReason,
    text: step.text,
    toolCalls: step.toolCalls.map((c) => ({ id: c.toolCallId, name: c.toolName, input: c.input })),
    toolResults: step.toolResults.map((r) => ({ id: r.toolCallId, name: r.toolName, output: r.output })),
    usage: step.usage,
    responseId: step.response?.id,
    modelId: step.response?.modelId,
    warnings: step.warnings ?? [],
  }));
}

function summary(steps, extra) {
  const all = describeSteps(steps);
  return {
    steps: all.length,
    toolCalls: all.flatMap((s) => s.toolCalls),
    toolResults: all.flatMap((s) => s.toolResults),
    stepDetails: all,
    ...extra,
  };
}

async function run(config, requests, executed) {
  const provider = createOpenAI({ baseURL: config.baseURL, apiKey: config.apiKey, fetch: recordingFetch(requests) });
  const options = {
    model: provider(config.model),
    tools: { get_weather: weatherTool(executed) },
    stopWhen: isStepCount(MAX_STEPS),
    prompt: PROMPT,
    maxRetries: 0,
  };
  if (config.mode === "generate") {
    const result = await generateText(options);
    return summary(result.steps, {
      text: result.text,
      finishReason: result.finishReason,
      usage: result.usage,
      totalUsage: result.totalUsage,
    });
  }
  if (config.mode === "stream") {
    const errors = [];
    const result = streamText({ ...options, onError: ({ error }) => errors.push(error) });
    const partTypes = [];
    for await (const part of result.fullStream) {
      partTypes.push(part.type);
      if (part.type === "error") errors.push(part.error);
    }
    if (errors.length) throw errors[0];
    return summary(await result.steps, {
      text: await result.text,
      finishReason: await result.finishReason,
      usage: await result.usage,
      totalUsage: await result.totalUsage,
      partTypes,
    });
  }
  throw new Error(`unknown mode ${JSON.stringify(config.mode)} (generate or stream)`);
}

function describeError(error) {
  if (!(error instanceof Error)) return { message: String(error) };
  const out = { name: error.name, message: error.message };
  for (const field of ["statusCode", "url", "responseBody", "value", "text"]) {
    if (error[field] !== undefined) out[field] = error[field];
  }
  if (error.cause !== undefined) out.cause = describeError(error.cause);
  if (Array.isArray(error.errors)) out.errors = error.errors.map(describeError);
  return out;
}

const requests = [];
const executed = [];
try {
  const config = await readConfig();
  const result = await run(config, requests, executed);
  process.stdout.write(`${JSON.stringify({ ok: true, mode: config.mode, ...result, executed, requests })}\n`);
} catch (error) {
  process.stdout.write(`${JSON.stringify({ ok: false, error: describeError(error), executed, requests })}\n`);
  process.stderr.write(`${error?.stack ?? error}\n`);
  process.exitCode = 1;
}

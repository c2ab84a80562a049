// The playground's settings form → the chat request's parameters: sampling, the
// JSON-schema response format and the sample tool.

import { byId } from "./dom.js";

/** A valid example schema, bounded so that a small model cannot ramble inside it. */
export const EXAMPLE_SCHEMA = {
  type: "object",
  properties: {
    city: { type: "string", maxLength: 40 },
    country: { type: "string", maxLength: 40 },
    population_millions: { type: "number", minimum: 0, maximum: 100 },
  },
  required: ["city", "country"],
  additionalProperties: false,
};

export const SAMPLE_TOOL = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Current weather in a city.",
    parameters: {
      type: "object",
      properties: {
        city: { type: "string", maxLength: 40 },
        unit: { type: "string", enum: ["celsius", "fahrenheit"] },
      },
      required: ["city"],
    },
  },
};

/** Wire the toggles: each shows its own extra fields. */
export function initOptions() {
  const schema = byId("chat-schema");
  schema.value = JSON.stringify(EXAMPLE_SCHEMA, null, 2);
  byId("chat-json").addEventListener("change", (event) => {
    byId("chat-schema-label").hidden = !event.target.checked;
  });
  byId("chat-tool").addEventListener("change", (event) => {
    byId("chat-tool-choice-label").hidden = !event.target.checked;
  });
  schema.addEventListener("input", () => {
    byId("chat-schema-error").textContent = "";
  });
}

function numberField(id) {
  const raw = byId(id).value.trim();
  return raw === "" ? null : Number(raw);
}

/** The system prompt, or null. */
export function systemPrompt() {
  return byId("chat-system").value.trim() || null;
}

/** Whether answers are JSON (pretty-printed when they parse). */
export function jsonMode() {
  return byId("chat-json").checked;
}

/**
 * The request's parameters other than messages; throws Error (shown next to the schema
 * editor) when the schema is not JSON.
 */
export function requestOptions() {
  const options = { model: byId("chat-model").value };
  const temperature = numberField("chat-temperature");
  const maxTokens = numberField("chat-max-tokens");
  const seed = numberField("chat-seed");
  if (temperature !== null) options.temperature = temperature;
  if (maxTokens !== null) options.max_tokens = maxTokens;
  if (seed !== null) options.seed = seed;
  if (jsonMode()) {
    let schema;
    try {
      schema = JSON.parse(byId("chat-schema").value);
    } catch (err) {
      byId("chat-schema-error").textContent = `The schema is not JSON: ${err.message}`;
      throw new Error("The schema is not JSON.");
    }
    options.response_format = {
      type: "json_schema", json_schema: { name: "console_schema", schema, strict: true } };
  }
  if (byId("chat-tool").checked) {
    options.tools = [SAMPLE_TOOL];
    options.tool_choice = byId("chat-tool-choice").value;
  }
  return options;
}

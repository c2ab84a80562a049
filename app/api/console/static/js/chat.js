// The chat playground: a multi-turn conversation streamed token by token. Stop aborts the
// fetch, which closes the connection; the server cancels the request when it notices.

import { ApiError, stream } from "./api.js";
import { AssistantMessage, userItem } from "./chat_message.js";
import { initOptions, jsonMode, requestOptions, systemPrompt } from "./chat_options.js";
import { byId, h } from "./dom.js";
import { fillModelPicker } from "./models.js";

const history = []; // user, assistant and tool messages; the system prompt is added per request
let controller = null; // AbortController of the running request

/** Fill the model picker with the chat-capable models, the default one selected. */
export function setChatModels(models) {
  fillModelPicker(byId("chat-model"), models, ["chat"], "default");
}

export function initChat() {
  initOptions();
  const input = byId("chat-input");
  byId("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || controller) return;
    input.value = "";
    history.push({ role: "user", content: text });
    byId("chat-log").append(userItem(text));
    generate();
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      byId("chat-form").requestSubmit();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && controller) stop();
  });
  byId("chat-stop").addEventListener("click", stop);
  byId("chat-clear").addEventListener("click", () => {
    stop();
    history.length = 0;
    byId("chat-log").replaceChildren();
    input.focus();
  });
}

/** Keep the newest text in view inside the log (the page itself does not scroll). */
function scrollToEnd() {
  const log = byId("chat-log");
  log.scrollTop = log.scrollHeight;
}

function stop() {
  if (controller) controller.abort();
}

function setRunning(running) {
  byId("chat-send").disabled = running;
  byId("chat-stop").disabled = !running;
}

/** Run one assistant turn on the current history. */
async function generate() {
  let options;
  try {
    options = requestOptions();
  } catch {
    history.pop(); // the user message is kept in the log but not sent
    return;
  }
  const system = systemPrompt();
  const messages = system ? [{ role: "system", content: system }, ...history] : [...history];
  const message = new AssistantMessage(options.model);
  const log = byId("chat-log");
  log.append(message.el);
  scrollToEnd();
  controller = new AbortController();
  setRunning(true);
  const numbers = { requestId: null, finishReason: null };
  const timing = { started: performance.now(), first: null, last: null, pieces: 0 };
  let usage = null;
  try {
    await stream("/v1/chat/completions",
      { ...options, messages, stream: true, stream_options: { include_usage: true } },
      {
        signal: controller.signal,
        onOpen: (response) => { numbers.requestId = response.headers.get("x-request-id"); },
        onEvent: (chunk) => {
          for (const choice of chunk.choices || []) {
            const delta = choice.delta || {};
            if (delta.content || delta.tool_calls || delta.reasoning_content
                || delta.reasoning) {
              timing.last = performance.now();
              timing.first ??= timing.last;
              timing.pieces += 1;
            }
            message.addDelta(delta);
            if (choice.finish_reason) numbers.finishReason = choice.finish_reason;
          }
          if (chunk.usage) usage = chunk.usage;
          if (chunk.htdi?.requestId) numbers.requestId = chunk.htdi.requestId;
          scrollToEnd();
        },
      });
    if (jsonMode()) message.showJSON();
    history.push(message.historyMessage());
    if (message.toolCalls.length) offerToolResult(message);
  } catch (err) {
    if (err.name === "AbortError") {
      numbers.finishReason = "stopped";
      history.push(message.historyMessage());
    } else {
      message.fail(err instanceof ApiError ? err.message : String(err));
      numbers.finishReason = "error";
      if (err.requestId) numbers.requestId = err.requestId;
      history.pop();
    }
  } finally {
    message.finish({ ...numbers, ...turnNumbers(timing, usage) });
    scrollToEnd();
    controller = null;
    setRunning(false);
  }
}

/**
 * Latency, TTFT and decode rate as this page saw them, tokens from the server's usage.
 * An answer that arrived in one piece (with tools the server holds text back until the
 * choice ends) has no TTFT to show; its rate is taken over the whole request.
 */
function turnNumbers(timing, usage) {
  const latencyMs = performance.now() - timing.started;
  const out = { latencyMs, ttftMs: null, tokensPerSecond: null, completionTokens: null,
                cachedTokens: null };
  const tokens = usage ? usage.completion_tokens : null;
  if (usage) {
    out.completionTokens = tokens;
    out.cachedTokens = usage.prompt_tokens_details?.cached_tokens ?? 0;
  }
  if (timing.pieces >= 2) {
    out.ttftMs = timing.first - timing.started;
    if (tokens > 1 && timing.last > timing.first) {
      out.tokensPerSecond = (tokens - 1) / ((timing.last - timing.first) / 1000);
    }
  } else if (tokens > 0) {
    out.tokensPerSecond = tokens / (latencyMs / 1000);
  }
  return out;
}

/** After a tool call: let the user answer as the tool, then continue the turn. */
function offerToolResult(message) {
  const inputs = message.toolCalls.map((call) => h("input", {
    type: "text", "aria-label": `Result of ${call.function.name}`,
    placeholder: `Result of ${call.function.name}, e.g. {"temperature": 21}`,
  }));
  const form = h("form", { class: "tool-result" },
    ...inputs, h("button", { type: "submit" }, "Send tool result"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (controller) return;
    message.toolCalls.forEach((call, i) => {
      history.push({ role: "tool", tool_call_id: call.id, content: inputs[i].value || "{}" });
    });
    form.remove();
    generate();
  });
  message.extra.append(form);
}

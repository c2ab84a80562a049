// One assistant turn in the conversation log: reasoning, tool calls and the answer are
// kept apart while the stream arrives, and the turn's numbers (request id, TTFT, tokens/s,
// cached tokens) are shown under it once it ends.

import { h } from "./dom.js";

/** Split raw model text into reasoning (<think>…</think>) and answer. */
export function splitReasoning(raw) {
  const open = raw.indexOf("<think>");
  const close = raw.indexOf("</think>");
  if (open >= 0 && open <= raw.search(/\S|$/) && (close < 0 || close > open)) {
    const start = open + "<think>".length;
    if (close < 0) return { reasoning: raw.slice(start), answer: "" };
    return { reasoning: raw.slice(start, close), answer: raw.slice(close + 8) };
  }
  if (close >= 0 && open < 0) {
    // templates that open the block in the prompt: only the closing tag is generated
    return { reasoning: raw.slice(0, close), answer: raw.slice(close + 8) };
  }
  return { reasoning: "", answer: raw };
}

/** A user's message in the log. */
export function userItem(text) {
  return h("li", { class: "msg user" }, h("span", { class: "who" }, "You"),
           h("div", { class: "answer" }, text));
}

export class AssistantMessage {
  constructor(model) {
    this.raw = ""; // content as generated, <think> blocks included
    this.reasoningField = ""; // reasoning sent in its own delta field
    this.toolCalls = []; // [{id, type, function: {name, arguments}}]
    this.reasoningText = h("pre", { class: "reasoning-text" });
    this.reasoning = h("details", { class: "reasoning", hidden: true },
                       h("summary", {}, "Reasoning"), this.reasoningText);
    this.tools = h("div", { class: "tool-calls", hidden: true });
    this.answer = h("div", { class: "answer", "aria-busy": "true" });
    this.stats = h("dl", { class: "stats" });
    this.el = h("li", { class: "msg assistant" },
                h("span", { class: "who" }, model), this.reasoning, this.tools, this.answer,
                this.stats);
    this.extra = h("div", { class: "after" });
    this.el.append(this.extra);
  }

  /** Apply one streamed choice delta. */
  addDelta(delta) {
    if (delta.reasoning_content || delta.reasoning) {
      this.reasoningField += delta.reasoning_content || delta.reasoning;
    }
    if (delta.content) this.raw += delta.content;
    for (const call of delta.tool_calls || []) this.addToolCall(call);
    this.render();
  }

  addToolCall(call) {
    const index = call.index ?? this.toolCalls.length;
    const known = this.toolCalls[index] ||= {
      id: call.id, type: "function", function: { name: "", arguments: "" } };
    if (call.id) known.id = call.id;
    if (call.function?.name) known.function.name += call.function.name;
    if (call.function?.arguments) known.function.arguments += call.function.arguments;
  }

  render() {
    const { reasoning, answer } = splitReasoning(this.raw);
    const thinking = (this.reasoningField + reasoning).trim();
    this.reasoning.hidden = !thinking;
    this.reasoningText.textContent = thinking;
    this.answer.textContent = answer;
    this.tools.hidden = this.toolCalls.length === 0;
    this.tools.replaceChildren(...this.toolCalls.map((call) => h(
      "div", { class: "tool-call" },
      h("span", { class: "badge" }, "tool call"), " ",
      h("code", {}, `${call.function.name}(${prettyArguments(call.function.arguments)})`),
    )));
  }

  /** The answer as JSON, pretty-printed, when it parses (JSON-schema mode). */
  showJSON() {
    try {
      const text = splitReasoning(this.raw).answer;
      this.answer.textContent = JSON.stringify(JSON.parse(text), null, 2);
      this.answer.classList.add("json");
    } catch {
      this.answer.classList.add("json-invalid");
    }
  }

  /** Numbers shown under the turn; null values are left out. */
  finish(numbers) {
    this.answer.removeAttribute("aria-busy");
    const ms = (value) => (value === null ? null : `${Math.round(value)} ms`);
    const items = [
      ["request id", numbers.requestId],
      ["TTFT", ms(numbers.ttftMs)],
      ["latency", ms(numbers.latencyMs)],
      ["tokens", numbers.completionTokens],
      ["tokens/s", numbers.tokensPerSecond === null ? null : numbers.tokensPerSecond.toFixed(1)],
      ["cached tokens", numbers.cachedTokens],
      ["finish", numbers.finishReason],
    ];
    this.stats.replaceChildren(...items.filter(([, v]) => v !== null && v !== undefined)
      .map(([k, v]) => h("div", { class: "stat" },
                         h("dt", {}, k), h("dd", { "data-stat": k }, String(v)))));
    if (!this.raw && !this.toolCalls.length && !this.reasoningField) {
      this.answer.textContent = numbers.finishReason === "stopped" ? "(stopped)" : "(empty)";
      this.answer.classList.add("muted");
    }
  }

  fail(message) {
    this.answer.removeAttribute("aria-busy");
    this.extra.append(h("p", { class: "error-text", role: "alert" }, message));
  }

  /** This turn as a message for the next request's history. */
  historyMessage() {
    const content = splitReasoning(this.raw).answer;
    if (this.toolCalls.length) {
      return { role: "assistant", content: content || null, tool_calls: this.toolCalls };
    }
    return { role: "assistant", content };
  }
}

function prettyArguments(text) {
  try {
    return JSON.stringify(JSON.parse(text));
  } catch {
    return text;
  }
}

// Talking to the server: the API key (asked once, kept in this tab's session storage),
// JSON calls with OpenAI error envelopes turned into exceptions, and SSE streams read
// from fetch so that aborting the fetch closes the connection (the server then cancels).

const KEY_STORAGE = "mlx-console-api-key";

/** An error the server answered with (OpenAI envelope) or a network failure. */
export class ApiError extends Error {
  constructor(message, status = 0, code = null, requestId = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.requestId = requestId;
  }
}

/** What to show for a failed call: the server's message and, when known, its request id. */
export function failureText(err) {
  if (!(err instanceof ApiError)) return err instanceof Error ? err.message : String(err);
  return err.requestId ? `${err.message} (request ${err.requestId})` : err.message;
}

let keyPrompt = null; // one pending prompt shared by every caller that got a 401

// Escape would close the dialog and leave the page without a key, where nothing works.
document.getElementById("key-dialog").addEventListener("cancel", (e) => e.preventDefault());

function storedKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

/** Show the key dialog and resolve with the key the user typed. */
function askForKey(wrong) {
  if (keyPrompt) return keyPrompt;
  const dialog = document.getElementById("key-dialog");
  const form = document.getElementById("key-form");
  const input = document.getElementById("key-input");
  document.getElementById("key-error").textContent = wrong
    ? "The server refused that key. Try again." : "";
  keyPrompt = new Promise((resolve) => {
    const done = (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      form.removeEventListener("submit", done);
      sessionStorage.setItem(KEY_STORAGE, key);
      input.value = "";
      dialog.close();
      keyPrompt = null;
      resolve(key);
    };
    form.addEventListener("submit", done);
    dialog.showModal();
    input.focus();
  });
  return keyPrompt;
}

function headers(extra = {}) {
  const out = { ...extra };
  const key = storedKey();
  if (key) out.Authorization = `Bearer ${key}`;
  return out;
}

async function errorFrom(response) {
  const requestId = response.headers.get("x-request-id");
  let message = `${response.status} ${response.statusText}`;
  let code = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = body.error.message || message;
      code = body.error.code || null;
    }
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(message, response.status, code, requestId);
}

/**
 * fetch() with the key; on 401 asks for a key and retries, as often as the user tries.
 * `body` is sent as JSON, or as it is when it is a FormData (uploads). Other failures
 * become ApiError.
 */
export async function request(path, { method = "GET", body, signal, accept } = {}) {
  let wrong = false;
  for (;;) {
    const init = { method, signal, headers: headers(accept ? { Accept: accept } : {}) };
    if (body instanceof FormData) {
      init.body = body; // multipart: the browser writes the Content-Type with its boundary
    } else if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(`The server cannot be reached (${err.message}).`);
    }
    if (response.status === 401) {
      if (storedKey()) sessionStorage.removeItem(KEY_STORAGE);
      await askForKey(wrong || Boolean(init.headers.Authorization));
      wrong = true;
      continue;
    }
    if (!response.ok) throw await errorFrom(response);
    return response;
  }
}

/** GET or POST JSON and return the parsed body. */
export async function getJSON(path, options = {}) {
  const response = await request(path, options);
  return response.json();
}

/**
 * POST a streaming request and call onEvent(json) for every SSE data event until [DONE].
 * Returns the response (its headers carry X-Request-ID). Aborting `signal` stops reading
 * and closes the connection.
 */
export async function stream(path, body, { signal, onOpen, onEvent }) {
  const response = await request(path, { method: "POST", body, signal,
                                         accept: "text/event-stream" });
  if (onOpen) onOpen(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue; // ": keep-alive" comments
        const data = line.slice(6);
        if (data === "[DONE]") return response;
        const event = JSON.parse(data);
        if (event.error) {
          throw new ApiError(event.error.message, 0, event.error.code,
                             event.htdi ? event.htdi.requestId : null);
        }
        onEvent(event);
      }
    }
  }
  return response;
}

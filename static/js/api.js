// Talking to the server: JSON requests that carry the page's CSRF token, error sentences from the server's
// answers, and a reader for the reply streams (text/event-stream).

// Every state-changing request carries the page's CSRF token (checked by Flask-WTF).
export const CSRF_TOKEN = document.querySelector('meta[name="csrf-token"]').content;

// A JSON request; resolves to the answer's JSON (null for 204), rejects with the server's sentence.
export async function api(method, path, body) {
  const options = { method, headers: { "X-CSRFToken": CSRF_TOKEN } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  const response = await reach(path, options);
  if (!response.ok) throw new Error(await errorText(response));
  return response.status === 204 ? null : response.json();
}

export const UNREACHABLE = "The server could not be reached; check your connection (and that the server is running), " +
  "then try again.";

// fetch, with a sentence in the page's voice when the request never got an answer (the browser says only
// "Failed to fetch"); a request stopped on purpose stays an AbortError.
export async function reach(path, options) {
  try {
    return await fetch(path, options);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new Error(UNREACHABLE);
  }
}

// The sentence in an error answer ({"error": {"message"}}), or one that names the status.
export async function errorText(response) {
  try {
    const data = await response.json();
    if (data && data.error && data.error.message) return data.error.message;
  } catch (e) { /* not JSON */ }
  return `The server answered ${response.status}; try again.`;
}

// Reads a text/event-stream body and calls handle(event, data) for each event.
export async function readEvents(response, handle) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) !== -1) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) handle(event, JSON.parse(data));
    }
  }
}

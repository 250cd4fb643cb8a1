// The page of `bigmodels serve`: one panel per endpoint the served model answers (GET v1/models), each calling the
// server's own HTTP API. No build step, no external resources. Paths are relative, so the page also works behind a
// proxy that serves it under a prefix.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "bigmodels-serve-api-key";

class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

// An answer that is not 2xx becomes an ApiError carrying the server's OpenAI-style message.
async function failure(response) {
  let message = response.statusText || "no message";
  let code = null;
  try {
    const body = await response.json();
    message = body.error?.message ?? JSON.stringify(body);
    code = body.error?.code ?? null;
  } catch {
    // not JSON: keep the status text
  }
  return new ApiError(response.status, message, code);
}

async function call(path, body, signal) {
  let response;
  try {
    response = await fetch(path, {
      method: body === undefined ? "GET" : "POST",
      headers: headers(),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(null, `could not reach the server (${e.message}); is it still running?`, null);
  }
  if (!response.ok) throw await failure(response);
  return response;
}

async function post(path, body) {
  return (await call(path, body)).json();
}

function showError(element, error) {
  const status = error instanceof ApiError && error.status ? `${error.status} · ` : "";
  element.textContent = `${status}${error.message}`;
  element.hidden = false;
}

function clearError(element) {
  element.textContent = "";
  element.hidden = true;
}

// A number field's value, or an error naming the field (the server checks the ranges and says so).
function number(id, name, { optional = false } = {}) {
  const input = $(id);
  if (optional && input.value.trim() === "") return undefined;
  const value = input.valueAsNumber;
  if (!Number.isFinite(value)) throw new ApiError(null, `${name} must be a number`, null);
  return value;
}

// Submitting a form runs `work` once at a time; its button is disabled meanwhile.
function onSubmit(formId, buttonId, errorId, work) {
  $(formId).addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = $(buttonId);
    if (button.disabled) return;
    button.disabled = true;
    clearError($(errorId));
    try {
      await work();
    } catch (e) {
      showError($(errorId), e);
    } finally {
      button.disabled = false;
    }
  });
}

// Ranked rows: a label, a bar of `fraction` of the width, the value.
function bars(listId, rows) {
  const list = $(listId);
  list.replaceChildren(
    ...rows.map(({ label, value, fraction }) => {
      const item = document.createElement("li");
      const name = document.createElement("span");
      name.className = "label";
      name.textContent = label;
      const bar = document.createElement("span");
      bar.className = "bar";
      const fill = document.createElement("span");
      fill.style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`;
      bar.append(fill);
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = value.toFixed(3);
      item.append(name, bar, score);
      return item;
    }),
  );
}

// ------------------------------------------------------------------------------------------- the model

let imageClassifier = false;

async function connect() {
  const model = $("model");
  model.dataset.state = "loading";
  clearError($("connect-error"));
  for (const panel of document.querySelectorAll(".panel")) panel.hidden = true;
  $("no-panels").hidden = true;
  try {
    const card = (await (await call("v1/models")).json()).data[0];
    $("model-name").textContent = card.id;
    const context = card.context_length ? ` · context ${card.context_length} tokens` : "";
    $("model-meta").textContent = `${card.task}${context}`;
    document.title = `${card.id} · bigmodels serve`;
    const answers = new Set(card.endpoints);
    $("panel-generate").hidden = !answers.has("/v1/completions");
    $("panel-classify").hidden = !answers.has("/v1/classify");
    $("panel-similarity").hidden = !answers.has("/v1/embeddings");
    $("panel-translate").hidden = !answers.has("/v1/translate");
    $("no-panels").hidden = [...document.querySelectorAll(".panel")].some((p) => !p.hidden);
    imageClassifier = card.task.includes("image");
    $("cls-text").hidden = imageClassifier;
    $("cls-image-row").hidden = !imageClassifier;
    explainMethods(card.explain_methods ?? []);
    if (card.context_length) $("gen-max-tokens").max = card.context_length;
    model.dataset.state = "ready";
  } catch (e) {
    $("model-name").textContent = "not connected";
    $("model-meta").textContent = "";
    const hint = e instanceof ApiError && e.status === 401 ? " (enter the server's API key above and press Connect)" : "";
    showError($("connect-error"), new ApiError(e.status, `${e.message}${hint}`, e.code));
    model.dataset.state = "error";
  }
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORE, $("api-key").value.trim());
  connect();
});

// -------------------------------------------------------------------------------------------- generate

let stopper = null;

function genState(state, text) {
  const status = $("gen-status");
  status.dataset.state = state;
  status.textContent = text;
  $("gen-output").classList.toggle("streaming", state === "streaming");
}

// One server-sent event's data ("data:" lines joined), or null for a comment or an empty event.
function eventData(event) {
  const lines = event.split("\n").filter((line) => line.startsWith("data:"));
  if (!lines.length) return null;
  return lines.map((line) => line.slice(line.startsWith("data: ") ? 6 : 5)).join("\n");
}

async function generate() {
  const body = {
    prompt: $("gen-prompt").value,
    max_tokens: number("gen-max-tokens", "max tokens"),
    temperature: number("gen-temperature", "temperature"),
    top_p: number("gen-top-p", "top p"),
    stream: true,
    stream_options: { include_usage: true },
  };
  const seed = number("gen-seed", "seed", { optional: true });
  if (seed !== undefined) body.seed = seed;
  const output = $("gen-output");
  const completion = $("gen-completion");
  $("gen-echo").textContent = body.prompt;
  completion.replaceChildren();
  output.dataset.chunks = "0";
  stopper = new AbortController();
  $("gen-stop").disabled = false;
  genState("streaming", "generating…");
  const start = performance.now();
  let finish = null;
  let usage = null;
  let chunks = 0;
  try {
    const response = await call("v1/completions", body, stopper.signal);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let done = false;
    while (!done) {
      const { value, done: ended } = await reader.read();
      if (ended) break;
      buffer += value.replaceAll("\r\n", "\n");
      let cut;
      while (!done && (cut = buffer.indexOf("\n\n")) >= 0) {
        const data = eventData(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
        if (data === null) continue;
        if (data === "[DONE]") {
          done = true;
          break;
        }
        const message = JSON.parse(data);
        if (message.error) throw new ApiError(null, message.error.message, message.error.code);
        for (const choice of message.choices ?? []) {
          if (choice.index !== 0) continue;
          if (choice.text) {
            completion.append(choice.text);
            output.dataset.chunks = String(++chunks);
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
        if (message.usage) usage = message.usage;
      }
    }
    if (!done) throw new ApiError(null, "the stream ended before its [DONE] event; the server may have stopped", null);
    const seconds = (performance.now() - start) / 1000;
    const tokens = usage ? usage.completion_tokens : chunks;
    const why = finish === "stop" ? "a stop was met" : finish === "length" ? "max tokens reached" : finish;
    genState("done", `${tokens} tokens in ${seconds.toFixed(2)} s (${(tokens / seconds).toFixed(1)} tokens/s) · ${why}`);
  } catch (e) {
    if (e.name === "AbortError") {
      genState("stopped", `stopped after ${chunks} pieces`);
      return;
    }
    genState("error", "");
    throw e;
  } finally {
    $("gen-stop").disabled = true;
    stopper = null;
  }
}

onSubmit("gen-form", "gen-run", "gen-error", generate);
$("gen-stop").addEventListener("click", () => stopper?.abort());
$("gen-prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("gen-form").requestSubmit();
});

// -------------------------------------------------------------------------------------------- classify

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new ApiError(null, `could not read ${file.name}: ${reader.error}`, null));
    reader.readAsDataURL(file);
  });
}

$("cls-image").addEventListener("change", async () => {
  const file = $("cls-image").files[0];
  const preview = $("cls-preview");
  clearExplanation();
  preview.hidden = !file;
  if (file) preview.src = await readFile(file);
});

onSubmit("cls-form", "cls-run", "cls-error", async () => {
  const results = $("cls-results");
  results.dataset.state = "running";
  const body = { top_k: number("cls-top-k", "top k") };
  if (imageClassifier) {
    const file = $("cls-image").files[0];
    if (!file) throw new ApiError(null, "choose an image file first", null);
    body.image = await readFile(file);
  } else {
    body.input = $("cls-text").value;
  }
  try {
    const answer = await post("v1/classify", body);
    bars("cls-results", answer.data[0].labels.map((l) => ({ label: l.label, value: l.score, fraction: l.score })));
    results.dataset.state = "done";
  } catch (e) {
    results.replaceChildren();
    results.dataset.state = "error";
    throw e;
  }
});

// ------------------------------------------------------------------------------------------- explain

const METHOD_NAMES = {
  saliency: "saliency",
  ig: "integrated gradients",
  gradcam: "Grad-CAM",
  occlusion: "occlusion",
  attention: "attention rollout",
};
const FOR = [220, 40, 40]; // red: evidence for the class (the colours of `bigmodels explain`'s report)
const AGAINST = [40, 90, 220]; // blue: evidence against it
const MAX_ALPHA = 0.85; // the strongest attribution still lets the word or the image show through

// The methods the server runs for this model (GET v1/models): integrated gradients for a text, Grad-CAM for an
// image where they apply, else the first.
function explainMethods(methods) {
  const select = $("exp-method");
  select.replaceChildren(...methods.map((m) => new Option(METHOD_NAMES[m] ?? m, m)));
  const preferred = imageClassifier ? "gradcam" : "ig";
  select.value = methods.includes(preferred) ? preferred : (methods[0] ?? "");
  $("exp-form").hidden = !methods.length;
  clearExplanation();
}

function clearExplanation() {
  const output = $("exp-output");
  output.dataset.state = "idle";
  $("exp-summary").textContent = "";
  $("exp-words").replaceChildren();
  for (const id of ["exp-words", "exp-image", "exp-legend"]) $(id).hidden = true;
}

// An attribution's colour: red for, blue against, its opacity the value's share of the largest magnitude.
function shade(value, scale) {
  const alpha = scale > 0 ? Math.min(Math.abs(value) / scale, 1) * MAX_ALPHA : 0;
  return [...(value >= 0 ? FOR : AGAINST), alpha];
}

function largest(values) {
  return values.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
}

function classOf(index, label) {
  return label ? `${label} (class ${index})` : `class ${index}`;
}

function summarise(answer) {
  const parts = [`${METHOD_NAMES[answer.method] ?? answer.method} for ${classOf(answer.target, answer.target_label)}`];
  if (answer.predicted >= 0) {
    const p = answer.score === null ? "" : ` (p = ${answer.score.toFixed(3)})`;
    parts.push(`predicted ${classOf(answer.predicted, answer.predicted_label)}${p}`);
  }
  if (answer.relative_delta !== null) parts.push(`completeness gap ${(100 * answer.relative_delta).toFixed(2)}%`);
  $("exp-summary").textContent = parts.join(" · ");
  const name = answer.target_label ?? `class ${answer.target}`;
  $("exp-legend").textContent = `red: evidence for ${name} · blue: against it · the stronger the colour, the larger the attribution`;
  $("exp-legend").hidden = false;
}

// A text: its words (word pieces where the tokenizer gives no words) on backgrounds coloured by attribution.
function drawWords(answer) {
  const items = answer.words ?? answer.tokens.filter((t) => !t.special).map((t) => ({ word: t.token, attribution: t.attribution }));
  const scale = largest(items.map((i) => i.attribution));
  const spans = items.map(({ word, attribution }) => {
    const span = document.createElement("span");
    span.className = "tok";
    span.textContent = word;
    span.style.backgroundColor = `rgba(${shade(attribution, scale).join(", ")})`;
    span.title = `${attribution >= 0 ? "+" : ""}${attribution.toPrecision(4)}`;
    span.dataset.attribution = String(attribution);
    return span;
  });
  const words = $("exp-words");
  words.replaceChildren(...spans.flatMap((span, i) => (i ? [" ", span] : [span])));
  words.hidden = false;
}

function loadImage(source) {
  const image = new Image();
  image.src = source;
  return image.decode().then(
    () => image,
    () => {
      throw new ApiError(null, "the browser could not decode this image to draw the heatmap over it", null);
    },
  );
}

// An image: the part the model saw (the server's `region`), with the attribution grid laid over it as a
// translucent layer, scaled up smoothly; hovering shows a cell's value.
async function drawHeatmap(answer, source) {
  const heat = answer.heatmap;
  const image = await loadImage(source);
  const region = heat.region ?? { left: 0, top: 0, width: image.naturalWidth, height: image.naturalHeight };
  const zoom = 256 / Math.max(heat.width, heat.height);
  const [w, h] = [Math.round(heat.width * zoom), Math.round(heat.height * zoom)];
  const base = $("exp-base");
  const layer = $("exp-heat");
  for (const canvas of [base, layer]) {
    canvas.width = w;
    canvas.height = h;
  }
  const ctx = base.getContext("2d");
  ctx.imageSmoothingEnabled = region.width > w; // a tiny image stays crisp pixels
  ctx.drawImage(image, region.left, region.top, region.width, region.height, 0, 0, w, h);

  const values = heat.grid.flat();
  const scale = largest(values);
  const cells = new ImageData(heat.width, heat.height);
  values.forEach((value, i) => {
    const [r, g, b, a] = shade(value, scale);
    cells.data.set([r, g, b, Math.round(a * 255)], 4 * i);
  });
  const grid = document.createElement("canvas");
  grid.width = heat.width;
  grid.height = heat.height;
  grid.getContext("2d").putImageData(cells, 0, 0);
  const over = layer.getContext("2d");
  over.clearRect(0, 0, w, h);
  over.imageSmoothingEnabled = true;
  over.drawImage(grid, 0, 0, w, h);
  layer.onmousemove = (event) => {
    const x = Math.min(heat.width - 1, Math.floor((event.offsetX / layer.clientWidth) * heat.width));
    const y = Math.min(heat.height - 1, Math.floor((event.offsetY / layer.clientHeight) * heat.height));
    layer.title = `(${x}, ${y}): ${heat.grid[y][x].toPrecision(4)}`;
  };
  $("exp-image").hidden = false;
}

onSubmit("exp-form", "exp-run", "exp-error", async () => {
  const body = { method: $("exp-method").value };
  const target = number("exp-target", "class", { optional: true });
  if (target !== undefined) body.target = target;
  if (imageClassifier) {
    const file = $("cls-image").files[0];
    if (!file) throw new ApiError(null, "choose an image file first", null);
    body.image = await readFile(file);
    body.png = false; // the page draws the grid itself
  } else {
    body.input = $("cls-text").value;
  }
  clearExplanation();
  const output = $("exp-output");
  output.dataset.state = "running";
  try {
    const answer = await post("v1/explain", body);
    if (answer.modality === "image") await drawHeatmap(answer, body.image);
    else drawWords(answer);
    summarise(answer);
    output.dataset.state = "done";
  } catch (e) {
    clearExplanation();
    output.dataset.state = "error";
    throw e;
  }
});

// ------------------------------------------------------------------------------------------ similarity

function cosine(a, b) {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return na && nb ? dot / Math.sqrt(na * nb) : 0;
}

onSubmit("sim-form", "sim-run", "sim-error", async () => {
  const results = $("sim-results");
  const source = $("sim-source").value;
  const candidates = $("sim-candidates").value.split("\n").map((s) => s.trim()).filter(Boolean);
  if (!candidates.length) throw new ApiError(null, "write at least one sentence to compare with, one per line", null);
  results.dataset.state = "running";
  try {
    const answer = await post("v1/embeddings", { input: [source, ...candidates], encoding_format: "float" });
    const vectors = answer.data.sort((a, b) => a.index - b.index).map((d) => d.embedding);
    const rows = candidates.map((label, i) => {
      const value = cosine(vectors[0], vectors[i + 1]);
      return { label, value, fraction: value };
    });
    bars("sim-results", rows.sort((a, b) => b.value - a.value));
    results.dataset.state = "done";
  } catch (e) {
    results.replaceChildren();
    results.dataset.state = "error";
    throw e;
  }
});

// ------------------------------------------------------------------------------------------- translate

onSubmit("tr-form", "tr-run", "tr-error", async () => {
  const output = $("tr-output");
  output.dataset.state = "running";
  output.textContent = "";
  try {
    const answer = await post("v1/translate", { input: $("tr-text").value, num_beams: number("tr-beams", "beams") });
    output.textContent = answer.data[0].translation_text;
    output.dataset.state = "done";
  } catch (e) {
    output.dataset.state = "error";
    throw e;
  }
});

$("api-key").value = sessionStorage.getItem(KEY_STORE) ?? "";
connect();

// The page: pick or drop an image, POST it to /v1/captions, show the captions; with an attention model, each
// word's attention map over the painting; with an emotion classifier, a chart of the 9 emotions; with an
// emotion-grounded model, a click on an emotion re-captions the painting under it.
"use strict";
// Decoding options: one control per decoding parameter the API lists in /v1/limits (`parameters`, the JSON schema
// of POST /v1/captions, made from the same settings fields as the command line's flags), set to the model's
// defaults; only the ones a user changed are sent, so the server's answer says what it used.

const form = document.getElementById("upload-form");
const input = document.getElementById("image-input");
const statusLine = document.getElementById("status");
const errorLine = document.getElementById("error");
const result = document.getElementById("result");
const preview = document.getElementById("preview");
const frame = document.getElementById("painting-frame");
const overlay = document.getElementById("attention-overlay");
const attentionNote = document.getElementById("attention-note");
const beamCaption = document.getElementById("caption-beam");
const captionMethod = document.getElementById("caption-method");
const greedyCaption = document.getElementById("caption-greedy");
const groundedOn = document.getElementById("grounded-on");
const emotionsSection = document.getElementById("emotions");
const emotionsHelp = document.getElementById("emotions-help");
const emotionChart = document.getElementById("emotion-chart");
const autoButton = document.getElementById("emotion-auto");
const meta = document.getElementById("meta");
const decodingOptions = document.getElementById("decoding-options");
const decodingControls = document.getElementById("decoding-controls");
const decodingUsed = document.getElementById("decoding-used");

// The server's limits (a too-big file is refused here instead of half-uploaded) and what its model can do.
let limits = null;
const limitsLoaded = fetch("/v1/limits")
  .then((r) => (r.ok ? r.json() : null))
  .then((l) => { limits = l; buildDecodingControls(); })
  .catch(() => {});

let previewUrl = null;
let currentFile = null;  // the painting shown, kept to re-caption it under another emotion or decoding
let askedEmotion = null;  // the emotion the painting shown was last asked under
let requestNumber = 0;  // only the latest request may update the page
let words = [];  // [{word, attention: g x g}] of the caption shown, when the model has attention
let pointedWord = null;  // the word under the pointer, else the focused one, shows its map
let focusedWord = null;

function showError(message) {
  errorLine.textContent = message;
  errorLine.hidden = false;
  statusLine.textContent = "";
  form.classList.remove("busy");
}

function hasAttention() { return Boolean(limits && limits.attention); }
function isGrounded() { return Boolean(limits && limits.grounded); }

// ------------------------------------------------------------------------------------------- captioning
async function captionFile(file) {
  await limitsLoaded;
  errorLine.hidden = true;
  if (limits && file.size > limits.max_upload_bytes) {
    ++requestNumber;
    const mib = (n) => (n / 1048576).toFixed(1);
    result.hidden = true;
    showError(`${file.name} is ${mib(file.size)} MiB; this server accepts up to ${mib(limits.max_upload_bytes)} MiB. Choose a smaller image.`);
    return;
  }
  currentFile = file;
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  preview.src = previewUrl;
  emotionsSection.hidden = true;
  groundedOn.hidden = true;
  // A grounded model without a classifier cannot choose an emotion itself ("auto"): start from the first one.
  const start = isGrounded() && !limits.emotion_classifier ? limits.emotions[0] : null;
  await requestCaption(file, start, `Captioning ${file.name}…`);
}

// POST the painting (again, for another emotion) and show the answer. `emotion`: a name, "auto" or null.
async function requestCaption(file, emotion, busyMessage) {
  const thisRequest = ++requestNumber;
  errorLine.hidden = true;
  preview.alt = `The chosen painting, ${file.name} (captioning...)`;
  showWords([]);
  beamCaption.textContent = "…";
  greedyCaption.textContent = "…";
  meta.textContent = "";
  decodingUsed.textContent = "";
  result.hidden = false;
  result.setAttribute("aria-busy", "true");
  form.classList.add("busy");
  emotionChart.classList.add("busy");
  statusLine.textContent = busyMessage;

  askedEmotion = emotion;
  const body = new FormData();
  body.append("image", file, file.name);
  for (const [name, value] of changedDecoding()) body.append(name, value);
  if (emotion) body.append("emotion", emotion);
  if (hasAttention()) body.append("explain", "true");
  let response, data;
  try {
    response = await fetch("/v1/captions", { method: "POST", body });
    data = await response.json().catch(() => null);
  } catch (err) {
    if (thisRequest === requestNumber) showError(`Could not reach the server (${err.message}). Is it still running?`);
    return;
  } finally {
    if (thisRequest === requestNumber) {
      result.removeAttribute("aria-busy");
      emotionChart.classList.remove("busy");
    }
  }
  if (thisRequest !== requestNumber) return;
  if (!response.ok) {
    const reason = data && data.error ? data.error : `the server answered ${response.status} ${response.statusText}`;
    beamCaption.textContent = "—";
    greedyCaption.textContent = "—";
    preview.alt = `The chosen painting, ${file.name} (not captioned)`;
    showError(`Error ${response.status}: ${reason}`);
    return;
  }
  showAnswer(data, emotion || "auto");
  statusLine.textContent = data.emotion ? `Captioned ${file.name} under ${data.emotion}.` : `Captioned ${file.name}.`;
  form.classList.remove("busy");
}

function showAnswer(data, askedEmotion) {
  captionMethod.textContent = data.beam > 1 ? `(beam search, width ${data.beam})` : "(greedy)";
  if (data.words && data.words.length) {
    showWords(data.words);
  } else {
    beamCaption.textContent = data.captions.beam || data.caption;
  }
  greedyCaption.textContent = data.captions.greedy;
  preview.alt = data.caption;
  showGrounding(data.emotion, askedEmotion);
  showEmotionChart(data.emotion_scores, data.emotion ? askedEmotion : null, data.emotion);
  decodingUsed.textContent = "Decoding: " + Object.entries(data.decoding).map(([k, v]) => `${k} ${v}`).join(", ");
  const t = data.timing_ms;
  meta.textContent = `${data.image.width}×${data.image.height} ${data.image.format} · model ${data.model} · ${Math.round(t.total)} ms`;
}

// ------------------------------------------------------------------------------------- decoding options
// The schema of one parameter: {anyOf: [{type, minimum, maximum}, {type: "null"}], description}.
function parameterType(schema) {
  const types = (schema.anyOf || [schema]).filter((s) => s.type !== "null");
  return types[0] || {};
}

function buildDecodingControls() {
  if (!limits || !limits.parameters || !limits.default_decoding) return;
  decodingControls.textContent = "";
  for (const [name, fallback] of Object.entries(limits.default_decoding)) {
    const schema = limits.parameters[name];
    if (!schema) continue;
    const type = parameterType(schema);
    const label = document.createElement("label");
    label.title = schema.description || "";
    const text = document.createElement("span");
    text.textContent = name.replaceAll("_", " ");
    const control = document.createElement("input");
    control.name = name;
    control.dataset.parameter = name;
    control.setAttribute("aria-description", schema.description || "");
    if (type.type === "boolean") {
      control.type = "checkbox";
      control.checked = Boolean(fallback);
      control.dataset.default = String(Boolean(fallback));
    } else {
      control.type = "number";
      if (type.minimum !== undefined) control.min = String(type.minimum);
      if (type.maximum !== undefined) control.max = String(type.maximum);
      control.step = type.type === "integer" ? "1" : "any";
      control.value = String(fallback);
      control.dataset.default = String(fallback);
    }
    control.addEventListener("change", () => {
      if (currentFile) requestCaption(currentFile, askedEmotion, `Captioning ${currentFile.name} again…`);
    });
    label.append(text, control);
    decodingControls.append(label);
  }
  decodingOptions.hidden = decodingControls.childElementCount === 0;
}

// [name, value] of every control a user moved from the model's default.
function changedDecoding() {
  const changed = [];
  for (const control of decodingControls.querySelectorAll("input[data-parameter]")) {
    const value = control.type === "checkbox" ? String(control.checked) : control.value.trim();
    if (value !== control.dataset.default) changed.push([control.dataset.parameter, value]);
  }
  return changed;
}

// ------------------------------------------------------------------------------------ words and attention
// The caption as words; pointing at or focusing one draws where it looked over the painting.
function showWords(newWords) {
  words = newWords;
  pointedWord = focusedWord = null;
  drawAttention();
  if (!words.length) {
    attentionNote.hidden = true;
    return;
  }
  beamCaption.textContent = "";
  words.forEach((entry, index) => {
    if (index > 0) beamCaption.append(" ");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "word";
    button.textContent = entry.word;
    button.dataset.index = String(index);
    button.setAttribute("aria-label", `${entry.word}: looked ${whereItLooked(entry.attention)}`);
    beamCaption.append(button);
  });
  attentionNote.textContent = "Point at a word of the caption, or focus it (Tab, then ← →), to see where the model looked for it.";
  attentionNote.hidden = false;
}

function wordIndex(event) {
  const button = event.target.closest("button.word");
  return button && beamCaption.contains(button) ? Number(button.dataset.index) : null;
}

beamCaption.addEventListener("pointerover", (event) => { pointedWord = wordIndex(event); drawAttention(); });
beamCaption.addEventListener("pointerout", (event) => {
  if (wordIndex(event) !== null) { pointedWord = null; drawAttention(); }
});
beamCaption.addEventListener("focusin", (event) => { focusedWord = wordIndex(event); drawAttention(); });
beamCaption.addEventListener("focusout", () => { focusedWord = null; drawAttention(); });
// Escape hides the map; the arrow keys step from word to word.
beamCaption.addEventListener("keydown", (event) => {
  if (focusedWord === null) return;
  const buttons = beamCaption.querySelectorAll("button.word");
  const step = { ArrowLeft: -1, ArrowRight: 1 }[event.key];
  if (event.key === "Escape") {
    document.activeElement.blur();
  } else if (step && buttons[focusedWord + step]) {
    event.preventDefault();
    buttons[focusedWord + step].focus();
  }
});
window.addEventListener("resize", () => drawAttention());
preview.addEventListener("load", () => drawAttention());

// Draw the shown word's map over the painting, or clear the overlay.
function drawAttention() {
  const index = pointedWord !== null ? pointedWord : focusedWord;
  const entry = index !== null ? words[index] : null;
  for (const button of beamCaption.querySelectorAll("button.word")) {
    button.classList.toggle("shown", Number(button.dataset.index) === index);
  }
  if (!entry || !preview.naturalWidth) {
    overlay.hidden = true;
    overlay.setAttribute("aria-label", "");
    return;
  }
  const box = paintingBox();
  const scale = window.devicePixelRatio || 1;
  overlay.width = Math.max(1, Math.round(box.width * scale));
  overlay.height = Math.max(1, Math.round(box.height * scale));
  // CSSOM writes, not style attributes: the page's CSP allows them.
  overlay.style.left = `${box.left}px`;
  overlay.style.top = `${box.top}px`;
  overlay.style.width = `${box.width}px`;
  overlay.style.height = `${box.height}px`;
  const context = overlay.getContext("2d");
  context.clearRect(0, 0, overlay.width, overlay.height);
  // The model saw the painting stretched to a square, so the g x g grid covers the whole painting.
  context.imageSmoothingEnabled = true;
  context.imageSmoothingQuality = "high";
  context.drawImage(heatMap(entry.attention), 0, 0, overlay.width, overlay.height);
  const where = `Where “${entry.word}” looked: ${whereItLooked(entry.attention)}`;
  overlay.setAttribute("aria-label", where);
  attentionNote.textContent = `${where}.`;
  overlay.hidden = false;
}

// Where the painting is drawn inside its <img> (object-fit: contain letterboxes it), relative to the frame.
function paintingBox() {
  const boxW = preview.clientWidth, boxH = preview.clientHeight;
  const fit = Math.min(boxW / preview.naturalWidth, boxH / preview.naturalHeight);
  const width = preview.naturalWidth * fit, height = preview.naturalHeight * fit;
  return {
    left: preview.offsetLeft + (boxW - width) / 2,
    top: preview.offsetTop + (boxH - height) / 2,
    width,
    height,
  };
}

// The grid as a g x g canvas, one pixel a cell: heat colours, more opaque where the word looked more.
// Scaled up with smoothing, it becomes a soft map.
function heatMap(grid) {
  const rows = grid.length, cols = grid[0].length;
  // Scaled to the peak, but never below 3x the uniform share: a map spread evenly stays dim, not all "hot".
  const peak = Math.max(...grid.flat(), 3 / (rows * cols));
  const small = document.createElement("canvas");
  small.width = cols;
  small.height = rows;
  const context = small.getContext("2d");
  const image = context.createImageData(cols, rows);
  grid.forEach((row, r) => row.forEach((value, c) => {
    const v = value / peak;
    const [red, green, blue] = heatColour(v);
    const at = 4 * (r * cols + c);
    image.data.set([red, green, blue, Math.round(255 * (0.2 + 0.6 * v))], at);
  }));
  context.putImageData(image, 0, 0);
  return small;
}

// 0 -> deep blue-black (dims what the word ignored), 0.5 -> red, 1 -> pale yellow.
const HEAT_STOPS = [[0, [15, 15, 50]], [0.5, [200, 50, 40]], [0.8, [250, 160, 40]], [1, [255, 245, 170]]];

function heatColour(v) {
  for (let i = 1; i < HEAT_STOPS.length; i++) {
    const [v1, c1] = HEAT_STOPS[i];
    if (v <= v1) {
      const [v0, c0] = HEAT_STOPS[i - 1];
      const t = (v - v0) / (v1 - v0);
      return c0.map((x, k) => Math.round(x + t * (c1[k] - x)));
    }
  }
  return HEAT_STOPS[HEAT_STOPS.length - 1][1];
}

// Words for the map, for screen readers and the note under the painting: "mostly at the top left".
function whereItLooked(grid) {
  const rows = grid.length, cols = grid[0].length;
  let best = 0, bestRow = 0, bestCol = 0;
  grid.forEach((row, r) => row.forEach((value, c) => {
    if (value > best) { best = value; bestRow = r; bestCol = c; }
  }));
  if (best < 1.5 / (rows * cols)) return "all over the painting";
  const third = (i, n) => Math.min(2, Math.floor((3 * i) / n));
  const vertical = ["top", "middle", "bottom"][third(bestRow, rows)];
  const horizontal = ["left", "centre", "right"][third(bestCol, cols)];
  const place = vertical === "middle" && horizontal === "centre" ? "centre" : vertical === "middle"
    ? `middle ${horizontal}` : `${vertical} ${horizontal}`;
  return `mostly at the ${place}`;
}

// ------------------------------------------------------------------------------------------ emotions
function showGrounding(emotion, askedEmotion) {
  if (!emotion) {
    groundedOn.hidden = true;
    return;
  }
  groundedOn.textContent = "";
  const name = document.createElement("strong");
  name.id = "grounded-emotion";
  name.textContent = emotion;
  groundedOn.append("Captioned as someone feeling ", name);
  if (askedEmotion === "auto") {
    const mark = document.createElement("span");
    mark.className = "auto-mark";
    mark.textContent = "auto";
    mark.title = "chosen by the model's emotion classifier";
    groundedOn.append(" ", mark);
  }
  groundedOn.hidden = false;
}

// One bar per emotion with its name and percent; with a grounded model each bar is a button that re-captions.
// `chosen`: what was asked ("auto" or a name); `grounded`: the emotion the caption was grounded on.
function showEmotionChart(scores, chosen, grounded) {
  const names = limits ? limits.emotions : Object.keys(scores || {});
  const steerable = isGrounded() && currentFile !== null;
  if (!scores && !steerable) {
    emotionsSection.hidden = true;
    return;
  }
  // The chart is rebuilt: a keyboard user who chose an emotion keeps focus on it.
  const focused = emotionsSection.contains(document.activeElement) ? document.activeElement.dataset.emotion : null;
  emotionChart.textContent = "";
  for (const name of names) {
    const share = scores ? scores[name] : null;
    const item = document.createElement("li");
    const bar = document.createElement(steerable ? "button" : "div");
    bar.className = name === grounded ? "emotion-bar grounded" : "emotion-bar";
    bar.dataset.emotion = name;
    const label = document.createElement("span");
    label.className = "emotion-name";
    label.textContent = name;
    bar.append(label);
    if (share !== null) {
      const track = document.createElement("span");
      track.className = "emotion-track";
      const fill = document.createElement("span");
      fill.className = "emotion-fill";
      fill.style.width = `${(100 * share).toFixed(1)}%`;  // CSSOM, allowed by the CSP
      track.append(fill);
      const percent = document.createElement("span");
      percent.className = "emotion-percent";
      percent.textContent = `${Math.round(100 * share)}%`;
      bar.append(track, percent);
    }
    if (steerable) {
      bar.type = "button";
      bar.setAttribute("aria-pressed", String(name === chosen));
      bar.title = `Caption the painting as someone feeling ${name}`;
    }
    item.append(bar);
    emotionChart.append(item);
  }
  emotionsHelp.hidden = !steerable;
  autoButton.hidden = !(steerable && limits.emotion_classifier);
  autoButton.setAttribute("aria-pressed", String(chosen === "auto"));
  emotionsSection.hidden = false;
  if (focused) {
    const again = emotionsSection.querySelector(`button[data-emotion="${CSS.escape(focused)}"]`);
    if (again) again.focus();
  }
}

function steer(event) {
  const button = event.target.closest("button[data-emotion]");
  if (!button || !currentFile || button.getAttribute("aria-pressed") === "true") return;
  const emotion = button.dataset.emotion;
  requestCaption(currentFile, emotion, `Captioning ${currentFile.name} as someone feeling ${emotion}…`);
}

emotionChart.addEventListener("click", steer);
autoButton.addEventListener("click", steer);

// ------------------------------------------------------------------------------------- choosing a file
input.addEventListener("change", () => {
  if (input.files.length > 0) captionFile(input.files[0]);
});

// Drag and drop anywhere on the drop zone.
for (const type of ["dragenter", "dragover"]) {
  form.addEventListener(type, (event) => {
    event.preventDefault();
    form.classList.add("dragging");
  });
}
for (const type of ["dragleave", "drop"]) {
  form.addEventListener(type, () => form.classList.remove("dragging"));
}
form.addEventListener("drop", (event) => {
  event.preventDefault();
  const file = event.dataTransfer.files[0];
  if (!file) {
    showError("Nothing to caption: drop an image file (JPEG, PNG, WebP, BMP, TIFF or GIF).");
    return;
  }
  captionFile(file);
});
// A file dropped outside the zone would make the browser navigate away from the page.
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => event.preventDefault());
form.addEventListener("submit", (event) => event.preventDefault());

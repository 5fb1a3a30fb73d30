// The page: pick or drop an image, POST it to /v1/captions, show the captions.
"use strict";
// No beam is sent: the server then uses the model's default decoding (see /v1/limits).

const form = document.getElementById("upload-form");
const input = document.getElementById("image-input");
const statusLine = document.getElementById("status");
const errorLine = document.getElementById("error");
const result = document.getElementById("result");
const preview = document.getElementById("preview");
const beamCaption = document.getElementById("caption-beam");
const greedyCaption = document.getElementById("caption-greedy");
const meta = document.getElementById("meta");

// The server's limits, so a too-big file is refused here instead of half-uploaded.
let limits = null;
fetch("/v1/limits").then((r) => (r.ok ? r.json() : null)).then((l) => { limits = l; }).catch(() => {});

let previewUrl = null;
let requestNumber = 0;  // only the latest upload may update the page

function showError(message) {
  errorLine.textContent = message;
  errorLine.hidden = false;
  statusLine.textContent = "";
  form.classList.remove("busy");
}

async function captionFile(file) {
  const thisRequest = ++requestNumber;
  errorLine.hidden = true;
  if (limits && file.size > limits.max_upload_bytes) {
    const mib = (n) => (n / 1048576).toFixed(1);
    result.hidden = true;
    showError(`${file.name} is ${mib(file.size)} MiB; this server accepts up to ${mib(limits.max_upload_bytes)} MiB. Choose a smaller image.`);
    return;
  }
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  preview.src = previewUrl;
  preview.alt = `The chosen painting, ${file.name} (captioning...)`;
  beamCaption.textContent = "…";
  greedyCaption.textContent = "…";
  meta.textContent = "";
  result.hidden = false;
  result.setAttribute("aria-busy", "true");
  form.classList.add("busy");
  statusLine.textContent = `Captioning ${file.name}…`;

  const body = new FormData();
  body.append("image", file, file.name);
  let response, data;
  try {
    response = await fetch("/v1/captions", { method: "POST", body });
    data = await response.json().catch(() => null);
  } catch (err) {
    if (thisRequest === requestNumber) showError(`Could not reach the server (${err.message}). Is it still running?`);
    return;
  } finally {
    if (thisRequest === requestNumber) result.removeAttribute("aria-busy");
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
  beamCaption.textContent = data.captions.beam || data.caption;
  greedyCaption.textContent = data.captions.greedy;
  preview.alt = data.caption;
  const t = data.timing_ms;
  meta.textContent = `${data.image.width}×${data.image.height} ${data.image.format} · model ${data.model} · ${Math.round(t.total)} ms`;
  statusLine.textContent = `Captioned ${file.name}.`;
  form.classList.remove("busy");
}

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

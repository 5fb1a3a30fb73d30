// The manifest box: POST /v1/iiif with the URL, then one list item per canvas (its caption or its error).
"use strict";

(() => {
  const form = document.getElementById("iiif-form");
  const input = document.getElementById("iiif-url");
  const button = document.getElementById("iiif-submit");
  const status = document.getElementById("iiif-status");
  const error = document.getElementById("iiif-error");
  const list = document.getElementById("iiif-canvases");

  function showError(message) {
    error.textContent = message;
    error.hidden = false;
    status.textContent = "";
  }

  function canvasItem(canvas) {
    const item = document.createElement("li");
    item.className = "canvas";
    item.dataset.canvas = canvas.canvas;
    const label = document.createElement("span");
    label.className = "canvas-label";
    label.textContent = canvas.label;
    const text = document.createElement("span");
    text.className = canvas.caption ? "canvas-caption" : "canvas-error";
    text.textContent = canvas.caption
      ? canvas.caption + (canvas.emotion ? ` (${canvas.emotion})` : "")
      : canvas.error;
    item.append(label, text);
    return item;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    list.replaceChildren();
    status.textContent = "Fetching the manifest and captioning its canvases…";
    button.disabled = true;
    try {
      const response = await fetch("/v1/iiif", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        // The decoding options a user changed above (app.js) apply to a manifest's canvases too.
        body: JSON.stringify({ manifest: input.value.trim(), ...Object.fromEntries(changedDecoding()) }),
      });
      const body = await response.json().catch(() => ({ error: `the server answered ${response.status}` }));
      if (!response.ok) {
        showError(body.error || `the server answered ${response.status}`);
        return;
      }
      const captioned = body.canvases.filter((c) => c.caption).length;
      status.textContent = `${body.label}: ${captioned} of ${body.canvases.length} canvases captioned by ${body.model}.`;
      list.replaceChildren(...body.canvases.map(canvasItem));
    } catch (err) {
      showError(`could not reach the server (${err.message}); is it still running?`);
    } finally {
      button.disabled = false;
    }
  });
})();

// CLIP image search page: queries TF Serving's REST API (the dev server's or a real
// tensorflow_model_server's) with the `search` (text) or `search_image` (an example image)
// signature of a CLIP SavedModel exported with --index, and shows the top-k images.
//
// URL parameters (all optional):
//   server  REST root, e.g. http://localhost:8501 (default: this page's own server)
//   model   model name (default: clip)
//   version model version (default: the latest)
//   images  thumbnail URL template, {id} is replaced by the result's id
//           (default: <server>/images/{id}, which the dev server's --index serves)
//   k       default number of results (default: 8)
"use strict";

const params = new URLSearchParams(window.location.search);
const server = (params.get("server") || "").replace(/\/+$/, "");
const model = params.get("model") || "clip";
const version = params.get("version");
const imageTemplate = params.get("images") || server + "/images/{id}";
const predictUrl = server + "/v1/models/" + encodeURIComponent(model) +
  (version ? "/versions/" + encodeURIComponent(version) : "") + ":predict";

const form = document.getElementById("search");
const queryBox = document.getElementById("query");
const exampleBox = document.getElementById("example");
const kBox = document.getElementById("k");
const statusLine = document.getElementById("status");
const results = document.getElementById("results");
document.getElementById("model-name").textContent = model;
if (params.get("k")) kBox.value = params.get("k");

function readAsBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    // The data URL's payload, after "data:<type>;base64,".
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1]);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

// The row format: one instance {query input, k}; TF Serving answers
// {"predictions": [{"ids": [...], "scores": [...]}]}.
async function search(k) {
  const text = queryBox.value.trim();
  const file = exampleBox.files && exampleBox.files[0];
  let body;
  if (text) {
    body = {signature_name: "search", instances: [{texts: text, k: k}]};
  } else if (file) {
    const image = {b64: await readAsBase64(file)};
    body = {signature_name: "search_image", instances: [{images: image, k: k}]};
  } else {
    throw new Error("type a description or choose an example image");
  }
  const response = await fetch(predictUrl, {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  });
  let answer;
  try {
    answer = await response.json();
  } catch (e) {
    throw new Error("HTTP " + response.status + ": the answer is not JSON");
  }
  if (!response.ok || answer.error) {
    throw new Error(answer.error || "HTTP " + response.status);
  }
  return {query: text || file.name, ...answer.predictions[0]};
}

function show(found) {
  results.replaceChildren();
  found.ids.forEach((id, rank) => {
    const figure = document.createElement("figure");
    figure.className = "result";
    figure.dataset.id = id;
    figure.dataset.score = found.scores[rank];
    const img = document.createElement("img");
    img.src = imageTemplate.split("{id}").join(encodeURIComponent(id));
    img.alt = "image " + id;
    const caption = document.createElement("figcaption");
    caption.textContent = "#" + (rank + 1) + "  " + id + "  score " + found.scores[rank].toFixed(3);
    figure.append(img, caption);
    results.append(figure);
  });
  statusLine.textContent = found.ids.length + " results for \u201c" + found.query + "\u201d";
  statusLine.className = "ok";
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const k = Number(kBox.value);
  if (!Number.isInteger(k) || k < 1) {
    statusLine.textContent = "k must be a whole number of at least 1";
    statusLine.className = "error";
    return;
  }
  statusLine.textContent = "searching\u2026";
  statusLine.className = "busy";
  try {
    show(await search(k));
  } catch (e) {
    results.replaceChildren();
    statusLine.textContent = "error: " + e.message;
    statusLine.className = "error";
  }
});

// A chosen example image searches at once (and clears the text, which would take precedence).
exampleBox.addEventListener("change", () => {
  if (exampleBox.files.length) {
    queryBox.value = "";
    form.requestSubmit();
  }
});

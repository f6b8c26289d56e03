// The search page: a text query, a dropped image, or both (image + modification text = composed search).
// Plain browser JavaScript, no build step and nothing fetched from other hosts.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { image: null, kinds: [], outfitCategories: [], previewUrl: null };

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function loadInfo() {
  try {
    const response = await fetch("/health");
    const info = await response.json();
    state.kinds = info.search;
    $("info").textContent = `${info.items} items · model ${info.model} · ${info.index} index · search by ${info.search.join(", ")}`;
    if (!state.kinds.includes("image")) $("drop").hidden = true;
    state.outfitCategories = info.outfit_categories || [];
    if (state.kinds.includes("outfit") && state.outfitCategories.length) {
      const select = $("outfit-category");
      select.replaceChildren(...state.outfitCategories.map((c) => new Option(`category ${c}`, c)));
      $("outfit-row").hidden = false;
    }
  } catch (err) {
    $("info").textContent = "the service does not answer";
  }
}

function setImage(file) {
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.image = file;
  state.previewUrl = file ? URL.createObjectURL(file) : null;
  $("preview").hidden = !file;
  if (file) $("preview").src = state.previewUrl;
  else $("preview").removeAttribute("src");
  $("drop-label").hidden = Boolean(file);
  $("clear-image").hidden = !file;
  $("query").placeholder = file
    ? (state.kinds.includes("composed") ? "Optional: how to change it, e.g. in red with long sleeves" : "")
    : "Describe what you are looking for, e.g. black leather sneakers";
}

async function search(event) {
  if (event) event.preventDefault();
  const text = $("query").value.trim();
  const k = $("k").value;
  let request;
  if (state.image && text) {
    if (!state.kinds.includes("composed")) return setStatus("This model cannot combine an image with a text.", true);
    const form = new FormData();
    form.append("image", state.image);
    form.append("text", text);
    form.append("k", k);
    request = ["/api/search/composed", { method: "POST", body: form }];
  } else if (state.image) {
    const form = new FormData();
    form.append("image", state.image);
    form.append("k", k);
    request = ["/api/search/image", { method: "POST", body: form }];
  } else if (text) {
    request = ["/api/search/text", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ text, k: Number(k) }),
    }];
  } else {
    return setStatus("Type a query or drop an image.", true);
  }
  await run(...request);
}

async function completeOutfit(itemId) {
  // items of the chosen outfit category that go with this one
  await run("/api/search/outfit", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ item_ids: [itemId], category: Number($("outfit-category").value), k: Number($("k").value) }),
  });
}

async function run(url, options) {
  setStatus("searching…");
  let response, body;
  try {
    response = await fetch(url, options);
    body = await response.json();
  } catch (err) {
    return setStatus(`The service did not answer (${err}).`, true);
  }
  if (!response.ok) return setStatus(body.detail || `error ${response.status}`, true);
  render(body);
}

function render(body) {
  const grid = $("results");
  grid.replaceChildren();
  for (const hit of body.results) {
    const card = document.createElement("article");
    card.className = "result";
    card.dataset.id = hit.id;
    const img = document.createElement("img");
    img.src = hit.image_url;
    img.alt = hit.text || hit.id;
    const meta = document.createElement("div");
    meta.className = "meta";
    const rank = document.createElement("span");
    rank.textContent = `#${hit.rank} · ${hit.id}`;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3);
    meta.append(rank, score);
    const text = document.createElement("p");
    text.className = "text";
    text.textContent = hit.text;
    text.title = hit.text;
    card.append(img, meta, text);
    if (state.kinds.includes("outfit") && state.outfitCategories.length) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = "complete the outfit";
      button.addEventListener("click", () => completeOutfit(hit.id));
      card.append(button);
    }
    grid.append(card);
  }
  setStatus(`${body.results.length} results for ${body.kind} search in ${body.took_ms} ms`);
}

function wireDrop() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = e.dataTransfer.files[0];
    if (file) { setImage(file); search(); }
  });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });
  $("file").addEventListener("change", () => { const file = $("file").files[0]; if (file) { setImage(file); search(); } });
  $("clear-image").addEventListener("click", () => { $("file").value = ""; setImage(null); });
}

$("search-form").addEventListener("submit", search);
wireDrop();
loadInfo();

// The page: upload, a gallery of the caller's images, and a detail view whose controls
// render a variant live. Everything goes through the public HTTP API (./api.js), so the
// page can do exactly what a client can, and shows the gateway's own words when refused.
import * as api from "./api.js";

const $ = (id) => document.getElementById(id);
const PAGE_SIZE = 24;
const THUMB = "w=240&h=240&fit=cover";
// Flags are given bare in a query (?grayscale); the rest as name=value.
const FLAGS = ["grayscale"];
const VALUES = ["preset", "w", "h", "fit", "gravity", "format", "q", "blur", "rotate"];

const state = {
  cursor: null, // the next page of the gallery, from the list's next_cursor
  loading: false,
  generation: 0, // bumped when the gallery starts over, so a stale page is dropped
  current: null, // the image in the detail view
  opener: null, // the gallery button that opened it, to give focus back
  preview: null, // { url, abort } of the preview's object URL and its request
  signing: false, // whether POST /images/{id}/signed-urls exists here
};

function debounce(fn, ms) {
  let timer;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function formatOf(contentType) {
  return contentType.replace(/^image\//, "").toUpperCase() || "?";
}

// --- the key -----------------------------------------------------------------------

function setUpKey() {
  $("token").value = api.token();
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    api.setToken($("token").value);
    restartGallery();
  });
  $("forget").addEventListener("click", () => {
    $("token").value = "";
    api.setToken("");
    restartGallery();
  });
}

// --- upload ------------------------------------------------------------------------

function setUpUpload() {
  const drop = $("drop");
  const input = $("upload-input");
  input.addEventListener("change", () => {
    uploadAll(input.files);
    input.value = ""; // the same file may be chosen again
  });
  // Files dropped anywhere on the page are uploaded: a drop just beside the zone would
  // otherwise make the browser leave the page to show the file.
  document.addEventListener("dragover", (event) => {
    event.preventDefault(); // allows the drop
    drop.classList.add("over");
  });
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) drop.classList.remove("over"); // left the window
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    uploadAll(event.dataTransfer.files);
  });
}

function uploadAll(files) {
  // All at once: the browser keeps a few connections per host and queues the rest.
  for (const file of files) uploadOne(file);
}

async function uploadOne(file) {
  const row = document.createElement("li");
  const name = document.createElement("span");
  name.textContent = file.name;
  const bar = document.createElement("progress");
  bar.max = 1;
  bar.value = 0;
  bar.setAttribute("aria-label", `Uploading ${file.name}`);
  const status = document.createElement("span");
  status.setAttribute("role", "status");
  row.append(name, bar, status);
  $("uploads").prepend(row);
  try {
    const image = await api.upload(file, $("visibility").value, (done) => {
      bar.value = done;
    });
    bar.value = 1;
    status.textContent = "stored";
    $("gallery").prepend(galleryItem(image)); // newest first, as the list is
    $("gallery-status").textContent = "";
  } catch (error) {
    row.classList.add("failed");
    status.textContent = `refused: ${error.message}`;
  }
}

// --- gallery -----------------------------------------------------------------------

function restartGallery() {
  state.generation += 1;
  state.cursor = null;
  state.loading = false;
  for (const img of $("gallery").querySelectorAll("img")) URL.revokeObjectURL(img.src);
  $("gallery").replaceChildren();
  closeDetail();
  loadPage();
}

async function loadPage() {
  if (state.loading) return;
  state.loading = true;
  const generation = state.generation;
  const query = new URLSearchParams({ limit: PAGE_SIZE });
  if (state.cursor) query.set("cursor", state.cursor);
  try {
    const page = await api.json(`/images?${query}`);
    if (generation !== state.generation) return;
    for (const image of page.images) $("gallery").append(galleryItem(image));
    state.cursor = page.next_cursor;
    $("more").hidden = !state.cursor;
    const empty = !$("gallery").children.length;
    $("gallery-status").textContent = empty ? "No images yet: upload some." : "";
  } catch (error) {
    if (generation === state.generation) $("gallery-status").textContent = error.message;
  } finally {
    if (generation === state.generation) state.loading = false;
  }
}

function galleryItem(image) {
  const item = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.dataset.testid = "gallery-item";
  button.dataset.id = image.id;
  const name = image.filename || image.id;
  button.setAttribute(
    "aria-label",
    `${name}, ${image.width} by ${image.height} ${image.format}, ${image.visibility}`,
  );
  const thumb = document.createElement("img");
  thumb.alt = "";
  const label = document.createElement("span");
  label.textContent = name;
  button.append(thumb, label);
  button.addEventListener("click", () => openDetail(image, button));
  item.append(button);
  // A thumbnail from the service itself; where it refuses (presets only, signatures
  // required) the entry keeps its name alone.
  api
    .image(`/images/${image.id}?${THUMB}`)
    .then((got) => {
      thumb.src = URL.createObjectURL(got.blob);
    })
    .catch(() => item.classList.add("no-thumb"));
  return item;
}

// More as the end of the gallery scrolls into view; the button stays for keyboards.
function setUpMore() {
  $("more").addEventListener("click", loadPage);
  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting) && state.cursor) loadPage();
  }).observe($("more"));
}

// --- detail ------------------------------------------------------------------------

function openDetail(image, opener) {
  state.current = image;
  state.opener = opener;
  $("detail").hidden = false;
  $("detail-title").textContent = image.filename || image.id;
  $("facts").textContent =
    `${image.width} × ${image.height} px ${image.format}, ${bytes(image.bytes)}, ` +
    `${image.visibility}, uploaded ${new Date(image.created).toLocaleString()}`;
  $("controls").reset();
  $("signing").hidden = !state.signing;
  $("signed-url").textContent = "";
  $("copy-signed").hidden = true;
  refresh();
  $("detail").scrollIntoView({ block: "start" });
  $("detail-title").focus();
}

function closeDetail() {
  if (!state.current) return;
  state.current = null;
  state.preview?.abort.abort();
  $("detail").hidden = true;
  state.opener?.focus();
}

// The controls as query parameters, in a fixed order (the gateway's variant is the same
// whatever the order; a fixed one keeps the URL shown stable).
function chosen() {
  const form = $("controls").elements;
  const pairs = [];
  for (const name of VALUES) {
    const value = form[name].value.trim();
    if (value !== "") pairs.push([name, value]);
  }
  for (const name of FLAGS) if (form[name].checked) pairs.push([name, true]);
  return pairs;
}

function queryOf(pairs) {
  return pairs
    .map(([name, value]) =>
      value === true ? name : `${name}=${encodeURIComponent(value)}`,
    )
    .join("&");
}

function extensionOf(image, pairs) {
  const format = Object.fromEntries(pairs).format || image.format.toLowerCase();
  return { jpeg: "jpg", mpo: "jpg" }[format] || format;
}

async function refresh() {
  const image = state.current;
  if (!image) return;
  const pairs = chosen();
  const query = queryOf(pairs);
  const path = `/images/${image.id}${query ? `?${query}` : ""}`;
  const url = `${location.origin}${path}`;
  $("variant-url").textContent = url;
  const auth = api.token() ? ' -H "Authorization: Bearer $IMAGESVC_TOKEN"' : "";
  $("curl").textContent = `curl -o image.${extensionOf(image, pairs)}${auth} '${url}'`;
  // Gravity means something with fit=cover or fit=pad only.
  const fit = $("controls").elements.fit.value;
  $("controls").elements.gravity.disabled = fit !== "cover" && fit !== "pad";

  // A newer change wins: the request of the one before is cancelled.
  const previous = state.preview;
  previous?.abort.abort();
  const abort = new AbortController();
  state.preview = { url: previous?.url, abort };
  $("result").textContent = "Rendering…";
  try {
    const got = await api.image(path, abort.signal);
    const preview = $("preview");
    const objectUrl = URL.createObjectURL(got.blob);
    preview.src = objectUrl;
    await preview.decode();
    if (abort.signal.aborted) return;
    if (state.preview.url) URL.revokeObjectURL(state.preview.url);
    state.preview.url = objectUrl;
    preview.alt = `${image.filename || image.id}${query ? `, with ${query}` : ""}`;
    const cache = got.cache ? `, cache ${got.cache.toLowerCase()}` : "";
    $("result").textContent =
      `${preview.naturalWidth} × ${preview.naturalHeight} px ${formatOf(got.type)}, ` +
      `${bytes(got.blob.size)}${cache}`;
  } catch (error) {
    if (error.name === "AbortError" || abort.signal.aborted) return;
    $("result").textContent = `refused: ${error.message}`;
  }
}

function setUpDetail() {
  const refreshSoon = debounce(refresh, 250);
  $("controls").addEventListener("input", refreshSoon);
  $("controls").addEventListener("change", refreshSoon);
  $("controls").addEventListener("reset", () => setTimeout(refresh)); // after the reset
  $("close").addEventListener("click", closeDetail);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") closeDetail();
  });
  for (const button of document.querySelectorAll("[data-copy]")) {
    button.addEventListener("click", () => copy(button));
  }
  $("delete").addEventListener("click", remove);
  $("sign").addEventListener("click", sign);
}

async function copy(button) {
  const text = $(button.dataset.copy).textContent;
  const was = button.textContent;
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    // No clipboard (a page not on https or localhost): select it for Ctrl+C instead.
    getSelection().selectAllChildren($(button.dataset.copy));
    button.textContent = "Selected: press Ctrl+C";
  }
  setTimeout(() => {
    button.textContent = was;
  }, 1500);
}

async function remove() {
  const image = state.current;
  const name = image.filename || image.id;
  if (!confirm(`Delete ${name} and every variant of it?`)) return;
  try {
    await api.json(`/images/${image.id}`, { method: "DELETE" });
  } catch (error) {
    $("result").textContent = `not deleted: ${error.message}`;
    return;
  }
  const entry = document.querySelector(`[data-testid="gallery-item"][data-id="${image.id}"]`);
  const next = entry?.parentElement.nextElementSibling?.querySelector("button");
  entry?.parentElement.remove();
  state.opener = next || $("upload-input");
  closeDetail();
  $("gallery-status").textContent = `Deleted ${name}.`;
}

async function sign() {
  const image = state.current;
  // The same parameters as the URL above, as JSON (a flag is true).
  const params = Object.fromEntries(chosen());
  const expires_in = Number($("expires").value);
  try {
    const signed = await api.json(`/images/${image.id}/signed-urls`, {
      method: "POST",
      body: { params, expires_in },
    });
    const until = new Date(signed.expires * 1000).toLocaleString();
    $("signed-url").textContent = `${location.origin}${signed.url}`;
    $("signed-url").title = `valid until ${until}`;
    $("copy-signed").hidden = false;
  } catch (error) {
    $("signed-url").textContent = `not signed: ${error.message}`;
    $("copy-signed").hidden = true;
  }
}

// --- what this service offers ------------------------------------------------------

// Presets and whether URLs can be signed are configuration: asked for, not assumed.
async function learnService() {
  try {
    const presets = await api.json("/presets");
    for (const name of Object.keys(presets)) {
      const option = document.createElement("option");
      option.value = option.textContent = name;
      $("param-preset").append(option);
    }
  } catch {
    // no presets to offer
  }
  try {
    const doc = await api.json("/openapi.json");
    state.signing = "/images/{image_id}/signed-urls" in doc.paths;
    // The limits the service was configured with, as its document states them.
    const params = doc.paths["/images/{image_id}"].get.parameters;
    const form = $("controls").elements;
    for (const p of params) {
      if (form[p.name] && p.schema.maximum !== undefined) form[p.name].max = p.schema.maximum;
    }
  } catch {
    state.signing = false;
  }
}

setUpKey();
setUpUpload();
setUpMore();
setUpDetail();
learnService().then(() => {
  if (state.current) $("signing").hidden = !state.signing;
});
loadPage();

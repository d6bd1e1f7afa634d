// The gateway's HTTP API as the page uses it. Every request carries the key or token the
// person gave, as the gateway reads it (gateway/auth.py): `Authorization: Bearer <key>`,
// for API keys and JWTs alike. It lives in sessionStorage: it goes when the tab does.

const STORAGE_KEY = "imagesvc.token";

export function token() {
  return sessionStorage.getItem(STORAGE_KEY) || "";
}

export function setToken(value) {
  const bare = value.trim().replace(/^bearer\s+/i, ""); // a pasted header works too
  if (bare) sessionStorage.setItem(STORAGE_KEY, bare);
  else sessionStorage.removeItem(STORAGE_KEY);
}

function authHeaders() {
  const key = token();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// An answer that is not a success: the problem document's detail (RFC 9457) is what
// the gateway has to say about it, in words meant for a person.
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

async function failure(response) {
  let problem = {};
  try {
    problem = await response.json();
  } catch {
    // not JSON (a proxy's page): the status alone
  }
  return new ApiError(response.status, problem);
}

export async function json(path, { method = "GET", body, signal } = {}) {
  const headers = authHeaders();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    signal,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw await failure(response);
  return response.status === 204 ? null : response.json();
}

// What Chromium's <img> asks for, so that format=auto picks for the preview what it
// would pick for an <img> tag on a web page.
const ACCEPT = "image/avif,image/webp,image/apng,image/*,*/*;q=0.8";

// An image fetched rather than given to <img src>, because an <img> cannot send the key:
// the caller shows it through an object URL (URL.createObjectURL) and revokes it later.
export async function image(path, signal) {
  const response = await fetch(path, { headers: { ...authHeaders(), Accept: ACCEPT }, signal });
  if (!response.ok) throw await failure(response);
  return {
    blob: await response.blob(),
    type: response.headers.get("Content-Type") || "",
    cache: response.headers.get("X-Cache") || "",
  };
}

// XMLHttpRequest rather than fetch: only it reports upload progress.
export function upload(file, visibility, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", visibility ? `/images?visibility=${visibility}` : "/images");
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    });
    xhr.addEventListener("load", () => {
      if (xhr.status === 201) resolve(xhr.response);
      else reject(new ApiError(xhr.status, xhr.response || {}));
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, { detail: "the connection failed" })));
    const form = new FormData();
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

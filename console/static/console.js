// The Sagawire console's page: plain JavaScript, no build step, no third-party code.
// It draws what the console's JSON API and server-sent events answer (console/app.py);
// a saga's graph is SVG laid out by the server (console/graph.py). Text from the API
// only ever goes into text nodes and attributes, never into HTML.

const main = document.getElementById("main");
const who = document.getElementById("who");
const SVG = "http://www.w3.org/2000/svg";
const STATUSES = ["running", "compensating", "completed", "compensated", "needs_attention", "stalled"];

let session = { role: "" };
let closers = []; // what the current view must close when the user leaves it

// -- small helpers ---------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAll(node, attrs);
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function sv(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  setAll(node, attrs);
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function setAll(node, attrs) {
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
}

function badge(text, kind = text) {
  return el("span", { class: `badge ${kind}`, "data-badge": kind }, text.replaceAll("_", " "));
}

class ApiError extends Error {
  constructor(status, body) {
    super(body.message || `HTTP ${status}`);
    this.status = status;
    this.code = body.error || "";
  }
}

async function api(path, options = {}) {
  const init = { credentials: "same-origin", headers: { accept: "application/json" }, ...options };
  if (init.method && init.method !== "GET") init.headers["x-sagawire-console"] = "1";
  if (init.body !== undefined) init.headers["content-type"] = "application/json";
  const reply = await fetch(path, init);
  const body = await reply.json().catch(() => ({}));
  if (!reply.ok) throw new ApiError(reply.status, body);
  return body;
}

// Server-sent events: handlers by event name; the view closes it when the user leaves.
function follow(path, handlers, live) {
  const source = new EventSource(path);
  source.onopen = () => live && live.setAttribute("data-state", "live");
  source.onerror = () => {
    if (live && live.getAttribute("data-state") !== "settled") live.setAttribute("data-state", "broken");
  };
  for (const [name, handle] of Object.entries(handlers)) {
    source.addEventListener(name, (event) => handle(JSON.parse(event.data)));
  }
  closers.push(() => source.close());
  return source;
}

function pad(n, width = 2) { return String(n).padStart(width, "0"); }

function zone(date) {
  const minutes = -date.getTimezoneOffset();
  const sign = minutes >= 0 ? "+" : "-";
  return `UTC${sign}${pad(Math.floor(Math.abs(minutes) / 60))}:${pad(Math.abs(minutes) % 60)}`;
}

// Local time with milliseconds; the date too when it is not today.
function clock(iso, withDate = false) {
  if (!iso) return "–";
  const d = new Date(iso);
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  const today = new Date().toDateString() === d.toDateString();
  return withDate || !today ? `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}` : time;
}

function duration(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1000) return `${ms.toFixed(ms < 10 ? 1 : 0)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(2)} s`;
  return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
}

function clip(text, most) { return text.length > most ? `${text.slice(0, most - 1)}…` : text; }

function shortId(id) { return `…${id.slice(-12)}`; }

function failureText(failure) {
  if (!failure) return "";
  const what = failure.reason || failure.code;
  return `${failure.step ? failure.step + ": " : ""}${what}${failure.message ? " — " + failure.message : ""}`;
}

function problemBox(error) {
  const text = error instanceof ApiError ? `${error.code || error.status}: ${error.message}` : String(error);
  const box = el("div", { class: "error-box", "data-problem": error.code || "error" }, text);
  if (error.status === 401) {
    box.append(" ", el("a", { href: "#/signin" }, "Sign in with a token"));
  }
  return box;
}

// -- session ---------------------------------------------------------------------------

async function loadSession() {
  try {
    session = await api("/api/session");
  } catch (error) {
    session = { role: "", problem: error };
  }
  drawWho();
}

function drawWho() {
  who.replaceChildren();
  if (session.role) {
    const name = session.subject || session.role;
    const via = session.source === "console" ? "the console's credential" : "your token";
    who.append(
      el("span", { id: "whoami", "data-role": session.role }, `${name} · ${session.role}`),
      el("span", { class: "muted small" }, `(${via})`),
    );
  } else {
    who.append(el("span", { id: "whoami", "data-role": "" }, "not signed in"));
  }
  if (session.source === "cookie") {
    who.append(el("button", { id: "signout", onclick: signOut }, "Sign out"));
  } else {
    who.append(el("button", { onclick: () => (location.hash = "#/signin") }, "Sign in"));
  }
}

async function signOut() {
  session = await api("/api/session", { method: "DELETE" });
  drawWho();
  route();
}

function signInView() {
  const area = el("textarea", { id: "token", placeholder: "eyJhbGciOi…", spellcheck: "false" });
  const result = el("div");
  const submit = async (event) => {
    event.preventDefault();
    result.replaceChildren();
    try {
      session = await api("/api/session", { method: "POST", body: JSON.stringify({ token: area.value }) });
      drawWho();
      location.hash = "#/";
    } catch (error) {
      result.append(problemBox(error));
    }
  };
  main.replaceChildren(
    el("div", { class: "signin" },
      el("h1", {}, "Sign in with a token"),
      el("p", { class: "muted" },
        "Paste a bearer token for the coordinator's API (",
        el("code", {}, "sagawire token issue --customer alice"), " or ",
        el("code", {}, "--operator"),
        "). A customer's token shows that customer's sagas only; an operator's shows every saga and may retry. ",
        "The console keeps it in an HttpOnly cookie for this site and sends it with each of its calls."),
      el("form", { id: "signin-form", onsubmit: submit },
        area,
        el("p", {}, el("button", { class: "primary", type: "submit" }, "Sign in"))),
      result));
}

// -- the sagas -------------------------------------------------------------------------

function filtersFromHash() {
  const query = new URLSearchParams(location.hash.split("?")[1] || "");
  return Object.fromEntries([...query.entries()].filter(([, v]) => v));
}

function localInput(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

async function sagasView() {
  const filters = filtersFromHash();
  const live = el("span", { class: "live", id: "live", "data-state": "connecting" }, "live");
  const counts = el("div", { class: "counts", id: "counts" });
  const body = el("tbody", { id: "saga-rows" });
  const pager = el("div", { class: "pager" });
  const tokens = [""]; // page tokens: the first page, then each "older" one
  let seen = new Set();

  const definitions = await api("/api/definitions").catch(() => ({ definitions: [] }));
  const select = (name, values, label) =>
    el("label", {}, label,
      el("select", { name, onchange: apply },
        el("option", { value: "" }, "all"),
        values.map((v) => el("option", { value: v, selected: filters[name] === v }, v.replaceAll("_", " ")))));
  const when = (name, label) =>
    el("label", {}, label, el("input", { type: "datetime-local", name, value: localInput(filters[name]), onchange: apply }));
  const form = el("form", { class: "filters", id: "filters", onsubmit: (e) => { e.preventDefault(); apply(); } },
    select("status", STATUSES, "status"),
    select("saga", definitions.definitions.map((d) => d.name), "saga"),
    select("mode", ["orchestration", "choreography"], "mode"),
    when("after", "created from"),
    when("before", "created before"),
    el("button", { type: "button", onclick: () => { location.hash = "#/"; } }, "Clear"));

  function apply() {
    const data = new FormData(form);
    const query = new URLSearchParams();
    for (const [key, value] of data.entries()) {
      if (!value) continue;
      query.set(key, key === "after" || key === "before" ? new Date(value).toISOString() : value);
    }
    location.hash = `#/?${query}`;
  }

  main.replaceChildren(
    el("h1", {}, "Sagas", live),
    el("p", { class: "muted small" }, `Newest first. Times in your zone (${zone(new Date())}).`),
    counts,
    form,
    el("section", { class: "panel" },
      el("table", {},
        el("thead", {}, el("tr", {},
          ["saga", "type", "mode", "status", "customer", "total", "created", "took", "steps", "failure"]
            .map((h) => el("th", { class: h === "took" || h === "steps" ? "num" : "" }, h)))),
        body),
      pager));

  const query = new URLSearchParams(filters);
  const drawRows = (page, flash) => {
    body.replaceChildren();
    if (!page.sagas.length) {
      body.append(el("tr", {}, el("td", { colspan: 10, class: "muted" }, "No sagas match.")));
    }
    for (const saga of page.sagas) {
      const fresh = flash && !seen.has(`${saga.saga_id}/${saga.status}`);
      body.append(el("tr", {
          class: `saga-row${fresh ? " fresh" : ""}`, "data-saga-id": saga.saga_id, "data-status": saga.status,
        },
        el("td", {}, el("a", { class: "mono", href: `#/sagas/${saga.saga_id}`, title: saga.saga_id }, shortId(saga.saga_id))),
        el("td", {}, saga.saga),
        el("td", {}, saga.mode),
        el("td", {}, badge(saga.status)),
        el("td", {}, saga.summary.customer_id),
        el("td", { class: "num" }, saga.summary.total),
        el("td", { title: saga.created_at }, clock(saga.created_at)),
        el("td", { class: "num" }, duration(saga.duration_ms)),
        el("td", { class: "num" }, `${saga.summary.steps_done}/${saga.summary.steps_total}`),
        el("td", { class: "small" }, saga.summary.failure)));
    }
    seen = new Set(page.sagas.map((s) => `${s.saga_id}/${s.status}`));
    pager.replaceChildren(
      el("button", { id: "newer", disabled: tokens.length === 1, onclick: () => turn(-1) }, "← Newer"),
      el("span", { class: "muted small" }, `page ${tokens.length}`),
      el("button", { id: "older", disabled: !page.next_page_token, onclick: () => turn(+1, page.next_page_token) }, "Older →"));
  };
  const drawCounts = (found) => {
    counts.replaceChildren();
    if (!found) return;
    const pick = (status) => {
      const next = { ...filters };
      if (status && filters.status !== status) next.status = status; else delete next.status;
      location.hash = `#/?${new URLSearchParams(next)}`;
    };
    counts.append(el("button", { class: `count${filters.status ? "" : " selected"}`, "data-count": "total", onclick: () => pick("") },
      el("span", { class: "n" }, found.total), el("span", { class: "what" }, "all")));
    for (const status of STATUSES) {
      counts.append(el("button", {
          class: `count ${status}${filters.status === status ? " selected" : ""}`, "data-count": status,
          onclick: () => pick(status),
        },
        el("span", { class: "n" }, found.by_status[status]),
        el("span", { class: "what" }, status.replaceAll("_", " "))));
    }
  };

  async function turn(step, token) {
    if (step > 0) tokens.push(token); else tokens.pop();
    const at = new URLSearchParams(query);
    if (tokens.at(-1)) at.set("page_token", tokens.at(-1));
    try {
      drawRows(await api(`/api/sagas?${at}`), false);
    } catch (error) {
      body.replaceChildren(el("tr", {}, el("td", { colspan: 10 }, problemBox(error))));
    }
  }

  follow(`/api/sagas/stream?${query}`, {
    sagas: (answer) => {
      if (answer.problem) {
        live.setAttribute("data-state", "broken");
        counts.replaceChildren(problemBox(new ApiError(0, answer.problem)));
        return;
      }
      live.setAttribute("data-state", "live");
      drawCounts(answer.counts);
      if (tokens.length === 1) drawRows(answer, true); // live on the first page only
    },
  }, live);
}

// -- one saga --------------------------------------------------------------------------

function attemptLine(a) {
  const error = [a.error_reason || a.error_code, a.error_message].filter(Boolean).join(": ");
  return `#${a.number} ${a.phase} ${a.outcome} at ${clock(a.started_at)} in ${duration(a.duration_ms)}${error ? " — " + error : ""}`;
}

// A saga's (or a definition's) graph as SVG: nodes coloured by status, with their
// attempts as dots, the pivot marked, and the compensation path drawn back.
function drawGraph(detail, onPick, picked) {
  const g = detail.graph;
  const steps = Object.fromEntries(detail.steps.map((s) => [s.name, s]));
  const svg = sv("svg", {
    class: "graph", id: "graph", width: g.width, height: g.height, viewBox: `0 0 ${g.width} ${g.height}`,
    role: "img", "aria-label": `graph of ${detail.saga || detail.name}`,
  });
  svg.append(sv("defs", {},
    sv("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
      sv("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrow" })),
    sv("marker", { id: "arrow-undo", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
      sv("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrow-undo" }))));
  for (const edge of g.edges) {
    const taken = ["succeeded", "compensated", "compensating"].includes(steps[edge.source]?.status)
      && steps[edge.target]?.status !== "pending";
    svg.append(sv("path", {
      class: `edge${taken ? " taken" : ""}`, d: edge.path, "marker-end": "url(#arrow)",
      "data-edge": `${edge.source}->${edge.target}`,
    }));
  }
  for (const edge of detail.reverse_edges || []) {
    svg.append(sv("path", {
      class: "reverse", d: edge.path, "marker-end": "url(#arrow-undo)",
      "data-reverse": `${edge.source}->${edge.target}`, "data-wave": edge.wave,
    }, sv("title", {}, `compensation ${edge.wave}: ${edge.target}`)));
  }
  for (const node of g.nodes) {
    const step = steps[node.name];
    const classes = ["node", `status-${step.status || "declared"}`];
    if (step.failed_here) classes.push("failed-here");
    if (node.name === picked) classes.push("selected");
    const group = sv("g", {
      class: classes.join(" "), transform: `translate(${node.x} ${node.y})`,
      "data-step": node.name, "data-status": step.status || "declared", "data-pivot": step.pivot ? "true" : "false",
      tabindex: 0, onclick: () => onPick && onPick(node.name),
    });
    const tip = [`${step.name}: ${step.participant}.${step.action}`, `status: ${step.status}`];
    if (step.compensation) tip.push(`undone by ${step.participant}.${step.compensation}`);
    if (step.pivot) tip.push("the pivot: once it succeeds the saga only goes forward");
    if (step.forward_only) tip.push("after the pivot: retried until it succeeds, never undone");
    tip.push(...step.attempts.map(attemptLine), ...(step.events || []).map((e) => `event ${e}`));
    group.append(
      sv("title", {}, tip.join("\n")),
      sv("rect", { class: "node-box", width: node.width, height: node.height, rx: 10 }),
      sv("text", { class: "node-title", x: 12, y: 21 }, step.name),
      sv("text", { class: "node-sub", x: 12, y: 37 },
        clip(`${step.participant}.${step.action}${step.compensation ? " / " + step.compensation : ""}`, 34)),
      step.status ? sv("text", { class: "node-status", x: node.width - 10, y: 56, "text-anchor": "end" },
        step.status.replaceAll("_", " ")) : null);
    step.attempts.slice(0, 12).forEach((a, i) => {
      const x = 16 + i * 13;
      const cls = `dot o-${a.outcome}`;
      group.append(a.phase === "compensate"
        ? sv("rect", { class: cls, x: x - 5, y: 47, width: 10, height: 10, rx: 2, "data-attempt": `${a.phase}#${a.number}` },
            sv("title", {}, attemptLine(a)))
        : sv("circle", { class: cls, cx: x, cy: 52, r: 5, "data-attempt": `${a.phase}#${a.number}` },
            sv("title", {}, attemptLine(a))));
    });
    if (step.pivot) {
      group.append(sv("g", { class: "pivot", "data-pivot-mark": node.name, transform: `translate(${node.width - 46} -9)` },
        sv("rect", { class: "pivot-mark", width: 42, height: 17, rx: 8 }),
        sv("text", { class: "pivot-text", x: 21, y: 12, "text-anchor": "middle" }, "PIVOT")));
    }
    if (step.compensation_wave) {
      group.append(sv("g", { "data-compensation-wave": step.compensation_wave, transform: `translate(${node.width - 12} ${node.height - 2})` },
        sv("circle", { class: "wave-mark", r: 11 }),
        sv("text", { class: "wave-text", y: 4, "text-anchor": "middle" }, `↶${step.compensation_wave}`)));
    }
    svg.append(group);
  }
  return svg;
}

function legend() {
  return el("div", { class: "legend" },
    el("span", { class: "l-succeeded" }, "succeeded"),
    el("span", { class: "l-running" }, "running"),
    el("span", { class: "l-rejected" }, "rejected / failed"),
    el("span", { class: "l-compensated" }, "compensated"),
    el("span", { class: "l-pending" }, "not run"),
    el("span", { class: "l-undo" }, "compensations, in the order they ran (↶1, ↶2 …)"),
    el("span", { class: "muted" }, "● attempt ■ compensation attempt"));
}

const KIND_CLASS = {
  step_succeeded: "k-ok", saga_completed: "k-ok", compensation_done: "k-undo",
  saga_compensating: "k-undo", compensation_started: "k-undo", saga_compensated: "k-undo",
  step_rejected: "k-fail", step_failed: "k-fail", step_attempt_failed: "k-fail",
  compensation_attempt_failed: "k-fail", saga_needs_attention: "k-fail", saga_stalled: "k-fail",
  saga_deadline_exceeded: "k-fail",
};

async function sagaView(sagaId) {
  const live = el("span", { class: "live", id: "live", "data-state": "connecting" }, "live");
  const head = el("div", { id: "saga-head" });
  const graphBox = el("div", { class: "graph-wrap" });
  const picked = el("div", { id: "picked" });
  const attemptsBody = el("tbody", { id: "attempts" });
  const compensations = el("div", { id: "compensations" });
  const dataBox = el("pre", { class: "data", id: "saga-data" });
  const timeline = el("tbody", { id: "timeline" });
  const traceBox = el("div", { id: "trace" }, el("p", { class: "muted" }, "Loading the trace…"));
  let detail = null;
  let pickedStep = null;
  let started = null;
  let traceLoaded = false;

  main.replaceChildren(
    el("p", { class: "small" }, el("a", { href: "#/" }, "← Sagas")),
    head,
    el("section", { class: "panel" },
      el("h2", {}, "The saga's graph ", live),
      graphBox, legend(), picked),
    el("div", { class: "two" },
      el("section", { class: "panel" },
        el("h2", {}, "Steps and attempts"),
        el("table", {}, el("thead", {}, el("tr", {},
          ["step", "phase", "#", "started", "took", "outcome", "error"].map((h) => el("th", {}, h)))),
          attemptsBody)),
      el("div", {},
        el("section", { class: "panel" }, el("h2", {}, "Compensations, in the order they ran"), compensations),
        el("section", { class: "panel" }, el("h2", {}, "Data"), dataBox))),
    el("section", { class: "panel" },
      el("h2", {}, "Transitions"),
      el("table", {}, el("thead", {}, el("tr", {},
        ["#", "at", "+", "what", "step", "attempt", "saga", "detail"].map((h) => el("th", {}, h)))), timeline)),
    el("section", { class: "panel" }, el("h2", {}, "Trace"), traceBox));

  const pick = (name) => { pickedStep = pickedStep === name ? null : name; draw(); };

  function draw() {
    if (!detail) return;
    started = started || detail.created_at;
    const facts = [
      ["status", badge(detail.status)], ["mode", detail.mode], ["customer", detail.summary.customer_id || "–"],
      ["total", detail.summary.total || "–"], ["created", clock(detail.created_at, true)],
      ["took", detail.finished_at ? duration(detail.duration_ms) : "still going"],
      ["deadline", clock(detail.deadline)], ["trace", detail.trace_id || "–"],
    ];
    const retry = detail.retryable && session.role === "operator"
      ? el("button", { class: "danger", id: "retry", onclick: retrySaga }, "Retry")
      : null;
    head.replaceChildren(...[
      el("h1", { "data-saga-id": detail.saga_id, "data-status": detail.status },
        detail.saga, el("span", { class: "mono muted small" }, detail.saga_id), badge(detail.status), retry),
      el("div", { class: "facts" }, facts.map(([k, v]) => el("div", {}, el("span", { class: "k" }, k), el("span", {}, v)))),
      detail.failure ? el("div", { class: "failure-line", id: "failure" }, `Failed at ${failureText(detail.failure)}`) : null,
      detail.retryable && session.role !== "operator"
        ? el("div", { class: "note", id: "needs-operator" }, "This saga needs an operator: only an operator's token may retry it.") : null,
    ].filter(Boolean));
    graphBox.replaceChildren(drawGraph(detail, pick, pickedStep));
    const step = detail.steps.find((s) => s.name === pickedStep);
    picked.replaceChildren(...(step ? [el("div", { class: "note", id: "picked-step" },
      el("strong", {}, step.name), ` — ${step.participant}.${step.action}`,
      step.compensation ? `, undone by ${step.compensation}` : ", cannot be undone",
      step.pivot ? " — the pivot" : "", step.forward_only ? " — after the pivot" : "",
      el("ul", {}, step.attempts.length ? step.attempts.map((a) => el("li", {}, attemptLine(a))) : el("li", {}, "no attempt yet")),
      step.events.length ? el("div", { class: "events" }, `events observed: ${step.events.join(", ")}`) : null)] : []));

    attemptsBody.replaceChildren();
    for (const s of detail.steps) {
      if (!s.attempts.length) {
        attemptsBody.append(el("tr", { "data-step": s.name }, el("td", {}, s.name), el("td", { colspan: 6, class: "muted" }, s.status)));
      }
      for (const a of s.attempts) {
        attemptsBody.append(el("tr", { "data-step": s.name, "data-outcome": a.outcome },
          el("td", {}, s.name), el("td", {}, a.phase), el("td", {}, a.number),
          el("td", { title: a.started_at }, clock(a.started_at)), el("td", { class: "num" }, duration(a.duration_ms)),
          el("td", {}, badge(a.outcome)),
          el("td", { class: "small" }, [a.error_reason || a.error_code, a.error_message].filter(Boolean).join(": "))));
      }
    }
    compensations.replaceChildren(detail.compensations.length
      ? el("ol", { class: "compensations" }, detail.compensations.map((c) => {
          const s = detail.steps.find((x) => x.name === c.step);
          return el("li", { "data-step": c.step, "data-wave": c.wave },
            el("strong", {}, `↶${c.wave} `), `${s.participant}.${s.compensation} (undoes ${c.step}) at ${clock(c.started_at)}`,
            c.finished_at ? `, done in ${duration(new Date(c.finished_at) - new Date(c.started_at))}` : ", running");
        }))
      : el("p", { class: "muted" }, detail.status === "compensating" ? "Starting…" : "None: nothing was undone."));
    dataBox.textContent = detail.data.fields
      ? `${detail.data.type}\n${JSON.stringify(detail.data.fields, null, 2)}`
      : `${detail.data.type} (not known to this console: ${detail.data.bytes || "empty"})`;
  }

  function addTransition(t) {
    const since = started ? new Date(t.at) - new Date(started) : 0;
    timeline.append(el("tr", { class: `transition ${KIND_CLASS[t.kind] || ""}${detail ? " arrived" : ""}`, "data-kind": t.kind, "data-sequence": t.sequence },
      el("td", { class: "num" }, t.sequence), el("td", { class: "num" }, clock(t.at)), el("td", { class: "num" }, duration(since)),
      el("td", { class: "kind" }, t.kind), el("td", {}, t.step), el("td", {}, t.attempt || ""),
      el("td", {}, badge(t.status)), el("td", { class: "small" }, t.detail)));
  }

  async function retrySaga() {
    try {
      detail = await api(`/api/sagas/${sagaId}/retry`, { method: "POST" });
      draw();
      closeAll();
      following();
    } catch (error) {
      head.append(problemBox(error));
    }
  }

  async function loadTrace() {
    traceBox.replaceChildren(el("p", { class: "muted" }, "Loading the trace…"));
    try {
      drawTrace(traceBox, await api(`/api/sagas/${sagaId}/trace`), () => loadTrace());
      traceLoaded = true;
    } catch (error) {
      traceBox.replaceChildren(problemBox(error));
    }
  }

  function following() {
    timeline.replaceChildren();
    follow(`/api/sagas/${sagaId}/stream`, {
      transition: (t) => {
        if (timeline.querySelector(`[data-sequence="${t.sequence}"]`)) return;
        if (!started && t.kind === "saga_started") started = t.at;
        addTransition(t);
      },
      saga: (d) => { detail = d; draw(); },
      resumed: () => head.querySelector("#stream-problem")?.remove(),
      end: () => {
        live.setAttribute("data-state", "settled");
        live.textContent = "settled";
        // The last spans are flushed a moment after the saga settles.
        setTimeout(loadTrace, traceLoaded ? 0 : 1500);
      },
      problem: (p) => {
        head.querySelector("#stream-problem")?.remove();
        head.append(el("div", { class: "note", id: "stream-problem" },
          `Live updates interrupted (${p.error}: ${p.message}); trying again.`));
      },
    }, live);
  }

  try {
    detail = await api(`/api/sagas/${sagaId}`);
  } catch (error) {
    main.replaceChildren(el("p", { class: "small" }, el("a", { href: "#/" }, "← Sagas")), problemBox(error));
    return;
  }
  draw();
  following();
  if (!detail.settled) loadTrace();
}

function drawTrace(box, answer, reload) {
  box.replaceChildren();
  const bar = el("p", { class: "small muted" }, `From ${answer.source}. `,
    el("button", { onclick: reload, id: "reload-trace" }, "Reload"));
  if (answer.link) bar.append(" ", el("a", { href: answer.link, target: "_blank", rel: "noopener", id: "jaeger-link" }, "Open in Jaeger ↗"));
  box.append(bar);
  if (answer.error) box.append(el("div", { class: "note" }, answer.error));
  if (!answer.traces.length) {
    box.append(el("p", { class: "muted", id: "no-trace" }, "No spans found for this saga (yet)."));
    return;
  }
  for (const trace of answer.traces) {
    const rows = el("tbody");
    for (const row of trace.rows) {
      const name = el("td", { class: "span-name", title: JSON.stringify(row.attributes, null, 1) }, row.name);
      name.style.paddingLeft = `${6 + row.depth * 14}px`;
      const fill = el("div", { class: `bar${row.error ? " error" : ""}` });
      fill.style.left = `${(row.offset * 100).toFixed(3)}%`;
      fill.style.width = `${Math.max(row.share * 100, 0.2).toFixed(3)}%`;
      rows.append(el("tr", { class: "span-row", "data-error": row.error ? "true" : "false" },
        el("td", { class: `svc svc-${row.service}` }, row.service), name,
        el("td", { class: "num" }, `+${row.start_ms.toFixed(1)} ms`), el("td", { class: "num" }, `${row.duration_ms.toFixed(1)} ms`),
        el("td", { class: "track" }, fill), el("td", {}, row.status === "ok" ? "ok" : badge(row.status, "error"))));
    }
    box.append(
      el("p", { class: "small" }, el("span", { class: "mono" }, trace.trace_id),
        ` · ${trace.spans} spans · ${duration(trace.duration_ms)} · ${trace.services.join(", ")}`,
        trace.link ? el("a", { href: trace.link, target: "_blank", rel: "noopener", class: "jaeger" }, " Jaeger ↗") : null),
      el("table", { class: "waterfall", "data-trace-id": trace.trace_id }, rows));
  }
}

// -- operations ------------------------------------------------------------------------

function breakersView() {
  const live = el("span", { class: "live", id: "live", "data-state": "connecting" }, "live");
  const body = el("tbody", { id: "breakers" });
  main.replaceChildren(
    el("h1", {}, "Breakers and bulkheads", live),
    el("p", { class: "muted small" },
      "One circuit breaker per participant: it opens on the failure rate over a sliding window and sheds load; ",
      "it never decides a saga's outcome. The bulkhead bounds the calls in flight to each participant."),
    el("section", { class: "panel" },
      el("table", {}, el("thead", {}, el("tr", {},
        ["participant", "state", "failed / calls", "opens at", "waiting", "in flight", "opened", "history"]
          .map((h) => el("th", {}, h)))), body)));
  if (session.role !== "operator") {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 8 },
      problemBox(new ApiError(403, { error: "PERMISSION_DENIED", message: "only an operator's token may read the breakers" })))));
    live.remove();
    return;
  }
  follow("/api/breakers/stream", {
    breakers: (answer) => {
      if (answer.problem) { body.replaceChildren(el("tr", {}, el("td", { colspan: 8 }, problemBox(new ApiError(0, answer.problem))))); return; }
      body.replaceChildren(...answer.breakers.map((b) => el("tr", { "data-participant": b.participant, "data-state": b.state },
        el("td", {}, el("strong", {}, b.participant)),
        el("td", {}, badge(b.state)),
        el("td", {}, `${b.failure_count} / ${b.window_calls} in ${b.window_seconds}s`),
        el("td", {}, `${Math.round(b.failure_rate_threshold * 100)}% of ≥${b.minimum_calls}`),
        el("td", {}, `${b.waiting_for_breaker} for the breaker, ${b.waiting_for_bulkhead} for a slot`),
        el("td", {}, `${b.in_flight} / ${b.bulkhead_limit}`),
        el("td", {}, b.opened_at ? clock(b.opened_at) : "–"),
        el("td", {}, b.transitions.length
          ? el("div", { class: "breaker-history" }, b.transitions.map((t) =>
              el("span", { title: t.at }, badge(t.to), el("span", { class: "small muted" }, ` ${clock(t.at)}`))))
          : el("span", { class: "muted" }, "no change yet")))));
    },
  }, live);
}

async function definitionsView() {
  main.replaceChildren(el("h1", {}, "Saga definitions"));
  let answer;
  try {
    answer = await api("/api/definitions");
  } catch (error) {
    main.append(problemBox(error));
    return;
  }
  for (const d of answer.definitions) {
    main.append(el("section", { class: "panel", "data-definition": d.name },
      el("h2", {}, d.name, " ", badge(d.mode, "idle")),
      el("p", { class: "muted small" }, `data ${d.data_type}, deadline ${d.deadline_seconds} s`),
      el("div", { class: "graph-wrap" }, drawGraph(d, null, null)),
      el("table", {}, el("thead", {}, el("tr", {}, ["step", "call", "undone by", "after"].map((h) => el("th", {}, h)))),
        el("tbody", {}, d.steps.map((s) => el("tr", {},
          el("td", {}, s.name, s.pivot ? " (pivot)" : "", s.forward_only ? " (forward only)" : ""),
          el("td", {}, `${s.participant}.${s.action}`), el("td", {}, s.compensation || "–"),
          el("td", {}, s.after.join(", ") || "–")))))));
  }
}

// -- routing ---------------------------------------------------------------------------

function closeAll() {
  for (const close of closers.splice(0)) close();
}

async function route() {
  closeAll();
  const path = location.hash.replace(/^#/, "").split("?")[0] || "/";
  for (const link of document.querySelectorAll("nav a")) {
    const target = link.getAttribute("data-nav");
    link.classList.toggle("current",
      (target === "sagas" && (path === "/" || path.startsWith("/sagas"))) || path === `/${target}`);
  }
  try {
    if (path.startsWith("/sagas/")) await sagaView(decodeURIComponent(path.slice(7)));
    else if (path === "/breakers") breakersView();
    else if (path === "/definitions") await definitionsView();
    else if (path === "/signin") signInView();
    else await sagasView();
  } catch (error) {
    main.replaceChildren(problemBox(error));
  }
}

window.addEventListener("hashchange", route);
window.addEventListener("beforeunload", closeAll);
await loadSession();
await route();

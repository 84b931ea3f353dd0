// The sandbox phone page: polls the thread and the conversation state, sends texts, starts outbound chats,
// lets an operator take a conversation over, answer as the business and give it back, and shows the operator events
// the sandbox's receiver verified for the number.
"use strict";

const $ = (id) => document.getElementById(id);
let config = null;
let lastRendered = "";
let lastEvents = "";
let refusedNumber = null;  // the number as typed that the backend refused: not asked about again until it changes

async function api(path, options = {}) {
  const response = await fetch(path, {headers: {"Content-Type": "application/json"}, ...options});
  let body = {};
  try { body = await response.json(); } catch (e) { /* not JSON */ }
  return {ok: response.ok, status: response.status, body};
}

function person() {
  return $("number").value.trim();
}

function time(epochSeconds) {
  return new Date(epochSeconds * 1000).toLocaleTimeString();
}

function renderThread(messages) {
  const key = JSON.stringify(messages);
  if (key === lastRendered) return;
  lastRendered = key;
  const thread = $("thread");
  const atBottom = thread.scrollTop + thread.clientHeight >= thread.scrollHeight - 30;
  thread.replaceChildren();
  for (const m of messages) {
    const bubble = document.createElement("div");
    bubble.className = `bubble ${m.direction}`;
    bubble.textContent = (m.body || "") + (m.num_media ? `${m.body ? "\n" : ""}[picture]` : "");
    if (m.sid) bubble.dataset.sid = m.sid;
    const meta = document.createElement("div");
    meta.className = `meta ${m.direction}`;
    if (m.direction === "in") {
      meta.textContent = `${time(m.created_at)} · ` + (m.error ? m.error : `webhook ${m.webhook_status}`);
      if (m.error) meta.classList.add("error");
    } else if (m.direction === "out") {
      meta.append(`${time(m.created_at)} · ${m.num_segments} segment${m.num_segments === 1 ? "" : "s"} · `);
      const status = document.createElement("span");
      status.className = `status ${m.status}`;
      status.textContent = m.status;
      meta.append(status);
    } else {
      meta.textContent = `${time(m.created_at)} · answered by Twilio`;
    }
    thread.append(bubble, meta);
  }
  if (atBottom) thread.scrollTop = thread.scrollHeight;
}

function renderState(state) {
  $("state-chat").textContent = state.chat_id || "(none yet)";
  $("state-optout").textContent = state.opted_out ? "yes (STOP)" : "no";
  const idle = state.idle_ends_chat_in_seconds;
  $("state-idle").textContent = idle === null || idle === undefined ? "–" :
    `chat ends in ${Math.floor(idle / 60)}m ${idle % 60}s without a message`;
  $("state-waiting").textContent = String(state.waiting_messages);
  // One line per delivery.
  $("state-recent").replaceChildren(...(state.recent.length ? state.recent.slice(0, 5).map((r) => {
    const line = document.createElement("div");
    line.textContent = `${r.sid.slice(0, 8)}…: ${r.status || "?"}`;
    return line;
  }) : ["–"]));
}

function renderHandoff(state) {
  if (document.activeElement !== $("handoff")) $("handoff").checked = Boolean(state.handoff);
  $("handoff-label").textContent = state.handoff ? "Handed off: uncheck to give it back to the agent" : "Take over";
  $("away-log").textContent = (state.away_log || []).length ? "Said while the agent was away:\n" +
    state.away_log.map((e) => `${time(e.at)} ${e.who}: ${e.text}${e.heard_by_agent ? " (heard by the agent)" : ""}`)
      .join("\n") : "";
  $("away-log").style.whiteSpace = "pre-wrap";
}

function renderEvents(answer) {
  const key = JSON.stringify(answer.events);
  if (key === lastEvents) return;
  lastEvents = key;
  if (!answer.events.length) {
    const none = document.createElement("p");
    none.className = "note";
    none.textContent = "No events for this number yet.";
    $("events").replaceChildren(none);
    return;
  }
  $("events").replaceChildren(...answer.events.map((kept) => {
    const item = document.createElement("div");
    item.className = "event";
    item.dataset.type = kept.event.type;
    const kind = document.createElement("span");
    kind.className = "kind";
    kind.textContent = kept.event.type;
    const when = document.createElement("span");
    when.className = "when";
    when.textContent = kept.event.created_at ? new Date(kept.event.created_at).toLocaleTimeString() : "";
    const verified = document.createElement("span");
    verified.className = "verified";
    verified.textContent = kept.verified ? "\u2713 signature verified" : "";
    const data = document.createElement("pre");
    data.textContent = `${kept.event.id}\n${JSON.stringify(kept.event.data, null, 1)}`;
    item.append(kind, when, verified, data);
    return item;
  }));
}

function adminError(answer) {
  const error = answer.body.error || (answer.body.answer && answer.body.answer.error) || {};
  return typeof error === "string" ? error : (error.message || `failed (${answer.status})`);
}

async function toggleHandoff() {
  const on = $("handoff").checked;
  $("operator-note").textContent = on ? "Taking over…" : "Giving it back…";
  const answer = await api("/api/handoff", {method: "POST", body: JSON.stringify({number: person(), on})});
  $("operator-note").textContent = answer.ok ?
    (on ? "You have the conversation: the agent does not answer." : "The agent answers again.") : adminError(answer);
  poll();
}

async function sendAsBusiness() {
  const message = $("operator-message").value;
  $("operator-note").textContent = "Sending…";
  // One key per message: a double click (or a retried request) sends one SMS.
  const key = (window.crypto && crypto.randomUUID) ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`;
  const answer = await api("/api/operator", {method: "POST", body: JSON.stringify({number: person(), message, key})});
  if (answer.ok) {
    $("operator-note").textContent = "Sent as the business.";
    $("operator-message").value = "";
  } else {
    $("operator-note").textContent = adminError(answer);
  }
  poll();
}

function clearConversation() {
  // Nothing shown belongs to a number the page is not using: no thread, no state, until a number is read.
  lastRendered = "";
  $("thread").replaceChildren();
  for (const id of ["state-chat", "state-optout", "state-idle", "state-waiting"]) $(id).textContent = "–";
  $("state-recent").replaceChildren("–");
  $("away-log").textContent = "";
  lastEvents = "";
  $("events").replaceChildren();
}

async function poll() {
  const typed = person();
  if (!typed || typed === refusedNumber) return;  // asking again would get the same 400 every 700 ms
  const number = encodeURIComponent(typed);
  const [thread, state, events] = await Promise.all([
    api(`/api/thread?number=${number}`), api(`/api/conversation?number=${number}`),
    config.events.shown ? api(`/api/events?number=${number}`) : Promise.resolve(null)]);
  if (typed !== person()) return;  // changed while asking: the next poll asks about the new number
  // The backend reads the number as the admin API does and says what is wrong with it.
  if (thread.status === 400) {
    refusedNumber = typed;
    $("number-error").textContent = thread.body.error || "";
    clearConversation();
    return;
  }
  $("number-error").textContent = "";
  if (thread.ok) renderThread(thread.body.messages);
  if (state.ok) { renderState(state.body); renderHandoff(state.body); }
  if (events && events.ok) renderEvents(events.body);
}

async function send(event) {
  event.preventDefault();
  const body = $("body").value;
  const mms = $("mms").checked;
  $("send-error").textContent = "";
  const answer = await api("/api/send", {method: "POST", body: JSON.stringify({from: person(), body, mms})});
  if (answer.ok) {
    // Only what was sent leaves the box: what was typed while the send was on its way stays.
    const box = $("body");
    if (box.value.startsWith(body)) box.value = box.value.slice(body.length).replace(/^\s+/, "");
    if (mms) $("mms").checked = false;
    if (answer.body.from && answer.body.from !== person()) {
      $("number").value = answer.body.from;  // as the gateway reads it: E.164
      window.localStorage.setItem("sandbox-number", answer.body.from);
    }
  } else {
    $("send-error").textContent = answer.body.error || `failed (${answer.status})`;
  }
  poll();
}

async function startOutbound() {
  $("outbound-note").textContent = "Starting…";
  const answer = await api("/api/outbound", {method: "POST",
    body: JSON.stringify({to: person(), message: $("outbound-message").value})});
  if (answer.ok) {
    $("outbound-note").textContent = "Started: the gateway's first message is on its way.";
    $("outbound-message").value = "";
  } else {
    const error = answer.body.error || (answer.body.answer && answer.body.answer.error) || {};
    $("outbound-note").textContent = typeof error === "string" ? error : (error.message || `failed (${answer.status})`);
  }
  poll();
}

async function start() {
  config = (await api("/api/config")).body;
  $("gateway-number").textContent = config.gateway_number;
  const saved = window.localStorage.getItem("sandbox-number");
  $("number").value = saved || config.default_person;
  $("number").addEventListener("change", () => {
    window.localStorage.setItem("sandbox-number", person());
    clearConversation();
    $("number-error").textContent = "";
    refusedNumber = null;  // asked once more: the error shows again for the same refused number
    poll();
  });
  $("compose").addEventListener("submit", send);
  $("outbound-start").addEventListener("click", startOutbound);
  $("handoff").addEventListener("change", toggleHandoff);
  $("operator-send").addEventListener("click", sendAsBusiness);
  if (!config.outbound.available) {
    $("outbound-start").disabled = true;
    $("outbound-message").disabled = true;
    $("outbound-note").textContent = `Not available: ${config.outbound.reason}.`;
    $("handoff").disabled = true;
    $("operator-send").disabled = true;
    $("operator-message").disabled = true;
    $("operator-note").textContent = `Not available: ${config.outbound.reason}.`;
  }
  if (!config.events.shown) {
    $("events-note").textContent = `Not shown here: ${config.events.reason}.`;
    $("events").replaceChildren();
  }
  poll();
  setInterval(poll, 700);
}

start();

// Herald demo page: log in through the dev endpoints, start fake jobs and
// watch their completions arrive over the WebSocket.
import { Herald } from './herald.js';

const KINDS = ['blur', 'sepia', 'upscale', 'render', 'export'];
const MAX_LOG = 50;
const MAX_JOBS = 40;
const LATE_AFTER_MS = 10000; // past the eta, a job without its event is marked late

const $ = (sel) => document.querySelector(sel);
const el = {
  session: $('#session'), state: $('#state'), node: $('#node'), reconnects: $('#reconnects'),
  user: $('#user'), avatar: $('#user-avatar'), logout: $('#logout-btn'), reconnect: $('#reconnect-btn'),
  error: $('#error'), errorText: $('#error-text'), errorClose: $('#error-close'),
  loginView: $('#login-view'), loginForm: $('#login-form'), loginUser: $('#login-user'),
  loginBtn: $('#login-btn'), loginNote: $('#login-note'), devNote: $('#dev-note'),
  memoryNotes: document.querySelectorAll('.memory-note'),
  appView: $('#app-view'), kind: $('#job-kind'), startJob: $('#start-job'), startMany: $('#start-many'),
  clearJobs: $('#clear-jobs'), jobs: $('#jobs'), jobsEmpty: $('#jobs-empty'),
  running: $('#jobs-running'), done: $('#jobs-done'), log: $('#log'), clearLog: $('#clear-log'),
  jobTemplate: $('#job-template'),
};

let client = null; // Herald of the current session
let opens = 0; // 'open' states of the current client; reconnects = opens - 1
let loggingOut = false;
let memory = false; // the gateway keeps sessions in its memory: a restart ends them
const jobs = new Map(); // userEffectId -> job

// ---------- HTTP ----------

class HttpError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// request sends a JSON request and returns the decoded answer; failures
// throw an HttpError whose message is fit to show (status 0: network failure).
async function request(method, path, body) {
  let res;
  try {
    res = await fetch(path, {
      method,
      credentials: 'same-origin',
      headers: body === undefined ? {} : { 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new HttpError(0, 'Could not reach the gateway (network error).');
  }
  const text = await res.text().catch(() => '');
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  if (!res.ok) {
    const e = data && data.error;
    const msg = (e && e.message) || `${res.status} ${res.statusText || 'error'}`;
    throw new HttpError(res.status, msg, e && e.code);
  }
  return data;
}

const post = (path, body) => request('POST', path, body);

// Without HERALD_DEV the /dev routes do not exist: a POST there answers 404,
// or 405 because the static file route takes GET on every path.
const devOff = (err) => err.status === 404 || err.status === 405;

// sessionUser returns the user of the session cookie, or null when there is
// none (or it ended). GET /dev/session answers 200 either way, so a page
// without a session logs no error; without the dev endpoints a ticket
// request tells (a 401 then), and the user comes with the welcome frame ('').
async function sessionUser() {
  try {
    const res = await request('GET', '/dev/session');
    setMemory(res.memory === true);
    return res.userId || null;
  } catch (err) {
    if (!devOff(err)) throw err;
  }
  try {
    await post('/api/tickets');
    return '';
  } catch (err) {
    if (err.status === 401) return null;
    throw err;
  }
}

// setMemory shows, or hides, that sessions and jobs live in the gateway's
// memory and end when it restarts.
function setMemory(on) {
  memory = on;
  el.memoryNotes.forEach((n) => { n.hidden = !on; });
}

const sessionEnded = () => memory
  ? 'Your session has ended: this gateway keeps sessions in memory, and it restarted. Log in again.'
  : 'Your session has ended. Log in again.';

// ---------- UI helpers ----------

function showError(msg) {
  el.errorText.textContent = msg;
  el.error.hidden = false;
}

function clearError() {
  el.error.hidden = true;
  el.errorText.textContent = '';
}

function pad(n, w = 2) { return String(n).padStart(w, '0'); }

function log(kind, msg) {
  const d = new Date();
  const li = document.createElement('li');
  li.className = 'log-line';
  li.dataset.kind = kind;
  li.dataset.testid = 'log-line';
  const time = document.createElement('time');
  time.dateTime = d.toISOString();
  time.textContent = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  const tag = document.createElement('span');
  tag.className = 'log-tag';
  tag.textContent = kind;
  const text = document.createElement('span');
  text.className = 'log-msg';
  text.textContent = msg;
  li.append(time, tag, text);
  el.log.prepend(li);
  while (el.log.children.length > MAX_LOG) el.log.lastElementChild.remove();
}

const short = (id) => String(id).slice(0, 8);
const seconds = (ms) => `${(ms / 1000).toFixed(2)} s`;

function setConnected(open) {
  el.startJob.disabled = !open;
  el.startMany.disabled = !open;
}

function renderState(state, title = '') {
  el.state.dataset.state = state;
  el.state.textContent = state;
  el.state.title = title;
}

// flash briefly highlights an element whose value changed.
function flash(node) {
  node.classList.remove('flash');
  void node.offsetWidth; // restart the animation
  node.classList.add('flash');
}

// ---------- session ----------

function showLogin(note) {
  el.appView.hidden = true;
  el.session.hidden = true;
  el.loginView.hidden = false;
  el.loginNote.hidden = !note;
  el.loginNote.textContent = note || '';
  el.loginBtn.disabled = false;
  el.loginUser.focus();
}

function startSession(user) {
  const old = client;
  client = null;
  if (old) old.close();
  clearError();
  el.loginView.hidden = true;
  el.appView.hidden = false;
  el.session.hidden = false;
  setUser(user);
  el.node.textContent = '—';
  delete el.node.dataset.node;
  opens = 0;
  el.reconnects.textContent = '0';
  setConnected(false);

  const h = new Herald();
  client = h;
  globalThis.herald = h; // the demo's client, for the console (and the browser tests)
  h.on('state', (state, info) => onState(h, state, info));
  h.on('welcome', (f) => {
    setUser(f.user);
    const before = el.node.dataset.node;
    const node = f.node || '?';
    el.node.textContent = node;
    el.node.dataset.node = node;
    if (before && before !== node) flash(el.node);
    const moved = before && before !== node ? ` (was ${before})` : '';
    log('welcome', `user ${f.user} on ${node}${moved}, conn ${short(f.conn)}, heartbeat ${f.heartbeat}s`);
  });
  h.on('resync', (channel) => {
    log('error', `events missed on ${channel} are past the replay window; refresh to see them`);
  });
  h.on('effect.complete', (data, f) => {
    log('event', `effect.complete on ${f.channel} (id ${f.id})`);
    complete(data);
  });
  h.on('subscribed', (f) => {
    const note = f.recovered === false ? ' (history not recovered)' : '';
    log('info', `subscribed ${f.channel}${note}`);
  });
  h.on('error', (e) => {
    if (e && e.type === 'error') log('error', `${e.code}: ${e.message}`);
    else log('error', String((e && e.message) || e));
  });
}

function setUser(user) {
  el.user.textContent = user || '';
  el.avatar.textContent = (user || '?').slice(0, 1);
}

function onState(h, state, info) {
  if (h !== client) return; // an old client's last words
  setConnected(state === 'open');
  el.reconnect.disabled = state !== 'open';
  switch (state) {
    case 'open': {
      // Where WebSockets are blocked the client falls back to Server-Sent Events.
      const via = info.transport === 'sse' ? ' over SSE' : '';
      renderState(state, `served by ${info.node}${via}`);
      opens++;
      el.reconnects.textContent = String(Math.max(0, opens - 1));
      if (opens > 1) flash(el.reconnects);
      log('state', (opens > 1 ? `open again${info.resumed ? ', resuming where it left off' : ''}` : 'open') + via);
      break;
    }
    case 'reconnecting': {
      const why = info.code ? `closed ${info.code}${info.reason ? ` (${info.reason})` : ''}` : info.reason || info.error || 'failed';
      renderState(state, `attempt ${info.attempt}, next try in ${info.delay} ms: ${why}`);
      log('state', `reconnecting in ${info.delay} ms, attempt ${info.attempt}: ${why}`);
      // A refused handshake hides its HTTP status from the page: check
      // whether the session itself is gone.
      if (info.opened === false) checkSession(h);
      break;
    }
    case 'closed':
      renderState(state);
      log('state', `closed (${info.reason || 'closed'})`);
      if (info.reason === 'unauthorized' && !loggingOut) {
        endSession('Your session was revoked or has expired. Log in again.');
      }
      break;
    default:
      renderState(state);
      log('state', state);
  }
}

// checkSession ends the page's session if the gateway no longer knows it.
async function checkSession(h) {
  let user;
  try {
    user = await sessionUser();
  } catch {
    return; // cannot tell: the client keeps trying
  }
  if (user === null && h === client) endSession(sessionEnded());
}

function endSession(note) {
  if (note) log('error', note);
  const h = client;
  client = null;
  if (h) h.close();
  jobs.forEach((job) => clearTimeout(job.lateTimer));
  jobs.clear();
  el.jobs.replaceChildren();
  updateCounts();
  renderState('closed');
  showLogin(note);
}

async function login(event) {
  event.preventDefault();
  clearError();
  el.devNote.hidden = true;
  const userId = el.loginUser.value.trim();
  if (!/^[A-Za-z0-9:_.-]{1,128}$/.test(userId)) {
    el.loginUser.setAttribute('aria-invalid', 'true');
    showError('User id must be 1–128 letters, digits or : _ . -');
    el.loginUser.focus();
    return;
  }
  el.loginUser.removeAttribute('aria-invalid');
  el.loginBtn.disabled = true;
  try {
    const res = await post('/dev/login', { userId });
    setMemory(res.memory === true);
    log('info', `logged in as ${res.userId}`);
    startSession(res.userId);
  } catch (err) {
    if (devOff(err)) el.devNote.hidden = false;
    else showError(`Login failed: ${err.message}`);
    el.loginBtn.disabled = false;
  }
}

async function logout() {
  clearError();
  loggingOut = true;
  el.logout.disabled = true;
  try {
    await post('/dev/logout');
  } catch (err) {
    if (!devOff(err)) {
      showError(`Logout failed: ${err.message}`);
      return;
    }
  } finally {
    loggingOut = false;
    el.logout.disabled = false;
  }
  log('info', 'logged out');
  endSession();
}

// ---------- jobs ----------

async function startJob(kind) {
  const t0 = performance.now();
  let res;
  try {
    res = await post('/dev/jobs', { kind });
  } catch (err) {
    log('error', `job ${kind} not started: ${err.message}`);
    if (err.status === 401) endSession(sessionEnded());
    else if (devOff(err)) showError('Jobs need the dev endpoints: run the gateway with HERALD_DEV=true.');
    else showError(`Could not start a ${kind} job: ${err.message}`);
    return;
  }
  if (!client) return; // logged out meanwhile
  const id = res.userEffectId;
  let job = jobs.get(id);
  if (job) { // its completion beat this answer
    job.t0 = t0;
    if (job.done) renderDone(job);
    return;
  }
  job = addJob(id, res.kind || kind, res.etaMs, t0);
  log('info', `job ${short(id)} started: ${job.kind}, eta ${res.etaMs} ms`);
  const channel = 'effect:' + id;
  const h = client;
  h.subscribe(channel, (data) => complete(data)).catch((err) => {
    if (!job.done && h === client) log('error', `subscribe ${channel} failed: ${err.message}`);
  });
}

// label names a job: its kind ("blur"), or "effect" when the event had none.
const label = (kind) => (typeof kind === 'string' && kind ? kind : 'effect');

function addJob(id, kind, etaMs, t0) {
  kind = label(kind);
  const li = el.jobTemplate.content.firstElementChild.cloneNode(true);
  li.dataset.effectId = id;
  li.dataset.kind = kind;
  li.style.setProperty('--eta', `${Math.max(0, etaMs || 0)}ms`);
  li.querySelector('.job-kind').textContent = kind;
  li.querySelector('.job-id').textContent = short(id);
  li.querySelector('.job-id').title = id;
  li.querySelector('.job-latency').textContent = etaMs ? `eta ${seconds(etaMs)}` : '';
  li.setAttribute('aria-label', `${kind} job ${short(id)}: running`);
  const job = { id, kind, t0, el: li, done: false };
  if (etaMs) {
    job.lateTimer = setTimeout(() => {
      if (job.done) return;
      li.classList.add('late');
      li.querySelector('.job-status').textContent = 'waiting';
    }, etaMs + LATE_AFTER_MS);
  }
  jobs.set(id, job);
  el.jobs.prepend(li);
  trimJobs();
  updateCounts();
  return job;
}

// complete handles an effect.complete payload. It arrives once on
// user:{id} and once on effect:{id}; the first one wins.
function complete(data) {
  const id = data && data.userEffectId;
  if (!id) return;
  let job = jobs.get(id);
  if (!job) job = addJob(id, data.kind, 0, null); // started in another tab, or before its answer
  if (job.done) return;
  job.done = true;
  job.doneAt = performance.now();
  job.resultUrl = sameOrigin(data.resultUrl);
  job.resultLink = webLink(data.resultUrl);
  clearTimeout(job.lateTimer);
  if (client) client.unsubscribe('effect:' + id);
  renderDone(job);
  updateCounts();
}

function renderDone(job) {
  const li = job.el;
  li.classList.remove('running', 'late');
  li.classList.add('done');
  li.querySelector('.job-status').textContent = 'done';
  const latency = li.querySelector('.job-latency');
  if (job.t0 != null) {
    const ms = Math.round(job.doneAt - job.t0);
    li.dataset.latencyMs = String(ms);
    latency.textContent = seconds(ms);
    latency.title = 'from the click to the completion event';
    log('done', `job ${short(job.id)} (${job.kind}) done in ${ms} ms`);
  } else {
    latency.textContent = 'started elsewhere';
    log('done', `job ${short(job.id)} (${job.kind}) done`);
  }
  const img = li.querySelector('.job-result');
  if (job.resultUrl && !img.getAttribute('src')) {
    img.alt = `Result of the ${job.kind} job`;
    img.onerror = () => { img.hidden = true; showLink(li, job); };
    img.src = job.resultUrl;
    img.hidden = false;
  } else if (!job.resultUrl) {
    showLink(li, job);
  }
  li.setAttribute('aria-label', `${job.kind} job ${short(job.id)}: done`);
}

// showLink shows, instead of a picture, where the result is: a link when it
// is a web address (the page loads nothing from elsewhere by itself).
function showLink(li, job) {
  const a = li.querySelector('.job-link');
  if (job.resultLink) {
    const u = new URL(job.resultLink);
    a.href = u.href;
    a.textContent = `result at ${u.host}${u.pathname}`;
  } else {
    a.removeAttribute('href');
    a.textContent = 'no result picture';
  }
  a.hidden = false;
}

// webLink returns url, made absolute, when it is an http(s) address, else null.
function webLink(url) {
  if (typeof url !== 'string' || !url) return null;
  try {
    const u = new URL(url, location.href);
    return u.protocol === 'http:' || u.protocol === 'https:' ? u.href : null;
  } catch {
    return null;
  }
}

// sameOrigin returns url when it points at this origin, else null: a
// result link from an event never loads anything from elsewhere.
function sameOrigin(url) {
  if (typeof url !== 'string' || !url) return null;
  try {
    const u = new URL(url, location.href);
    return u.origin === location.origin ? u.href : null;
  } catch {
    return null;
  }
}

function trimJobs() {
  const cards = [...el.jobs.children];
  for (let i = cards.length - 1; i >= 0 && el.jobs.children.length > MAX_JOBS; i--) {
    const job = jobs.get(cards[i].dataset.effectId);
    if (job && job.done) removeJob(job);
  }
}

function removeJob(job) {
  clearTimeout(job.lateTimer);
  job.el.remove();
  jobs.delete(job.id);
}

function updateCounts() {
  let done = 0;
  jobs.forEach((job) => { if (job.done) done++; });
  el.done.textContent = String(done);
  el.running.textContent = String(jobs.size - done);
  el.jobsEmpty.hidden = jobs.size > 0;
}

// ---------- wiring ----------

el.loginForm.addEventListener('submit', login);
el.logout.addEventListener('click', logout);
el.reconnect.addEventListener('click', () => {
  if (!client) return;
  log('info', 'dropping the socket on purpose');
  client.reconnect();
});
el.errorClose.addEventListener('click', clearError);
el.startJob.addEventListener('click', () => startJob(el.kind.value));
el.startMany.addEventListener('click', () => KINDS.forEach((k) => startJob(k)));
el.clearJobs.addEventListener('click', () => {
  jobs.forEach((job) => { if (job.done) removeJob(job); });
  updateCounts();
});
el.clearLog.addEventListener('click', () => el.log.replaceChildren());
el.loginUser.addEventListener('input', () => el.loginUser.removeAttribute('aria-invalid'));

// A session cookie from an earlier visit is reused.
(async () => {
  let user = null;
  try {
    user = await sessionUser();
  } catch (err) {
    showError(err.message);
  }
  if (user === null) return showLogin();
  log('info', 'resumed the existing session');
  startSession(user);
})();

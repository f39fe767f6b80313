'use strict';
// Vesemir's web view: the deployments list and one deployment, live, drawn from the
// REST API and the deployment's event stream. Every value reaches the page through
// textContent (or a text node), never as markup, so a hostile value or log line shows
// as the text it is.

const TOKEN_KEY = 'vesemir.token';
const FINAL = ['succeeded', 'failed', 'cancelled', 'planned', 'rolled_back'];
const STATES = ['queued', 'running', 'cancelling', 'succeeded', 'failed', 'cancelled', 'planned',
  'rolling_back', 'rolled_back'];
// Log lines kept in the page; older ones are dropped from the top.
const MAX_LINES = 20000;
const ROTATION = { ready: 'in rotation', drain: 'draining', maint: 'out of rotation' };

let me = null;

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null) continue;
    if (key === 'text') node.textContent = value;
    else if (key === 'class') node.className = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

function byId(id) {
  return document.getElementById(id);
}

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const headers = { Authorization: 'Bearer ' + (sessionStorage.getItem(TOKEN_KEY) || '') };
  const response = await fetch(path, { method: options.method || 'GET', headers });
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    throw new Unauthorized('the token was not accepted');
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    throw new Error((body && body.error && body.error.message) || 'HTTP ' + response.status);
  }
  return body;
}

function login(message) {
  const input = el('input', { type: 'password', id: 'token', placeholder: 'vsm_…', autocomplete: 'off' });
  const form = el('form', { id: 'login' },
    el('label', { for: 'token', text: 'API token' }), input,
    el('button', { type: 'submit', id: 'sign-in', text: 'Sign in' }),
    el('p', { class: 'muted', text: 'Kept in this tab only, and sent as a bearer token.' }));
  if (message) form.append(el('p', { class: 'error', text: message }));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    start();
  });
  byId('main').replaceChildren(form);
  input.focus();
}

async function start() {
  if (!sessionStorage.getItem(TOKEN_KEY)) return login();
  try {
    me = await api('/v1/whoami');
  } catch (error) {
    return login(error.message);
  }
  byId('who').textContent = me.name + ' · ' + me.role;
  const match = location.pathname.match(/^\/ui\/deployments\/([0-9a-f-]{36})$/);
  if (match) deploymentPage(match[1]);
  else listPage();
}

document.addEventListener('DOMContentLoaded', start);

function cells(tag, texts) {
  return el('tr', {}, ...texts.map((text) => el(tag, { text })));
}

function at(time) {
  return time ? new Date(time).toLocaleString() : '';
}

function seconds(from, to) {
  if (!from) return '';
  const s = Math.max(0, ((to ? Date.parse(to) : Date.now()) - Date.parse(from)) / 1000);
  return s < 60 ? s.toFixed(1) + ' s' : Math.floor(s / 60) + ' min ' + Math.round(s % 60) + ' s';
}

// ---- the list -------------------------------------------------------------------

function listPage() {
  const params = new URLSearchParams(location.search);
  const service = el('input', { name: 'service', placeholder: 'service', value: params.get('service') || '' });
  const cluster = el('input', { name: 'cluster', placeholder: 'cluster', value: params.get('cluster') || '' });
  const state = el('select', { name: 'state' }, el('option', { value: '', text: 'any state' }),
    ...STATES.map((s) => el('option', { value: s, text: s })));
  state.value = params.get('state') || '';
  const filters = el('form', { id: 'filters' }, service, cluster, state, el('button', { type: 'submit', text: 'Filter' }));
  filters.addEventListener('submit', (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    for (const [name, value] of [['service', service.value], ['cluster', cluster.value], ['state', state.value]]) {
      if (value.trim()) query.set(name, value.trim());
    }
    location.search = query.toString();
  });
  const body = el('tbody');
  const status = el('p', { id: 'status', class: 'muted' });
  byId('main').replaceChildren(filters, status, el('table', { id: 'deployments' },
    el('thead', {}, cells('th', ['deployment', 'service', 'version', 'cluster', 'state', 'hosts', 'requested by', 'created'])),
    body));
  const rows = new Map();
  const refresh = async () => {
    const query = new URLSearchParams();
    for (const name of ['service', 'cluster', 'state']) if (params.get(name)) query.set(name, params.get(name));
    query.set('limit', '50');
    try {
      const page = await api('/v1/deployments?' + query);
      let previous = null;
      for (const d of page.deployments) {
        let row = rows.get(d.id);
        if (!row) {
          row = listRow(d);
          rows.set(d.id, row);
        }
        updateListRow(row, d);
        if (previous) previous.after(row.tr);
        else body.prepend(row.tr);
        previous = row.tr;
      }
      status.textContent = page.deployments.length ? '' : 'No deployment matches.';
    } catch (error) {
      status.textContent = 'Cannot refresh: ' + error.message;
    }
  };
  refresh();
  setInterval(refresh, 2000);
}

function listRow(d) {
  const state = el('td', { class: 'state' });
  const hosts = el('td');
  const tr = el('tr', { 'data-id': d.id },
    el('td', {}, el('a', { href: '/ui/deployments/' + d.id, text: d.id.slice(0, 8) })),
    el('td', { text: d.service }), el('td', { text: d.version }), el('td', { text: d.cluster }),
    state, hosts, el('td', { text: d.requested_by }), el('td', { text: at(d.created_at) }));
  return { tr, state, hosts };
}

function updateListRow(row, d) {
  row.state.textContent = d.state;
  row.state.className = 'state ' + d.state;
  const s = d.summary;
  row.hosts.textContent = s.total ? (s.succeeded + s.failed + s.unreachable + s.skipped) + ' / ' + s.total : '';
}

// ---- one deployment ---------------------------------------------------------------

function deploymentPage(id) {
  const view = {
    id, hosts: new Map(), lines: [], lastSeq: 0, filter: '', deployment: null, done: false,
    // Events about hosts the grid does not have yet, kept until it does.
    unplaced: null,
  };
  api('/v1/deployments/' + id).then((d) => {
    view.deployment = d;
    draw(view, d);
    follow(view);
    setInterval(() => tick(view), 1000);
  }, (error) => byId('main').replaceChildren(el('p', { class: 'error', text: error.message })));
}

function draw(view, d) {
  const filter = el('select', { id: 'host-filter' }, el('option', { value: '', text: 'all hosts' }));
  filter.addEventListener('change', () => {
    view.filter = filter.value;
    byId('log').replaceChildren(...view.lines.filter((l) => shown(view, l)).map(logLine));
  });
  byId('main').replaceChildren(
    el('section', { id: 'head' },
      el('h1', {}, el('span', { text: d.service + ' ' + d.version }), el('span', { class: 'muted', text: ' to ' + d.cluster })),
      el('p', {}, el('span', { id: 'state' }), el('span', { id: 'connection', class: 'muted' })),
      el('p', { id: 'error', class: 'error' }),
      el('p', { id: 'links' }),
      el('p', { class: 'muted', text: 'requested by ' + d.requested_by + ', ' + at(d.created_at) }),
      el('p', { id: 'summary' }),
      el('div', { id: 'actions' })),
    el('section', { id: 'hosts' }),
    el('section', { id: 'logs' }, el('h2', { text: 'Log' }), filter, el('div', { id: 'log' })));
  grid(view, d.hosts || []);
  header(view, d);
  tick(view);
}

// Adds to the grid the hosts it does not show yet: all of them when the page opens
// after discovery, none before; then the ones discovery found.
function grid(view, hosts) {
  const waves = new Map();
  for (const h of hosts) {
    if (view.hosts.has(h.name)) continue;
    if (!waves.has(h.wave)) waves.set(h.wave, []);
    waves.get(h.wave).push(h);
  }
  const section = byId('hosts');
  for (const [wave, members] of [...waves.entries()].sort((a, b) => a[0] - b[0])) {
    const row = el('div', { class: 'wave', 'data-wave': String(wave + 1) }, el('div', { class: 'wave-name', text: 'wave ' + (wave + 1) }));
    for (const h of members) {
      const host = {
        state: h.state, lb: h.load_balancer, started: h.started_at, finished: h.finished_at,
        node: null, stateEl: el('span', { class: 'host-state' }), lbEl: el('span', { class: 'lb' }),
        stepEl: el('span', { class: 'step' }), timeEl: el('span', { class: 'time' }), errorEl: el('span', { class: 'host-error' }),
      };
      host.node = el('div', { class: 'host', 'data-host': h.name },
        el('span', { class: 'host-name', text: h.name }), host.stateEl, host.lbEl, host.stepEl, host.timeEl, host.errorEl);
      const last = h.steps && h.steps.length ? h.steps[h.steps.length - 1] : null;
      host.stepEl.textContent = last ? last.name + (last.state === 'running' ? '' : ' ' + last.state) : '';
      host.errorEl.textContent = h.error || '';
      view.hosts.set(h.name, host);
      paintHost(host);
      row.append(host.node);
      byId('host-filter').append(el('option', { value: h.name, text: h.name }));
    }
    section.append(row);
  }
}

// An event named a host the grid lacks: the page opened before discovery. Fetch the
// deployment once, draw its hosts, then replay in order the events that came
// meanwhile, so that each host ends as its latest event left it.
function placeLater(view, line) {
  if (view.unplaced) {
    view.unplaced.push(line);
    return;
  }
  view.unplaced = [line];
  const replay = () => {
    const waiting = view.unplaced;
    view.unplaced = null;
    for (const l of waiting) if (view.hosts.has(l.event.host)) applyEvent(view, l);
  };
  api('/v1/deployments/' + view.id).then((fresh) => {
    grid(view, fresh.hosts || []);
    replay();
    tick(view);
  }, replay);
}

function paintHost(host) {
  host.node.className = 'host ' + host.state;
  host.stateEl.textContent = host.state;
  host.lbEl.textContent = host.lb ? ROTATION[host.lb] || host.lb : '';
  host.lbEl.className = 'lb ' + (host.lb || '');
}

function header(view, d) {
  byId('state').textContent = d.state;
  byId('state').className = 'state ' + d.state;
  byId('error').textContent = d.error || '';
  const links = byId('links');
  links.replaceChildren();
  if (d.rollback_of) links.append('rollback of ', el('a', { href: '/ui/deployments/' + d.rollback_of, text: d.rollback_of }), ' ');
  if (d.rolled_back_by) links.append('rolled back by ', el('a', { href: '/ui/deployments/' + d.rolled_back_by, text: d.rolled_back_by }));
  if (d.retry_of) links.append(' retry of ', el('a', { href: '/ui/deployments/' + d.retry_of, text: d.retry_of }));
  actions(view, d);
}

function actions(view, d) {
  const box = byId('actions');
  box.replaceChildren();
  const mayCancel = me.role === 'admin' || d.requested_by === me.name;
  if (['queued', 'running'].includes(d.state) && mayCancel) {
    box.append(action('cancel', 'Cancel', 'Really cancel? Hosts in flight finish.', async () => {
      await api('/v1/deployments/' + view.id + '/cancel', { method: 'POST' });
    }));
  }
  if (me.role === 'admin' && ['failed', 'cancelled'].includes(d.state)) {
    box.append(action('retry', 'Retry failed hosts', 'Really retry the hosts that did not succeed?', async () => {
      const retry = await api('/v1/deployments/' + view.id + '/retry', { method: 'POST' });
      location.href = '/ui/deployments/' + retry.id;
    }));
  }
  if (!box.childElementCount) box.append(el('span', { class: 'muted', id: 'read-only', text: 'read-only' }));
}

// A button that asks once more before it acts: a second click within five seconds.
function action(id, label, really, run) {
  const button = el('button', { type: 'button', id, text: label });
  let armed = null;
  button.addEventListener('click', async () => {
    if (!armed) {
      button.textContent = really;
      armed = setTimeout(() => { armed = null; button.textContent = label; }, 5000);
      return;
    }
    clearTimeout(armed);
    armed = null;
    button.disabled = true;
    try {
      await run();
    } catch (error) {
      button.after(el('span', { class: 'error', text: ' ' + error.message }));
    }
  });
  return button;
}

function tick(view) {
  let done = 0; let out = 0; let running = 0;
  for (const host of view.hosts.values()) {
    if (['succeeded', 'failed', 'unreachable', 'skipped'].includes(host.state)) done += 1;
    if (host.state === 'running') {
      running += 1;
      host.timeEl.textContent = seconds(host.started);
    } else if (host.finished) {
      host.timeEl.textContent = seconds(host.started, host.finished);
    }
    if (host.lb === 'drain' || host.lb === 'maint') out += 1;
  }
  byId('summary').textContent = done + ' of ' + view.hosts.size + ' hosts done, ' + running + ' in flight, ' +
    out + ' out of rotation';
}

function shown(view, line) {
  return !view.filter || line.host === view.filter;
}

function logLine(line) {
  return el('div', { class: 'line ' + line.stream, 'data-seq': String(line.seq) },
    el('span', { class: 'seq', text: String(line.seq) }),
    el('span', { class: 'line-host', text: line.host || '-' }),
    el('span', { class: 'text', text: line.line }));
}

function apply(view, line) {
  view.lines.push(line);
  const log = byId('log');
  if (shown(view, line)) {
    const stick = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.append(logLine(line));
    if (stick) log.scrollTop = log.scrollHeight;
  }
  if (view.lines.length > MAX_LINES) {
    const dropped = view.lines.shift();
    const first = log.firstElementChild;
    if (first && first.dataset.seq === String(dropped.seq)) first.remove();
  }
  if (line.event) applyEvent(view, line);
}

// What an event changes in the grid and the header.
function applyEvent(view, line) {
  const event = line.event;
  if (event.host && (view.unplaced || !view.hosts.has(event.host))) {
    placeLater(view, line);
    return;
  }
  // The summary follows the grid, at most once a frame however many events come.
  if (!view.summaryDue) {
    view.summaryDue = true;
    requestAnimationFrame(() => { view.summaryDue = false; tick(view); });
  }
  const host = event.host ? view.hosts.get(event.host) : null;
  if (event.type === 'host' && host) {
    host.state = event.state;
    if (event.state === 'running') {
      host.started = line.at;
      host.finished = null;
      host.errorEl.textContent = '';
    } else {
      host.finished = line.at;
      host.errorEl.textContent = event.error || '';
      if (event.load_balancer) host.lb = event.load_balancer;
    }
    paintHost(host);
  } else if (event.type === 'rotation' && host) {
    host.lb = event.load_balancer;
    paintHost(host);
  } else if (event.type === 'step' && host) {
    host.stepEl.textContent = event.step + (event.state === 'running' ? '' : ' ' + event.state);
  } else if (event.type === 'state') {
    const d = Object.assign({}, view.deployment, { state: event.state, error: event.error || null });
    view.deployment = d;
    header(view, d);
    // Links and summaries that only the resource has (a rollback's id, say).
    api('/v1/deployments/' + view.id).then((fresh) => { view.deployment = fresh; header(view, fresh); }, () => {});
  }
}

// Follows the event stream from the last line seen; a dropped connection is resumed
// with Last-Event-ID, so no line is lost or shown twice.
async function follow(view) {
  const connection = byId('connection');
  while (!view.done) {
    try {
      const response = await fetch('/v1/deployments/' + view.id + '/events', {
        headers: {
          Authorization: 'Bearer ' + (sessionStorage.getItem(TOKEN_KEY) || ''),
          'Last-Event-ID': String(view.lastSeq),
          Accept: 'text/event-stream',
        },
      });
      if (!response.ok) throw new Error('HTTP ' + response.status);
      connection.textContent = ' · live';
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          frame(view, buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
      if (FINAL.includes(view.deployment.state)) view.done = true;
    } catch (error) {
      connection.textContent = ' · reconnecting (' + error.message + ')';
    }
    if (view.done) {
      connection.textContent = ' · ended';
      return;
    }
    connection.textContent = ' · reconnecting';
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

function frame(view, text) {
  const data = [];
  for (const field of text.split('\n')) {
    if (field.startsWith('data:')) data.push(field.slice(field.startsWith('data: ') ? 6 : 5));
  }
  if (!data.length) return;
  const line = JSON.parse(data.join('\n'));
  if (line.seq <= view.lastSeq) return;
  view.lastSeq = line.seq;
  apply(view, line);
}

// miochat's web client. It speaks the chat's JSON protocol (docs/protocol.md)
// over one WebSocket to the origin it was loaded from. Five parts, in order:
// state, commands and emoji, the connection (reconnect, resume, resend),
// what the server says, and drawing. docs/web.md walks through them.
// Message text is only ever put in text nodes, never parsed as HTML.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    log: $('log'), status: $('status'), users: $('users'), count: $('count'), people: $('people'),
    joinForm: $('join-form'), name: $('name'), nameHelp: $('name-help'),
    sayForm: $('say-form'), message: $('message'),
  };
  const TITLE = document.title;
  // Reconnect delays grow from BASE_DELAY to MAX_DELAY; each is randomised
  // so that clients cut off together do not all come back in the same instant.
  const BASE_DELAY = 500;
  const MAX_DELAY = 30000;
  // Messages asked for per history page while scrolling back.
  const PAGE = 50;
  // Within this many pixels of the bottom the view follows new messages.
  const FOLLOW_SLACK = 40;
  const NAME_RULES = '1 to 32 letters or digits, or _ - . (no spaces)';
  const HELP = [
    'text               say text to everyone (:smile: becomes 😄)',
    'dm NAME text       a private message (also DM, /dm and /msg)',
    '/who               who is online',
    '/nick NAME         change your name',
    '/help              this help',
    '/quit              leave',
    '//text             say text that starts with a slash',
    'Choose a name in the Online list to start a private message.',
  ];

  // ---- State ----------------------------------------------------------
  const state = {
    ws: null,            // the WebSocket, while one is open or opening
    me: null,            // our name once joined; kept while reconnecting
    names: new Set(),    // every name we had (lowercase): our old messages stay ours
    joined: false,       // welcomed on the current connection
    epoch: null,         // the history our ids belong to
    lastId: null,        // the highest public message id seen: `since` on resume
    oldestId: null,      // the lowest public id shown: `before` when paging back
    seen: new Set(),     // ids shown (public and DMs) in this epoch: nothing twice
    pending: new Map(),  // cid -> {request, el}: sent or waiting, not acknowledged
    attempt: 0,          // reconnects since the last welcome, for the backoff
    timer: null,         // the scheduled reconnect
    paging: false,       // a history request is out
    noOlder: false,      // paging back found the start
    unread: 0,           // messages while the tab was hidden
    emoji: null,         // shortcode -> emoji, from the server's table
    users: [],
  };
  const emojiReady = fetch('emoji.json')
    .then((response) => response.json())
    .then((table) => { state.emoji = new Map(Object.entries(table)); })
    .catch(() => { state.emoji = new Map(); });

  // ---- Commands and emoji (as src/proto/command.rs and lineclient) -----
  function splitWord(line) {
    const text = line.replace(/^\s+/u, '');
    const at = text.search(/\s/u);
    return at < 0 ? [text, ''] : [text.slice(0, at), text.slice(at).replace(/^\s+/u, '')];
  }

  function dmCommand(rest) {
    const [to, text] = splitWord(rest);
    return to && text.trim() ? { dm: to, text } : { usage: 'usage: dm NAME text (or /dm, /msg)' };
  }

  // One typed line, understood; null for a blank one.
  function parse(line) {
    if (!line.trim()) return null;
    if (line.startsWith('//')) return { say: line.slice(1) };
    const [word, rest] = splitWord(line);
    if (word === 'dm' || word === 'DM') return dmCommand(rest);
    if (!word.startsWith('/')) return { say: line };
    switch (word.toLowerCase()) {
      case '/dm': case '/msg': return dmCommand(rest);
      case '/who': return { who: true };
      case '/nick': {
        const [name, more] = splitWord(rest);
        return name && !more ? { nick: name } : { usage: 'usage: /nick NAME' };
      }
      case '/help': return { help: true };
      case '/quit': return { quit: true };
      default: return { unknown: word };
    }
  }

  // Replaces each known :shortcode: by its emoji; anything else between
  // colons (12:30:45, :nope:) stays as typed. The same walk as shortcode.rs.
  function expand(text) {
    if (!state.emoji || !text.includes(':')) return text;
    let out = '';
    let rest = text;
    for (let open = rest.indexOf(':'); open >= 0; open = rest.indexOf(':')) {
      const after = rest.slice(open + 1);
      const close = after.indexOf(':');
      if (close < 0) break;
      const emoji = state.emoji.get(after.slice(0, close));
      if (emoji !== undefined) {
        out += rest.slice(0, open) + emoji;
        rest = after.slice(close + 1);
      } else {
        // The closing colon may open the next shortcode (:nope:smile:).
        out += rest.slice(0, open + 1 + close);
        rest = after.slice(close);
      }
    }
    return out + rest;
  }

  // A random client id of 128 bits, so a resent message is posted once.
  function newCid() {
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  // ---- The connection ---------------------------------------------------
  function connect() {
    clearTimeout(state.timer);
    state.timer = null;
    const url = new URL('.', location.href);
    url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    url.search = '';
    url.hash = '';
    const ws = new WebSocket(url.href);
    state.ws = ws;
    setStatus(state.me ? 'reconnecting…' : 'connecting…', 'connecting');
    ws.onopen = () => sendJoin();
    ws.onmessage = (event) => {
      try {
        receive(JSON.parse(event.data));
      } catch (err) {
        console.error('bad message from the server', err);
      }
    };
    ws.onclose = () => {
      if (state.ws !== ws) return;
      state.ws = null;
      state.joined = false;
      state.paging = false;
      if (state.me) scheduleReconnect();
      else setStatus('not connected', 'idle');
    };
  }

  function sendJoin() {
    const join = { type: 'join', name: state.me || ui.name.value.trim() };
    if (state.epoch !== null) {
      join.since = state.lastId === null ? 0 : state.lastId;
      join.epoch = state.epoch;
    }
    send(join);
  }

  function send(request) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(request));
  }

  function scheduleReconnect() {
    const ceiling = Math.min(MAX_DELAY, BASE_DELAY * 2 ** state.attempt);
    const delay = Math.round(ceiling / 2 + Math.random() * ceiling / 2);
    state.attempt += 1;
    setStatus(`reconnecting… (next try in ${Math.ceil(delay / 1000)} s)`, 'reconnecting');
    state.timer = setTimeout(connect, delay);
  }

  // A say or dm: shown at once as pending, sent when joined, resent with
  // the same cid after a reconnect until the server acknowledges it.
  function post(request) {
    request.cid = newCid();
    const el = line('pending', [
      time(new Date()),
      span('from', request.to ? `${state.me} → ${request.to}` : state.me),
      span('text', request.text),
      span('state', 'sending…'),
    ]);
    state.pending.set(request.cid, { request, el });
    append(el, true);
    if (state.joined) send(request);
  }

  function acknowledge(cid) {
    const entry = cid && state.pending.get(cid);
    if (!entry) return null;
    state.pending.delete(cid);
    entry.el.remove();
    return entry;
  }

  // The Message field: a command, or something to say.
  async function submitLine(text) {
    const command = parse(text);
    if (!command) return;
    if (command.say !== undefined || command.dm !== undefined) {
      if (text.includes(':')) await emojiReady;
    }
    if (command.say !== undefined) post({ type: 'say', text: expand(command.say) });
    else if (command.dm !== undefined) post({ type: 'dm', to: command.dm, text: expand(command.text) });
    else if (command.who) whoOrSay({ type: 'who' });
    else if (command.nick) whoOrSay({ type: 'nick', name: command.nick });
    else if (command.help) HELP.forEach((text) => note(text, 'help'));
    else if (command.quit) quit();
    else if (command.usage) note(command.usage, 'error');
    else note(`unknown command ${command.unknown} (/help lists them)`, 'error');
  }

  function whoOrSay(request) {
    if (state.joined) send(request);
    else note('not connected: try again once reconnected', 'error');
  }

  function quit() {
    state.me = null;
    if (state.ws) state.ws.close(1000);
    showJoin(true);
    setStatus('you left', 'idle');
  }

  // ---- What the server says -------------------------------------------
  function receive(msg) {
    switch (msg.type) {
      case 'welcome': return welcome(msg);
      case 'message': return showMessage(msg, false);
      case 'dm': return showMessage(msg, false);
      case 'history': return olderHistory(msg.messages);
      case 'joined': setOnline(state.users.concat(msg.name), msg.online); return notice(msg.ts, `${msg.name} joined`);
      case 'left':
        setOnline(state.users.filter((u) => u !== msg.name), msg.online);
        return notice(msg.ts, `${msg.name} left`);
      case 'renamed': return renamed(msg);
      case 'users':
        setOnline(msg.users);
        return note(`online: ${msg.users.join(', ')}`, 'info');
      case 'error': return error(msg);
      default: return undefined; // newer servers may say more: ignore it
    }
  }

  function welcome(msg) {
    const fresh = state.me === null;
    state.me = msg.name;
    state.names.add(msg.name.toLowerCase());
    state.joined = true;
    state.attempt = 0;
    if (msg.epoch !== state.epoch) {
      // Another history: its ids mean other messages. Older pages of it
      // would land above messages of the old one, so paging back stops.
      if (state.epoch !== null) state.noOlder = true;
      state.epoch = msg.epoch;
      state.seen.clear();
      state.lastId = null;
    }
    if (msg.recovered === false) {
      note('Some history could not be recovered: messages may be missing here.', 'warn');
    }
    msg.history.forEach((m) => showMessage(m, true));
    if (fresh) showJoin(false);
    setOnline(msg.users);
    setStatus(`online as ${state.me}`, 'online');
    for (const { request } of state.pending.values()) send(request);
    if (fresh) loadOlderIfAtTop();
  }

  function renamed(msg) {
    if (state.me && msg.from.toLowerCase() === state.me.toLowerCase()) {
      state.me = msg.to;
      state.names.add(msg.to.toLowerCase());
      setStatus(`online as ${state.me}`, 'online');
    }
    setOnline(state.users.map((u) => (u === msg.from ? msg.to : u)));
    notice(msg.ts, `${msg.from} is now ${msg.to}`);
  }

  function error(msg) {
    const entry = acknowledge(msg.cid);
    if (entry && (msg.code === 'rate_limited' || msg.code === 'unavailable')) {
      // Worth another try, with the same cid: put it back and retry soon.
      state.pending.set(msg.cid, entry);
      append(entry.el, false);
      setTimeout(() => { if (state.joined && state.pending.has(msg.cid)) send(entry.request); },
        1000 + Math.random() * 1000);
      return;
    }
    if (!state.joined && (msg.code === 'invalid_name' || msg.code === 'name_taken')) {
      // A refused join: the connection stays open for another try. When
      // the name was ours before a reconnect, it is offered again.
      if (state.me) ui.name.value = state.me;
      state.me = null;
      showJoin(true);
      setStatus('connected: choose a name', 'idle');
      ui.nameHelp.textContent = msg.code === 'name_taken'
        ? `“${ui.name.value.trim()}” is taken: choose another name.`
        : `That name cannot be used: ${NAME_RULES}.`;
      ui.nameHelp.className = 'error';
      ui.name.setAttribute('aria-invalid', 'true');
      ui.name.select();
      return;
    }
    note(entry ? `not sent (${msg.message}): ${entry.request.text}` : msg.message, 'error');
  }

  function showMessage(m, fromHistory) {
    const entry = acknowledge(m.cid);
    if (state.seen.has(m.id)) return;
    state.seen.add(m.id);
    const dm = m.type === 'dm';
    if (!dm) {
      state.lastId = state.lastId === null ? m.id : Math.max(state.lastId, m.id);
      state.oldestId = state.oldestId === null ? m.id : Math.min(state.oldestId, m.id);
    }
    append(messageEl(m), Boolean(entry));
    if (!fromHistory && document.hidden && !isMine(m.from)) {
      state.unread += 1;
      document.title = `(${state.unread}) ${TITLE}`;
    }
  }

  // Scrolling to the top asks for older messages, one page at a time.
  function loadOlderIfAtTop() {
    if (ui.log.scrollTop > FOLLOW_SLACK || state.paging || state.noOlder || !state.joined) return;
    if (state.oldestId === null) {
      // Nothing shown: the history is empty.
      return endOfHistory();
    }
    state.paging = true;
    send({ type: 'history', before: state.oldestId, limit: PAGE });
  }

  function olderHistory(messages) {
    state.paging = false;
    const fresh = messages.filter((m) => !state.seen.has(m.id));
    if (fresh.length === 0) return endOfHistory();
    const before = ui.log.scrollHeight;
    const batch = document.createDocumentFragment();
    let day = null;
    for (const m of fresh) {
      state.seen.add(m.id);
      state.oldestId = Math.min(state.oldestId, m.id);
      const el = messageEl(m);
      if (el.dataset.day !== day) batch.append(separator(el.dataset.day));
      day = el.dataset.day;
      batch.append(el);
    }
    const top = ui.log.firstElementChild;
    if (top && top.classList.contains('day') && top.dataset.day === day) top.remove();
    ui.log.prepend(batch);
    ui.log.scrollTop += ui.log.scrollHeight - before;
    loadOlderIfAtTop();
  }

  function endOfHistory() {
    state.noOlder = true;
    const el = line('note start', [span('text', 'This is the start of the chat.')]);
    // Of no day: the first message after it still gets its day separator.
    delete el.dataset.day;
    ui.log.prepend(el);
  }

  // ---- Drawing (text nodes only) --------------------------------------
  function isMine(name) {
    return state.names.has(name.toLowerCase());
  }

  function span(className, text) {
    const el = document.createElement('span');
    el.className = className;
    el.textContent = text;
    return el;
  }

  function time(date) {
    const el = document.createElement('time');
    el.dateTime = date.toISOString();
    el.textContent = date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    el.title = date.toLocaleString();
    return el;
  }

  function dayKey(date) {
    return `${date.getFullYear()}-${date.getMonth() + 1}-${date.getDate()}`;
  }

  function line(className, children, date = new Date()) {
    const el = document.createElement('li');
    el.className = className;
    el.dataset.day = dayKey(date);
    el.append(...children);
    return el;
  }

  function separator(day) {
    const [y, m, d] = day.split('-').map(Number);
    const el = document.createElement('li');
    el.className = 'day';
    el.dataset.day = day;
    el.setAttribute('role', 'separator');
    el.textContent = new Date(y, m - 1, d)
      .toLocaleDateString([], { weekday: 'long', year: 'numeric', month: 'long', day: 'numeric' });
    return el;
  }

  // The message text with @mentions of us marked, as text nodes and <mark>s.
  function textWithMentions(text) {
    const el = span('text', '');
    const mention = /@([\p{L}\p{N}_.-]+)/gu;
    let from = 0;
    const me = state.me && state.me.toLowerCase();
    for (const match of text.matchAll(mention)) {
      // A sentence may end right after the name: "thanks @bob."
      const name = match[1].toLowerCase();
      if (!me || (name !== me && name.replace(/\.+$/u, '') !== me)) continue;
      const end = match.index + 1 + state.me.length;
      el.append(text.slice(from, match.index));
      const mark = document.createElement('mark');
      mark.textContent = text.slice(match.index, end);
      el.append(mark);
      from = end;
    }
    el.append(text.slice(from));
    return el;
  }

  function messageEl(m) {
    const date = new Date(m.ts);
    const dm = m.type === 'dm';
    const body = textWithMentions(m.text);
    const classes = ['msg'];
    if (isMine(m.from)) classes.push('own');
    if (dm) classes.push('dm');
    if (body.querySelector('mark')) classes.push('mention');
    const who = span('from', dm ? `${m.from} → ${m.to}` : m.from);
    const el = line(classes.join(' '), [time(date), who, body], date);
    if (dm) el.prepend(span('tag', 'private'));
    el.dataset.id = m.id;
    return el;
  }

  function notice(ts, text) {
    const date = new Date(ts);
    append(line('note', [time(date), span('text', text)], date), false);
  }

  function note(text, kind) {
    append(line(`note ${kind}`, [span('text', text)]), true);
  }

  // Adds a line at the bottom (before the pending ones), with a day
  // separator when the day changes, and follows it unless the reader
  // scrolled up (or `follow` says to anyway: our own doing).
  function append(el, follow) {
    const log = ui.log;
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < FOLLOW_SLACK;
    const firstPending = el.classList.contains('pending') ? null : log.querySelector('.pending');
    const previous = firstPending ? firstPending.previousElementSibling : log.lastElementChild;
    if (!previous || previous.dataset.day !== el.dataset.day) {
      log.insertBefore(separator(el.dataset.day), firstPending);
    }
    log.insertBefore(el, firstPending);
    if (atBottom || follow) log.scrollTop = log.scrollHeight;
  }

  function setStatus(text, kind) {
    ui.status.textContent = text;
    document.body.dataset.state = kind;
  }

  function setOnline(users, online) {
    state.users = Array.from(new Set(users));
    ui.count.textContent = String(online === undefined ? state.users.length : online);
    const items = [...state.users].sort((a, b) => a.localeCompare(b)).map((name) => {
      const button = document.createElement('button');
      button.type = 'button';
      button.textContent = name;
      if (state.me && name.toLowerCase() === state.me.toLowerCase()) button.append(span('you', ' (you)'));
      button.addEventListener('click', () => {
        ui.message.value = `dm ${name} `;
        ui.message.focus();
      });
      const li = document.createElement('li');
      li.append(button);
      return li;
    });
    ui.users.replaceChildren(...items);
  }

  function showJoin(show) {
    ui.joinForm.hidden = !show;
    ui.sayForm.hidden = show;
    (show ? ui.name : ui.message).focus();
  }

  // ---- Wiring -----------------------------------------------------------
  ui.joinForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const name = ui.name.value.trim();
    ui.name.removeAttribute('aria-invalid');
    ui.nameHelp.className = '';
    if (!/^[\p{L}\p{N}_.-]{1,32}$/u.test(name)) {
      ui.nameHelp.textContent = `Choose a name: ${NAME_RULES}.`;
      ui.nameHelp.className = 'error';
      ui.name.setAttribute('aria-invalid', 'true');
      return;
    }
    if (state.ws && state.ws.readyState === WebSocket.OPEN) sendJoin();
    else if (!state.ws) connect();
  });

  ui.sayForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const text = ui.message.value;
    ui.message.value = '';
    submitLine(text);
  });

  ui.log.addEventListener('scroll', loadOlderIfAtTop, { passive: true });

  document.addEventListener('visibilitychange', () => {
    if (!document.hidden) {
      state.unread = 0;
      document.title = TITLE;
    }
  });

  // Back online: try now instead of waiting for the backoff.
  window.addEventListener('online', () => { if (state.timer) connect(); });

  ui.people.open = window.matchMedia('(min-width: 48rem)').matches;
})();

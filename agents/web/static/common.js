// m2mesh dashboards: what the agent page (agent.js) and the site page (site.js) share.
// Loaded before either; defines one global, `window.m2mesh`, and nothing else. Every
// request URL is relative and carries the page's ?token= when it has one.
'use strict';
(() => {
  const TOKEN = new URLSearchParams(location.search).get('token');
  const THIN = '\u2009';
  const SPAN_MS = 120000;   // charts show the last 120 s
  const MAX_POINTS = 120;   // and keep at most 120 points
  const RATE_MS = 3000;     // rates are averaged over about 3 s
  const STALE_MS = 6000;    // no message for this long: not live

  const $ = (id) => document.getElementById(id);

  function withToken(path, params) {
    const q = new URLSearchParams(params || {});
    if (TOKEN) q.set('token', TOKEN);
    const s = q.toString();
    return s ? `${path}?${s}` : path;
  }

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : v);
    }
    for (const c of kids) if (c != null) e.append(c);
    return e;
  }

  const isNum = (n) => typeof n === 'number' && Number.isFinite(n);
  function num(n) {
    if (!isNum(n)) return '—';
    const s = Math.round(Math.abs(n)).toString().replace(/\B(?=(\d{3})+(?!\d))/g, THIN);
    return n < 0 ? `-${s}` : s;
  }
  function rate(n) {
    if (!isNum(n)) return '—';
    return Math.abs(n) < 10 ? n.toFixed(1) : num(n);
  }
  const sum = (...xs) => (xs.some(isNum) ? xs.reduce((a, x) => a + (isNum(x) ? x : 0), 0) : null);

  // `id` is an element id or the element itself.
  function setText(id, text, title) {
    const e = typeof id === 'string' ? $(id) : id;
    if (!e) return;
    if (e.textContent !== text) e.textContent = text;
    if (title !== undefined && e.title !== title) e.title = title;
  }

  // Units delivered over every service of a `sales` or `purchases` object.
  function deliveries(obj) {
    if (!obj || typeof obj !== 'object') return null;
    return sum(...Object.values(obj).map((v) => (v ? v.deliveries : null)));
  }

  // ---- charts --------------------------------------------------------------
  function niceCeil(x) {
    if (!(x > 0)) return 1;
    const p = 10 ** Math.floor(Math.log10(x));
    for (const m of [1, 2, 4, 6, 8, 10]) if (x <= m * p * 1.0001) return m * p;
    return 10 * p;
  }

  function drawChart(canvas, points, key, color, unit) {
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (!w || !h) return;
    const dpr = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const L = 46, R = 12, T = 22, B = 20, pw = w - L - R, ph = h - T - B;
    const now = performance.now();
    const pts = points.filter((p) => now - p.t <= SPAN_MS && isNum(p[key]));
    const top = niceCeil(Math.max(0, ...pts.map((p) => p[key])));
    const font = getComputedStyle(document.body).fontFamily;
    ctx.font = `11px ${font}`;
    ctx.lineWidth = 1;
    ctx.textBaseline = 'middle';
    for (let i = 0; i <= 4; i++) {
      const y = Math.round(T + ph - (ph * i) / 4) + 0.5;
      ctx.strokeStyle = i === 0 ? '#c9d1db' : '#eef1f4';
      ctx.beginPath(); ctx.moveTo(L, y); ctx.lineTo(L + pw, y); ctx.stroke();
      ctx.fillStyle = '#8b95a3'; ctx.textAlign = 'right';
      const v = (top * i) / 4;
      ctx.fillText(v >= 10 || Number.isInteger(v) ? num(v) : String(+v.toFixed(2)), L - 6, y);
    }
    ctx.textBaseline = 'top';
    for (let s = 120; s >= 0; s -= 30) {
      const x = L + pw * (1 - (s * 1000) / SPAN_MS);
      ctx.textAlign = s === 120 ? 'left' : s === 0 ? 'right' : 'center';
      ctx.fillText(s === 0 ? 'now' : `-${s}s`, x, T + ph + 5);
    }
    const xy = (p) => [L + pw * (1 - (now - p.t) / SPAN_MS), T + ph - (ph * p[key]) / top];
    const trace = () => {
      ctx.beginPath();
      pts.forEach((p, i) => { const [x, y] = xy(p); if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y); });
    };
    if (pts.length) {
      trace();
      const [x0] = xy(pts[0]); const [x1] = xy(pts[pts.length - 1]);
      ctx.lineTo(x1, T + ph); ctx.lineTo(x0, T + ph); ctx.closePath();
      const grad = ctx.createLinearGradient(0, T, 0, T + ph);
      grad.addColorStop(0, `${color}40`); grad.addColorStop(1, `${color}08`);
      ctx.fillStyle = grad; ctx.fill();
      trace();
      ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.lineJoin = 'round'; ctx.stroke();
      const [lx, ly] = xy(pts[pts.length - 1]);
      ctx.fillStyle = color; ctx.beginPath(); ctx.arc(lx, ly, 3, 0, Math.PI * 2); ctx.fill();
    }
    const last = pts.length ? pts[pts.length - 1][key] : null;
    const peak = pts.length ? Math.max(...pts.map((p) => p[key])) : null;
    ctx.textBaseline = 'alphabetic'; ctx.textAlign = 'left'; ctx.fillStyle = '#8b95a3';
    ctx.fillText(unit, L, T - 8);
    ctx.textAlign = 'right'; ctx.fillStyle = color; ctx.font = `600 12px ${font}`;
    ctx.fillText(last == null ? 'waiting for data' : `now ${rate(last)} · peak ${rate(peak)}`, L + pw, T - 8);
  }

  // The two rate charts of a page: payments/s (`p`) and readings/s (`r`) of `points`.
  function drawRates(paymentsId, readingsId, points) {
    drawChart($(paymentsId), points, 'p', '#2458d3', 'payments/s');
    drawChart($(readingsId), points, 'r', '#0f8a7e', 'readings/s');
  }

  // Append `point` ({t, ...}) to `points`, keeping at most MAX_POINTS within SPAN_MS.
  function addPoint(points, point) {
    points.push(point);
    const t = point.t;
    while (points.length > MAX_POINTS || (points.length && t - points[0].t > SPAN_MS)) points.shift();
  }

  // ---- connection ----------------------------------------------------------------
  // Read `api` once, then follow `events` (SSE messages named `event`), calling
  // render(data, live) for each; `redraw` repaints the charts. With `catchLive`, an
  // error thrown by render on a live message is logged and the message still counts.
  function follow({ event, api, render, redraw, catchLive }) {
    let lastAt = 0, live = false, source = null, retry = 1000;
    function setLive(on) {
      live = on;
      setText('connection', on ? 'live' : 'reconnecting');
      $('connection').classList.toggle('live', on);
    }
    function tick() {
      if (live && performance.now() - lastAt > STALE_MS) setLive(false);
      if (!lastAt) return;
      const s = (performance.now() - lastAt) / 1000;
      setText('updated', s < 10 ? `${s.toFixed(1)} s ago` : s < 120 ? `${Math.round(s)} s ago` : `${Math.round(s / 60)} min ago`);
    }
    function connect() {
      source = new EventSource(withToken('events'));
      source.addEventListener(event, (ev) => {
        let data;
        try { data = JSON.parse(ev.data); } catch (err) { console.error(`bad ${event} message`, err); return; }
        lastAt = performance.now(); retry = 1000;
        setLive(true);
        if (catchLive) {
          try { render(data, true); } catch (err) { console.error(err); }
        } else {
          render(data, true);
        }
        tick();
      });
      source.addEventListener('error', () => {
        setLive(false);
        if (source.readyState === EventSource.CLOSED) {  // the browser gave up: try again later
          source.close();
          setTimeout(connect, retry);
          retry = Math.min(retry * 2, 30000);
        }
      });
    }

    setLive(false);
    fetch(withToken(api), { cache: 'no-store', headers: { Accept: 'application/json' } })
      .then((r) => (r.ok ? r.json() : Promise.reject(new Error(`HTTP ${r.status}`))))
      .then((data) => { if (!lastAt) { lastAt = performance.now(); render(data, false); redraw(); tick(); } })
      .catch((err) => console.warn(`${api}:`, err.message));
    connect();
    setInterval(tick, 500);
    window.addEventListener('resize', redraw);
    redraw();
  }

  window.m2mesh = Object.freeze({
    TOKEN, THIN, SPAN_MS, MAX_POINTS, RATE_MS, STALE_MS,
    $, withToken, el, isNum, num, rate, sum, setText, deliveries,
    niceCeil, drawChart, drawRates, addPoint, follow,
  });
})();

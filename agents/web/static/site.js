// m2mesh site page: every agent of a site, from `api/site` once and then `events`
// (SSE, one `site` message a second). Read-only; requests carry the page's ?token=.
// Shared helpers come from common.js (m2mesh).
'use strict';
(() => {
  const {
    RATE_MS, $, withToken, el, isNum, num, rate, sum, setText, deliveries, drawRates, addPoint, follow,
  } = window.m2mesh;
  const MAX_AGENTS = 500;   // rows shown

  // ---- per-agent counters and their rates --------------------------------------
  function summarize(st) {
    const cs = st.channel_stats || {}, wants = st.wants || [], a = st.anchoring || {};
    const sold = deliveries(st.sales);
    return {
      peers: (st.peers || []).length,
      sessions: (st.sessions || []).length,
      open: (st.channels || []).filter((c) => c.state === 'open').length,
      satPaid: cs.sat_paid ?? null,
      satEarned: cs.sat_earned ?? null,
      signed: cs.payments_signed ?? null,
      payments: sum(cs.payments_signed, cs.payments_accepted),
      sold,
      readings: sum(sold, deliveries(st.purchases)),
      wantsDone: wants.filter((w) => w.state === 'done').length,
      wants: wants.length,
      records: a.records_logged ?? null,
      wallet: st.wallet ? st.wallet.available ?? null : null,
      height: st.height ?? null,
      storageOk: !st.storage || st.storage.healthy !== false,
    };
  }

  // Each agent's recent totals [payments, payments signed, units sold], ~10 s of them.
  const history = new Map();
  function agentRates(name, values, t) {
    let h = history.get(name);
    if (!h) { h = []; history.set(name, h); }
    const prev = h[h.length - 1];
    if (prev && values.some((v, i) => isNum(v) && isNum(prev.v[i]) && v < prev.v[i])) h.length = 0;  // restarted
    h.push({ t, v: values });
    while (h.length > 2 && t - h[0].t > 10000) h.shift();
    const base = h.find((s) => t - s.t <= RATE_MS + 500 && t - s.t >= 500);
    if (!base) return values.map(() => null);
    const dt = (t - base.t) / 1000;
    return values.map((v, i) => (isNum(v) && isNum(base.v[i]) ? Math.max(0, (v - base.v[i]) / dt) : null));
  }

  const points = [];  // {t, p, r}: site payments/s and readings/s
  const redrawCharts = () => drawRates('chart-site-payments', 'chart-site-readings', points);

  // ---- the table -----------------------------------------------------------------
  const COLS = ['name', 'state', 'peers', 'open', 'satPaid', 'satEarned', 'payments', 'rate', 'readings', 'wants', 'records', 'height'];
  const rows = new Map();  // name -> {tr, cells}

  function makeRow(name) {
    const cells = {};
    const tr = el('tr', { 'data-agent': name });
    for (const c of COLS) {
      cells[c] = el('td', { class: ['name', 'state', 'wants'].includes(c) ? '' : 'n' });
      tr.append(cells[c]);
    }
    return { tr, cells, link: null, up: null };
  }

  function fillRow(row, agent, s, r) {
    const c = row.cells;
    const link = agent.dashboard || null;
    if (row.link !== link || !c.name.firstChild) {
      row.link = link;
      c.name.replaceChildren(link
        ? el('a', { href: link, target: '_blank', rel: 'noopener', title: `open ${agent.name}'s dashboard` }, el('b', { text: agent.name }))
        : el('b', { text: agent.name }));
    }
    const up = s ? (s.storageOk ? 'up' : 'storage') : 'down';
    if (row.up !== up) {
      row.up = up;
      c.state.replaceChildren(el('span', {
        class: `badge ${up === 'up' ? 'green' : up === 'down' ? 'red' : 'amber'}`,
        text: up === 'storage' ? 'up · storage' : up,
        title: up === 'down' ? 'not answering' : up === 'storage' ? 'storage unhealthy' : undefined,
      }));
      row.tr.classList.toggle('faint', !s);
    }
    setText(c.peers, s ? `${num(s.peers)} / ${num(s.sessions)}` : '—');
    setText(c.open, s ? num(s.open) : '—');
    setText(c.satPaid, s ? num(s.satPaid) : '—');
    setText(c.satEarned, s ? num(s.satEarned) : '—');
    setText(c.payments, s ? num(s.payments) : '—');
    setText(c.rate, s && r ? rate(r[0]) : '—');
    setText(c.readings, s ? num(s.readings) : '—');
    setText(c.wants, s ? (s.wants ? `${s.wantsDone}/${s.wants} done` : '—') : '—');
    setText(c.records, s ? num(s.records) : '—');
    setText(c.height, s ? num(s.height) : '—');
  }

  function totalsRow(list, rateSum) {
    const tr = $('site-totals');
    if (!tr.children.length) for (const c of COLS) tr.append(el('td', { class: ['name', 'state', 'wants'].includes(c) ? '' : 'n' }));
    const cell = Object.fromEntries(COLS.map((c, i) => [c, tr.children[i]]));
    const up = list.filter((x) => x.s);
    const tot = (k) => sum(...up.map((x) => x.s[k]));
    setText(cell.name, `site (${list.length} agents)`);
    setText(cell.state, `${up.length} up`);
    setText(cell.peers, '');
    setText(cell.open, num(tot('open')));
    setText(cell.satPaid, num(tot('satPaid')));
    setText(cell.satEarned, num(tot('satEarned')));
    setText(cell.payments, num(tot('payments')), 'payments signed plus accepted: a payment between two agents of the site counts at both');
    setText(cell.rate, rate(rateSum));
    setText(cell.readings, num(tot('readings')), 'units sold plus bought: a unit between two agents of the site counts at both');
    const wants = tot('wants');
    setText(cell.wants, wants ? `${num(tot('wantsDone'))}/${num(wants)} done` : '—');
    setText(cell.records, num(tot('records')));
    setText(cell.height, '');
    return { up, tot };
  }

  function render(data, live) {
    if (!data || typeof data !== 'object') return;
    setText('site-name', data.site || '—');
    const title = `${data.site || 'site'} · m2mesh`;
    if (document.title !== title) document.title = title;
    const agents = (Array.isArray(data.agents) ? data.agents : []).slice(0, MAX_AGENTS).filter((a) => a && a.name != null);
    const t = performance.now();
    let siteP = 0, siteR = 0, rateSum = 0, rated = false;
    const list = agents.map((agent) => {
      const s = agent.status && typeof agent.status === 'object' ? summarize(agent.status) : null;
      let r = null;
      if (s && live) {
        r = agentRates(agent.name, [s.payments, s.signed, s.sold], t);
        if (r.some(isNum)) rated = true;
        siteP += r[1] || 0; siteR += r[2] || 0; rateSum += r[0] || 0;
      } else if (!s) {
        history.delete(agent.name);
      }
      return { agent, s, r };
    });
    for (const name of history.keys()) if (!agents.some((a) => a.name === name)) history.delete(name);

    const body = $('site-agents').tBodies[0];
    const seen = new Set();
    list.forEach((x, i) => {
      const name = String(x.agent.name);
      seen.add(name);
      let row = rows.get(name);
      if (!row) { row = makeRow(name); rows.set(name, row); }
      fillRow(row, x.agent, x.s, x.r);
      if (body.children[i] !== row.tr) body.insertBefore(row.tr, body.children[i] || null);
    });
    for (const [name, row] of rows) if (!seen.has(name)) { row.tr.remove(); rows.delete(name); }
    if (!list.length && !body.children.length) {
      body.append(el('tr', {}, el('td', { class: 'empty', colspan: COLS.length, text: 'no agent on this site yet' })));
    } else if (list.length) {
      body.querySelector('td.empty')?.parentElement.remove();
    }

    const { up, tot } = totalsRow(list, live && rated ? rateSum : null);
    setText('site-up', `${up.length} / ${list.length}`);
    setText('agents-note', `${up.length} of ${list.length} answering`);
    setText('site-payments', num(tot('signed')));
    setText('site-sat-paid', num(tot('satPaid')));
    setText('site-sat-earned', num(tot('satEarned')));
    setText('site-readings', num(tot('sold')));
    setText('site-channels', num(tot('open')));
    const wants = tot('wants');
    setText('site-wants', wants ? `${num(tot('wantsDone'))}/${num(wants)}` : '—');
    setText('site-records', num(tot('records')));
    setText('site-wallets', num(tot('wallet')));

    if (live) {
      if (rated) {
        addPoint(points, { t, p: siteP, r: siteR });
        setText('site-payments-rate', rate(siteP));
        setText('site-readings-rate', rate(siteR));
      }
      redrawCharts();
    }
  }

  // ---- connection ----------------------------------------------------------------
  $('link-site').href = withToken('api/site');
  follow({ event: 'site', api: 'api/site', render, redraw: redrawCharts, catchLive: true });
})();

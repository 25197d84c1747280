// m2mesh agent dashboard: reads `api/status` once, then follows `events` (SSE, one
// `status` message a second). Read-only; every request URL is relative and carries
// the page's ?token= when it has one. Shared helpers come from common.js (m2mesh).
'use strict';
(() => {
  const {
    THIN, RATE_MS,
    $, withToken, el, isNum, num, rate, sum, setText, deliveries, drawRates, addPoint, follow,
  } = window.m2mesh;
  const MAX_ROWS = 200;     // rows shown per table

  const sat = (n) => (isNum(n) ? `${num(n)}${THIN}sat` : '—');
  const plural = (n, word) => `${num(n)} ${word}${n === 1 ? '' : 's'}`;

  function shortId(hex, label) {
    if (!hex) return el('span', { class: 'faint', text: '—' });
    return el('span', { class: 'id', title: hex, text: label || String(hex).slice(0, 12) });
  }

  const BADGE = {
    open: 'green', done: 'green', buying: 'blue', funded: 'blue', proposed: 'blue',
    'refund-signed': 'blue', looking: 'blue', closing: 'grey', closed: 'grey', stopped: 'grey',
    refunded: 'amber', refund: 'amber', expired: 'amber', 'budget spent': 'amber',
    refused: 'red', failed: 'red',
  };
  const badge = (state, cls, title) =>
    el('span', { class: `badge ${cls || BADGE[state] || 'grey'}`, title, text: state == null ? '—' : String(state) });
  const yesNo = (v) => (v ? badge('yes', 'green') : badge('no', 'grey'));

  function progress(done, total, text, cls) {
    const frac = isNum(done) && isNum(total) && total > 0 ? Math.min(1, Math.max(0, done / total)) : 0;
    const bar = el('span', { class: `bar ${cls || (frac >= 1 ? 'done' : '')}` }, el('i'));
    bar.firstChild.style.width = `${(frac * 100).toFixed(1)}%`;
    return el('span', { class: 'prog' }, el('span', { class: 't', text }), bar);
  }

  const td = (content, cls, attrs) =>
    el('td', Object.assign({ class: cls }, attrs || {}), content instanceof Node ? content : String(content ?? '—'));

  // Rebuild a table body only when its data changed.
  const shown = new Map();
  function table(id, data, cols, rowFn, empty, extra) {
    const key = JSON.stringify([data ?? null, extra ?? null]);
    if (shown.get(id) === key) return;
    shown.set(id, key);
    const body = $(id).tBodies[0];
    const list = Array.isArray(data) ? data : [];
    if (!list.length) {
      body.replaceChildren(el('tr', {}, el('td', { class: 'empty', colspan: cols, text: empty || 'none' })));
      return;
    }
    const rows = list.slice(0, MAX_ROWS).flatMap((item) => rowFn(item));
    if (list.length > MAX_ROWS) {
      rows.push(el('tr', { class: 'more' }, el('td', { colspan: cols, text: `… ${list.length - MAX_ROWS} more (see api/status)` })));
    }
    body.replaceChildren(...rows);
  }

  // ---- rates from successive totals ------------------------------------------
  const samples = [];   // {t, p, r}: arrival time and totals, the last ~10 s
  const points = [];    // {t, p, r}: per-second rates, at most m2mesh.MAX_POINTS
  function sample(pay, read) {
    const t = performance.now();
    const prev = samples[samples.length - 1];
    if (prev && ((isNum(pay) && isNum(prev.p) && pay < prev.p) || (isNum(read) && isNum(prev.r) && read < prev.r))) {
      samples.length = 0;  // counters went back: the agent restarted
    }
    samples.push({ t, p: pay, r: read });
    while (samples.length > 2 && t - samples[0].t > 10000) samples.shift();
    let base = null;   // the oldest sample within the window, at least 0.5 s back
    for (const s of samples) {
      if (t - s.t <= RATE_MS + 500 && t - s.t >= 500) { base = s; break; }
    }
    if (!base && samples.length > 1 && t - samples[samples.length - 2].t >= 500) base = samples[samples.length - 2];
    if (!base) return { p: null, r: null };
    const dt = (t - base.t) / 1000;
    const d = (a, b) => (isNum(a) && isNum(b) ? Math.max(0, (a - b) / dt) : null);
    const out = { p: d(pay, base.p), r: d(read, base.r) };
    addPoint(points, { t, p: out.p, r: out.r });
    return out;
  }

  const redrawCharts = () => drawRates('chart-payments', 'chart-readings', points);

  // ---- sections ----------------------------------------------------------------
  function header(st) {
    setText('agent-name', st.agent || '(unnamed agent)');
    const title = `${st.agent || 'agent'} · m2mesh`;
    if (document.title !== title) document.title = title;
    setText('vendor', st.vendor ? `${st.vendor} ·` : '');
    setText('peer-id', st.peer_id ? String(st.peer_id).slice(0, 12) : '—', st.peer_id || '');
    setText('mailbox', st.mailbox ? `· ${st.mailbox}` : '');
    setText('site', st.site || '—');
    setText('network', st.network ? String(st.network).slice(0, 12) : '—', st.network || '');
    setText('height', isNum(st.height) ? num(st.height) : '—');
    setText('pid', st.pid ? `pid ${st.pid}` : '');
  }

  function overview(st, rates) {
    const w = st.wallet || {}, cs = st.channel_stats || {}, loop = st.loop || {};
    setText('wallet-available', num(w.available));
    setText('wallet-reserved', num(w.reserved));
    setText('payments-total', num(sum(cs.payments_signed, cs.payments_accepted)));
    setText('payments-split', `${num(cs.payments_signed)} out · ${num(cs.payments_accepted)} in`,
      'payments signed (out, as payer) · accepted (in, as payee)');
    setText('sat-paid', num(cs.sat_paid));
    setText('sat-earned', num(cs.sat_earned));
    const sold = deliveries(st.sales), bought = deliveries(st.purchases);
    setText('readings-total', num(sum(sold, bought)));
    setText('readings-split', `${num(sold)} sold · ${num(bought)} bought`, 'units delivered as seller · received as buyer');
    if (rates) {
      setText('payments-rate', rate(rates.p));
      setText('readings-rate', rate(rates.r));
    }
    const ms = (s) => (isNum(s) ? (s * 1000 < 10 ? (s * 1000).toFixed(1) : num(s * 1000)) : '—');
    setText('loop-lag', ms(loop.lag_seconds));
    setText('loop-lag-max', `max ${ms(loop.lag_max_seconds)} ms`);
    const sto = st.storage;
    const e = $('storage');
    if (!sto) { setText('storage', '—'); e.className = 'v'; }
    else if (sto.healthy) { setText('storage', 'healthy', ''); e.className = 'v ok'; }
    else { setText('storage', sto.reason || 'unhealthy', sto.since ? `since ${sto.since}` : ''); e.className = 'v bad'; }
    setText('storage-faults', sto && isNum(sto.faults) ? `${num(sto.faults)} faults` : 'faults —');
  }

  function peers(st) {
    const sessions = new Set(st.sessions || []);
    const list = st.peers || [];
    setText('peers-note', `${num(list.length)} known · ${plural(sessions.size, 'session')}`);
    table('peers-table', list, 5, (p) => el('tr', {},
      td(el('span', { class: 'two' }, el('b', { text: p.name || '(unnamed)' }), shortId(p.peer_id))),
      td(p.mailbox || '—', 'mono'), td(p.services || '—', 'mono wrap'),
      td(yesNo(sessions.has(p.peer_id))), td(yesNo(p.confirmed))),
    'no peer discovered yet', [...sessions]);
  }

  function channels(st, names) {
    const list = st.channels || [];
    const open = list.filter((c) => c.state === 'open').length;
    setText('channels-note', `${plural(list.length, 'channel')} · ${num(open)} open`);
    table('channels-table', list, 9, (c) => {
      const paid = isNum(c.signed_total) ? c.signed_total : c.total;
      const final = ['closed', 'refunded', 'failed', 'refused'].includes(c.state);
      const state = el('span', {}, badge(c.state));
      if (c.refund_due) state.append(badge('refund due', 'amber', `expiry ${c.expiry_height} reached`));
      if (c.refused) state.append(badge('refused', 'red', String(c.refused)));
      let left = c.blocks_left;
      if (!isNum(left) && isNum(c.expiry_height) && isNum(st.height)) left = c.expiry_height - st.height;
      const lockTitle = isNum(c.locked_until) ? `coins locked until height ${c.locked_until}` : undefined;
      const name = names.get(c.peer);
      return el('tr', {},
        td(shortId(c.channel_id)), td(c.role || '—'),
        td(name ? el('span', { title: c.peer, class: 'named', text: name }) : shortId(c.peer)),
        td(c.service || '—'), td(state),
        td(progress(paid, c.capacity, `${num(paid)} / ${num(c.capacity)}`, final ? 'off' : ''), 'n'),
        td(num(c.expiry_height), 'n'),
        td(isNum(left) ? num(left) : '—', `n${final ? ' faint' : ''}`, { title: lockTitle }),
        td(shortId(c.close_txid)));
    }, 'no channel', [st.height, [...names]]);
  }

  function services(st) {
    const list = st.services || [], meters = st.meters || [], sales = st.sales || {};
    setText('services-note', `${num(list.length)} offered · ${plural(meters.length, 'meter')}`);
    table('services-table', list, 5, (s) => {
      const mine = meters.filter((m) => m.service === s.id).sort((a, b) => Number(!!a.frozen) - Number(!!b.frozen));
      const c = sales[s.id] || {};
      const about = [s.kind, s.source].filter(Boolean).join(' · ');
      const rows = [el('tr', {},
        td(el('span', { class: 'two' }, el('b', { text: s.id || '—' }), el('span', { class: 'faint', text: about || '—' }))),
        td(`${sat(s.price)}${s.unit ? ` / ${s.unit}` : ''}`, 'n'), td(num(c.orders), 'n'), td(num(c.deliveries), 'n'),
        td(mine.length ? sat(sum(...mine.map((m) => m.paid))) : '—', 'n'))];
      for (const m of mine.slice(0, 5)) {
        rows.push(el('tr', { class: 'sub' },
          td(el('span', {}, '↳ buyer ', shortId(m.buyer))), td(m.frozen ? badge('frozen', 'grey') : badge('metering', 'green'), 'n'),
          td(''), td(num(m.delivered_units), 'n'), td(sat(m.paid), 'n')));
      }
      if (mine.length > 5) rows.push(el('tr', { class: 'more' }, el('td', { colspan: 5, text: `+${mine.length - 5} more meters` })));
      return rows;
    }, 'sells nothing', [meters, sales]);
  }

  function wants(st) {
    const list = st.wants || [], purchases = st.purchases || {};
    const done = list.filter((w) => w.state === 'done').length;
    setText('wants-note', list.length ? `${done}/${list.length} done` : '');
    table('wants-table', list, 5, (w) => {
      const p = purchases[w.service] || {};
      return el('tr', {}, td(w.service || '—'), td(badge(w.state)),
        td(progress(w.delivered, w.units, `${num(w.delivered)} / ${num(w.units)}`), 'n'),
        td(progress(w.paid, w.budget, `${num(w.paid)} / ${num(w.budget)}`, 'off'), 'n'),
        td(num(w.placed), 'n', { title: isNum(p.orders) ? `${num(p.orders)} orders, ${num(p.deliveries)} units delivered in all` : undefined }));
    }, 'buys nothing', purchases);
  }

  function anchoring(st) {
    const a = st.anchoring;
    setText('anchoring-note', a ? '' : 'not anchoring');
    const v = (k) => num(a ? a[k] : null);
    setText('anc-logged', v('records_logged'));
    setText('anc-waiting', v('records_waiting'));
    setText('anc-anchored', v('batches_anchored'));
    setText('anc-mined', v('batches_mined'));
    setText('anc-unconfirmed', v('batches_unconfirmed'));
    setText('anc-fees', a && isNum(a.fees_paid) ? sat(a.fees_paid) : '—');
    setText('anc-bytes', v('bytes_on_chain'));
    setText('anc-txid', a && a.last_txid ? String(a.last_txid).slice(0, 12) : '—', (a && a.last_txid) || '');
    $('anc-txid').className = a && a.last_txid ? 'v id' : 'v';
    const err = a && a.last_error ? String(a.last_error) : '';
    setText('anc-error', err);
    $('anc-error-box').classList.toggle('hidden', !err);
  }

  // Records rows are kept per stream (not rebuilt) so a seq being typed survives updates.
  const recRows = new Map();
  const ranges = (rs) => (Array.isArray(rs) && rs.length
    ? rs.map((r) => (r[0] === r[1] ? num(r[0]) : `${num(r[0])}–${num(r[1])}`)).join(', ') : '—');
  const lastOf = (rs) => (Array.isArray(rs) && rs.length ? rs[rs.length - 1][1] : null);
  const proofUrl = (r, seq) => withToken('proof', { agent: r.agent, stream: r.stream, seq: String(seq) });
  const proofName = (r, seq) => `proof-${String(r.stream).replace(/[^A-Za-z0-9._-]+/g, '_')}-${seq}.json`;

  function recordRow(key) {
    const cells = Array.from({ length: 8 }, (_, i) => el('td', { class: [3, 5].includes(i) ? 'n' : '' }));
    const input = el('input', { type: 'number', min: '0', step: '1', 'aria-label': 'record seq' });
    const row = { tr: null, data: null, key };
    const go = () => {
      const r = row.data;
      const seq = input.value !== '' ? Number(input.value) : lastOf(r.anchored) ?? lastOf(r.archived);
      if (!Number.isInteger(seq) || seq < 0) return;
      const a = el('a', { href: proofUrl(r, seq), download: proofName(r, seq) });
      document.body.append(a); a.click(); a.remove();
    };
    input.addEventListener('keydown', (e) => { if (e.key === 'Enter') go(); });
    const fetchCell = el('td', {}, el('span', { class: 'fetch' }, input, el('button', { type: 'button', onclick: go, text: 'proof' })));
    row.tr = el('tr', { 'data-stream': key }, ...cells, fetchCell);
    row.cells = cells; row.input = input;
    return row;
  }

  function fillRecord(row, r) {
    const c = row.cells;
    const last = lastOf(r.anchored) ?? lastOf(r.archived);
    c[0].replaceChildren(el('span', { class: 'mono', text: r.stream || '—' }));
    c[1].replaceChildren(shortId(r.agent));
    c[2].replaceChildren(badge(r.origin || '—', r.origin === 'own' ? 'blue' : 'grey'));
    c[3].textContent = num(r.records);
    c[4].textContent = ranges(r.anchored); c[4].title = c[4].textContent;
    c[5].textContent = num(r.unanchored);
    c[6].textContent = r.archived && r.archived.length ? `${ranges(r.archived)} (${num(r.archived_records)})` : '—';
    c[7].replaceChildren(isNum(last)
      ? el('a', { href: proofUrl(r, last), download: proofName(r, last), title: `proof of record ${last}` }, `proof #${num(last)}`)
      : el('span', { class: 'faint', text: 'none anchored yet' }));
    row.input.placeholder = isNum(last) ? String(last) : 'seq';
  }

  function records(st) {
    const list = (st.records || []).slice(0, MAX_ROWS);
    const body = $('records-table').tBodies[0];
    const seen = new Set();
    const order = [];
    for (const r of list) {
      const key = `${r.origin}|${r.agent}|${r.stream}`;
      seen.add(key);
      let row = recRows.get(key);
      if (!row) { row = recordRow(key); recRows.set(key, row); }
      const json = JSON.stringify(r);
      if (row.json !== json) { row.json = json; row.data = r; fillRecord(row, r); }
      order.push(row.tr);
    }
    for (const [key, row] of recRows) if (!seen.has(key)) { row.tr.remove(); recRows.delete(key); }
    if (!order.length) {
      if (!body.querySelector('td.empty')) {
        body.replaceChildren(el('tr', {}, el('td', { class: 'empty', colspan: 9, text: st.records ? 'no record kept yet' : 'no records listed' })));
      }
      return;
    }
    body.querySelector('td.empty')?.parentElement.remove();
    order.forEach((tr, i) => { if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null); });
  }

  function flatten(obj, prefix, out) {
    for (const [k, v] of Object.entries(obj)) {
      const key = prefix ? `${prefix}.${k}` : k;
      if (v && typeof v === 'object' && !Array.isArray(v) && Object.keys(v).length) flatten(v, key, out);
      else out.push([key, typeof v === 'object' ? JSON.stringify(v) : String(v)]);
      if (out.length >= MAX_ROWS) break;
    }
    return out;
  }

  // What peers proved to us (and failed to), what refused ours, what we hold.
  function certificates(st, names) {
    const c = st.certificates;
    const any = c && (c.held.length || Object.keys(c.proved).length || Object.keys(c.failed).length
      || Object.keys(c.refused_ours).length);
    $('certificates').classList.toggle('hidden', !any);
    if (!any) return;
    const who = (peer) => (names.get(peer) ? el('span', { title: peer, class: 'named', text: names.get(peer) }) : shortId(peer));
    const rows = [];
    for (const [peer, list] of Object.entries(c.proved)) {
      for (const p of list) {
        const fields = Object.entries(p.fields).map(([k, v]) => `${k} = ${v}`).join(', ');
        rows.push([peer, p.requirement, badge('proved', 'green', p.type), fields, p.certifier]);
      }
    }
    for (const [peer, list] of Object.entries(c.failed)) {
      for (const f of list) rows.push([peer, f.requirement, badge(f.code, 'red'), f.reason, '']);
    }
    for (const [peer, v] of Object.entries(c.refused_ours)) {
      rows.push([peer, '(ours)', badge(`refused: ${v.code}`, 'amber'), v.reason, '']);
    }
    setText('certs-note', `${plural(Object.keys(c.proved).length, 'peer')} proved · ${num(c.counts.answered)} asks answered`);
    table('certs-table', rows, 5, ([peer, req, outcome, text, certifier]) => el('tr', {},
      td(who(peer)), td(req), td(outcome), td(text || '—', 'wrap'), td(shortId(certifier))),
    'nothing proved yet', [...names]);
    table('held-table', c.held, 4, (h) => el('tr', {},
      td(shortId(h.serial)), td(shortId(h.certifier)), td(h.fields.join(', '), 'wrap'),
      td(h.disclose.join(', ') || '—', 'wrap')), 'holds no certificate');
  }

  function bridges(st) {
    const b = st.bridges;
    $('bridges').classList.toggle('hidden', !b || typeof b !== 'object');
    if (!b || typeof b !== 'object') return;
    table('bridges-table', flatten(b, '', []), 2, ([k, v]) => el('tr', {}, td(k), td(v)), 'no bridge');
  }

  function render(st, live) {
    if (!st || typeof st !== 'object') return;
    const cs = st.channel_stats || {};
    const rates = live ? sample(sum(cs.payments_signed, cs.payments_accepted), sum(deliveries(st.sales), deliveries(st.purchases))) : null;
    const names = new Map((st.peers || []).map((p) => [p.peer_id, p.name]));
    const parts = [header, (s) => overview(s, rates), peers, (s) => channels(s, names), services, wants,
      anchoring, records, (s) => certificates(s, names), bridges];
    for (const part of parts) {
      try { part(st); } catch (err) { console.error(err); }
    }
    if (live) redrawCharts();
  }

  // ---- connection ----------------------------------------------------------------
  $('link-metrics').href = withToken('metrics');
  $('link-status').href = withToken('api/status');
  follow({ event: 'status', api: 'api/status', render, redraw: redrawCharts });
})();

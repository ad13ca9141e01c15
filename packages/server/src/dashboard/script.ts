/**
 * The dashboard's browser script, served as `/dashboard.js`: polls /v1/stats and /v1/sessions
 * once a second and draws the charts on canvases by hand. Plain ES2017, no dependencies.
 * (Kept free of backticks and dollar-braces so it can live in this raw string.)
 */
export const DASHBOARD_SCRIPT = String.raw`(function () {
  'use strict';
  var POLL_MS = 1000;
  var HISTORY = 180;
  var KEY_NAME = 'tinyserve-api-key';
  var apiKey = window.sessionStorage.getItem(KEY_NAME) || '';
  var samples = [];
  var previous = null;
  var timer = null;

  function $(id) { return document.getElementById(id); }
  function setText(id, text) { var el = $(id); if (el) el.textContent = text; }
  function num(v) { return typeof v === 'number' && isFinite(v) ? v : null; }

  function fmtInt(v) {
    v = num(v);
    if (v === null) return '-';
    return Math.round(v).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  }
  function fmtMs(v) {
    v = num(v);
    if (v === null) return '-';
    if (v < 10) return v.toFixed(2) + ' ms';
    if (v < 100) return v.toFixed(1) + ' ms';
    if (v < 10000) return v.toFixed(0) + ' ms';
    return (v / 1000).toFixed(1) + ' s';
  }
  function fmtPct(v) { v = num(v); return v === null ? '-' : (v * 100).toFixed(1) + ' %'; }
  function fmtBytes(v) {
    v = num(v);
    if (v === null) return '-';
    var units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    var i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? v.toFixed(0) : v.toFixed(1)) + ' ' + units[i];
  }
  function fmtDuration(s) {
    s = num(s);
    if (s === null) return '';
    if (s < 60) return Math.floor(s) + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min ' + Math.floor(s % 60) + ' s';
    return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
  }
  function pick(obj, names) {
    if (!obj) return null;
    for (var i = 0; i < names.length; i++) if (obj[names[i]] !== undefined && obj[names[i]] !== null) return obj[names[i]];
    return null;
  }
  function ago(v) {
    if (typeof v === 'string') { var parsed = Date.parse(v); v = isNaN(parsed) ? null : parsed; }
    v = num(v);
    if (v === null) return '-';
    if (v < 1e11) v *= 1000;
    return fmtDuration(Math.max(0, (Date.now() - v) / 1000)) + ' ago';
  }

  function request(path) {
    var headers = apiKey ? { Authorization: 'Bearer ' + apiKey } : {};
    return fetch(path, { headers: headers, cache: 'no-store' }).then(function (res) {
      if (res.status === 401) { showAuth(); throw new Error('API key required'); }
      if (!res.ok) throw new Error(path + ': HTTP ' + res.status);
      return res.json();
    });
  }

  function showAuth() { $('auth').style.display = 'block'; }

  $('auth').addEventListener('submit', function (event) {
    event.preventDefault();
    apiKey = $('auth-key').value.trim();
    window.sessionStorage.setItem(KEY_NAME, apiKey);
    $('auth').style.display = 'none';
    poll();
  });

  function setStatus(text, kind) {
    var el = $('status');
    el.textContent = text;
    el.className = kind;
  }

  function render(stats, sessions) {
    var server = stats.server || {};
    var g = server.gauges || {};
    var totals = server.totals || {};
    var lat = server.latency_ms || {};
    var model = stats.model || {};
    var now = Date.now();

    setText('model-name', model.name || 'no model loaded');
    setText('model-meta', [model.architecture, model.executor, model.parameters ? (model.parameters / 1e6).toFixed(1) + 'M params' : null]
      .filter(Boolean).join(' / '));
    setText('uptime', server.uptime_s !== undefined ? 'up ' + fmtDuration(server.uptime_s) : '');
    if (server.draining) setStatus('draining', 'warn');
    else if (!stats.model) setStatus('loading', 'warn');
    else setStatus('serving', 'ok');
    setText('error', '');

    setText('running', fmtInt(g.num_requests_running));
    setText('waiting', fmtInt(g.num_requests_waiting));

    var genRate = null;
    var promptRate = null;
    if (previous && now > previous.t) {
      var dt = (now - previous.t) / 1000;
      genRate = Math.max(0, ((totals.generation_tokens || 0) - previous.gen) / dt);
      promptRate = Math.max(0, ((totals.prompt_tokens || 0) - previous.prompt) / dt);
    }
    previous = { t: now, gen: totals.generation_tokens || 0, prompt: totals.prompt_tokens || 0 };
    setText('throughput', genRate === null ? '-' : genRate.toFixed(genRate < 10 ? 1 : 0));

    var ttft = lat.time_to_first_token || {};
    var itl = lat.inter_token || {};
    var e2e = lat.e2e_request || {};
    setText('ttft-p50', fmtMs(ttft.p50));
    setText('ttft-p99', fmtMs(ttft.p99));
    setText('itl-p50', fmtMs(itl.p50));
    setText('itl-p99', fmtMs(itl.p99));
    setText('e2e', fmtMs(e2e.p50) + ' / ' + fmtMs(e2e.p99));
    setText('requests-total', fmtInt(pick(stats, ['total_requests']) !== null ? stats.total_requests : totals.requests));
    setText('requests-failed', fmtInt(pick(stats, ['failed_requests']) !== null ? stats.failed_requests : totals.failed_requests));
    setText('prompt-tokens', fmtInt(totals.prompt_tokens));
    setText('gen-tokens', fmtInt(totals.generation_tokens));
    setText('executor', model.executor || '-');

    var usage = num(g.kv_cache_usage_perc);
    setText('kv-usage', fmtPct(usage));
    $('kv-bar').style.width = usage === null ? '0' : Math.min(100, usage * 100).toFixed(1) + '%';
    $('kv-bar').style.background = usage !== null && usage > 0.9 ? 'var(--bad)' : 'var(--accent)';
    var total = num(g.num_kv_pages);
    var used = num(g.num_used_kv_pages);
    setText('kv-pages', total === null ? '-' : fmtInt(used === null ? usage * total : used) + ' / ' + fmtInt(total));
    var queries = num(g.prefix_cache_queries);
    var hits = num(g.prefix_cache_hits);
    setText('prefix-hit', hits === null ? '-' : fmtInt(hits) + (queries ? ' (' + fmtPct(hits / queries) + ')' : ''));
    setText('preemptions', fmtInt(g.num_preemptions));

    var selected = num(g.pages_selected);
    var scanned = num(g.pages_scanned);
    setText('sel-ratio', selected !== null && scanned ? fmtPct(selected / scanned) : '-');
    setText('pages-selected', fmtInt(selected));
    setText('kv-bytes', fmtBytes(g.kv_bytes_read));
    setText('kv-hit-rate', fmtPct(stats.kv_hit_rate));
    setText('early-exits', fmtInt(g.early_exits));
    setText('tokens-pruned', fmtInt(g.tokens_pruned));

    samples.push({ t: now, gen: genRate, prompt: promptRate, ttft: num(ttft.p50), itl: num(itl.p50) });
    if (samples.length > HISTORY) samples.shift();
    drawChart($('chart-throughput'), [
      { key: 'gen', color: '#4fb3ff' },
      { key: 'prompt', color: '#7fd88f' }
    ], '');
    drawChart($('chart-latency'), [
      { key: 'ttft', color: '#ffb454' },
      { key: 'itl', color: '#4fb3ff' }
    ], ' ms');

    renderSessions(sessions && sessions.data ? sessions.data : []);
  }

  function renderSessions(list) {
    var body = $('sessions-body');
    setText('session-count', String(list.length));
    while (body.firstChild) body.removeChild(body.firstChild);
    if (list.length === 0) {
      var tr0 = document.createElement('tr');
      var td0 = document.createElement('td');
      td0.colSpan = 5;
      td0.className = 'empty';
      td0.textContent = 'no sessions';
      tr0.appendChild(td0);
      body.appendChild(tr0);
      return;
    }
    list.slice(0, 50).forEach(function (s) {
      var tr = document.createElement('tr');
      var cells = [
        [String(s.id), ''],
        [fmtInt(pick(s, ['request_count', 'num_requests'])), 'num'],
        [fmtInt(pick(s, ['num_tokens', 'tokens'])), 'num'],
        [fmtInt(pick(s, ['pages_held', 'num_pages'])), 'num'],
        [ago(pick(s, ['last_active_at', 'created_at'])), 'num']
      ];
      cells.forEach(function (c) {
        var td = document.createElement('td');
        td.textContent = c[0];
        td.className = c[1];
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    var p = Math.pow(10, Math.floor(Math.log10(v)));
    var m = v / p;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
  }

  function drawChart(canvas, series, unit) {
    var dpr = window.devicePixelRatio || 1;
    var rect = canvas.getBoundingClientRect();
    var w = Math.max(100, Math.floor(rect.width));
    var h = Math.max(80, Math.floor(rect.height));
    if (canvas.width !== w * dpr || canvas.height !== h * dpr) { canvas.width = w * dpr; canvas.height = h * dpr; }
    var ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    var left = 56, right = 8, top = 8, bottom = 20;
    var pw = w - left - right, ph = h - top - bottom;
    var max = 0;
    samples.forEach(function (s) { series.forEach(function (se) { if (s[se.key] !== null && s[se.key] > max) max = s[se.key]; }); });
    max = niceMax(max * 1.1);
    ctx.font = '11px system-ui, sans-serif';
    ctx.fillStyle = '#8593a3';
    ctx.strokeStyle = '#26313d';
    ctx.lineWidth = 1;
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    for (var i = 0; i <= 4; i++) {
      var y = top + ph - (ph * i) / 4;
      ctx.beginPath(); ctx.moveTo(left, Math.round(y) + 0.5); ctx.lineTo(left + pw, Math.round(y) + 0.5); ctx.stroke();
      var v = (max * i) / 4;
      ctx.fillText((v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)) + unit, left - 6, y);
    }
    if (samples.length === 0) return;
    var tEnd = samples[samples.length - 1].t;
    // The time axis grows with the history until it spans HISTORY polls, then scrolls.
    var span = Math.max(10000, Math.min((HISTORY - 1) * POLL_MS, tEnd - samples[0].t));
    ctx.textAlign = 'left';
    ctx.textBaseline = 'alphabetic';
    ctx.fillText('-' + Math.round(span / 1000) + ' s', left, h - 4);
    ctx.textAlign = 'right';
    ctx.fillText('now', left + pw, h - 4);
    series.forEach(function (se) {
      ctx.strokeStyle = se.color;
      ctx.fillStyle = se.color;
      ctx.lineWidth = 2;
      ctx.lineJoin = 'round';
      var points = [];
      samples.forEach(function (s) {
        var v = s[se.key];
        var x = left + pw - ((tEnd - s.t) / span) * pw;
        if (x < left) return;
        points.push(v === null ? null : [x, top + ph - (v / max) * ph]);
      });
      ctx.beginPath();
      var run = 0;
      points.forEach(function (p, i) {
        if (p === null) { run = 0; return; }
        if (run === 0) ctx.moveTo(p[0], p[1]); else ctx.lineTo(p[0], p[1]);
        run++;
        // A lone point (no neighbour yet) is drawn as a dot so a fresh chart is never blank.
        var next = points[i + 1];
        if (run === 1 && (next === undefined || next === null)) { ctx.fillRect(p[0] - 2, p[1] - 2, 4, 4); }
      });
      ctx.stroke();
    });
  }

  function poll() {
    if (timer) { clearTimeout(timer); timer = null; }
    Promise.all([request('/v1/stats'), request('/v1/sessions').catch(function () { return { data: [] }; })])
      .then(function (r) { render(r[0], r[1]); })
      .catch(function (err) {
        setStatus('unreachable', 'bad');
        setText('error', err && err.message ? err.message : String(err));
      })
      .then(function () { timer = setTimeout(poll, POLL_MS); });
  }

  window.addEventListener('resize', function () {
    drawChart($('chart-throughput'), [{ key: 'gen', color: '#4fb3ff' }, { key: 'prompt', color: '#7fd88f' }], '');
    drawChart($('chart-latency'), [{ key: 'ttft', color: '#ffb454' }, { key: 'itl', color: '#4fb3ff' }], ' ms');
  });
  poll();
})();
`;

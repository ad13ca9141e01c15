/**
 * The dashboard page served at `/`. Self-contained: inline CSS, one same-origin script
 * (`/dashboard.js`), no fonts, images or code from the network (the CSP header enforces it).
 */
export const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>TinyServe</title>
<style>
  :root {
    --bg: #0f1419; --panel: #171e26; --line: #26313d; --text: #d8dee6; --muted: #8593a3;
    --accent: #4fb3ff; --accent2: #ffb454; --accent3: #7fd88f; --bad: #ff6b6b;
  }
  * { box-sizing: border-box; }
  body { margin: 0; background: var(--bg); color: var(--text);
         font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
  header { display: flex; align-items: baseline; gap: 16px; padding: 14px 24px; border-bottom: 1px solid var(--line); }
  header h1 { margin: 0; font-size: 18px; font-weight: 600; letter-spacing: .3px; }
  header .meta { color: var(--muted); }
  header .spacer { flex: 1; }
  #status { padding: 2px 10px; border-radius: 10px; font-size: 12px; background: var(--line); }
  #status.ok { background: #1d3b2a; color: var(--accent3); }
  #status.warn { background: #3d3320; color: var(--accent2); }
  #status.bad { background: #3d2020; color: var(--bad); }
  main { padding: 18px 24px 32px; display: grid; gap: 16px; grid-template-columns: repeat(12, 1fr); }
  .card { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
  .stat { grid-column: span 2; }
  .stat .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .5px; }
  .stat .value { font-size: 26px; font-weight: 600; margin-top: 4px; font-variant-numeric: tabular-nums; }
  .stat .sub { color: var(--muted); font-size: 12px; font-variant-numeric: tabular-nums; }
  .chart { grid-column: span 6; }
  .half { grid-column: span 6; }
  .third { grid-column: span 4; }
  h2 { margin: 0 0 8px; font-size: 13px; font-weight: 600; color: var(--muted); text-transform: uppercase; letter-spacing: .5px; }
  canvas { width: 100%; height: 180px; display: block; }
  .legend { display: flex; gap: 14px; font-size: 12px; color: var(--muted); margin-top: 6px; }
  .legend i { display: inline-block; width: 10px; height: 3px; margin-right: 5px; vertical-align: middle; }
  .bar { height: 12px; background: var(--line); border-radius: 6px; overflow: hidden; margin: 8px 0; }
  .bar > div { height: 100%; width: 0; background: var(--accent); transition: width .4s; }
  dl { display: grid; grid-template-columns: auto 1fr; gap: 4px 16px; margin: 0; }
  dt { color: var(--muted); }
  dd { margin: 0; text-align: right; font-variant-numeric: tabular-nums; }
  table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
  th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); }
  th { color: var(--muted); font-weight: 500; font-size: 12px; }
  td.num, th.num { text-align: right; }
  .empty { color: var(--muted); font-style: italic; }
  #auth { display: none; grid-column: span 12; }
  #auth input { background: var(--bg); color: var(--text); border: 1px solid var(--line); border-radius: 4px; padding: 6px 8px; width: 320px; }
  #auth button { background: var(--accent); color: #00121f; border: 0; border-radius: 4px; padding: 6px 12px; margin-left: 8px; cursor: pointer; }
  #error { color: var(--bad); font-size: 12px; }
  @media (max-width: 1100px) { .stat { grid-column: span 4; } .chart, .half, .third { grid-column: span 12; } }
</style>
</head>
<body>
<header>
  <h1>TinyServe</h1>
  <span class="meta" id="model-name">-</span>
  <span class="meta" id="model-meta"></span>
  <span class="spacer"></span>
  <span id="error"></span>
  <span class="meta" id="uptime"></span>
  <span id="status">connecting</span>
</header>
<main>
  <form class="card" id="auth">
    <h2>API key required</h2>
    <input id="auth-key" type="password" placeholder="Bearer key for /v1 and /metrics" autocomplete="off">
    <button type="submit">Use key</button>
  </form>

  <div class="card stat"><div class="label">Running</div><div class="value" id="running">-</div><div class="sub">requests decoding</div></div>
  <div class="card stat"><div class="label">Waiting</div><div class="value" id="waiting">-</div><div class="sub">requests queued</div></div>
  <div class="card stat"><div class="label">Throughput</div><div class="value" id="throughput">-</div><div class="sub">generated tokens / s</div></div>
  <div class="card stat"><div class="label">Time to first token</div><div class="value" id="ttft-p50">-</div><div class="sub">p99 <span id="ttft-p99">-</span> (last min)</div></div>
  <div class="card stat"><div class="label">Inter-token latency</div><div class="value" id="itl-p50">-</div><div class="sub">p99 <span id="itl-p99">-</span> (last min)</div></div>
  <div class="card stat"><div class="label">Requests</div><div class="value" id="requests-total">-</div><div class="sub"><span id="requests-failed">-</span> failed</div></div>

  <div class="card chart">
    <h2>Throughput (tokens / s)</h2>
    <canvas id="chart-throughput"></canvas>
    <div class="legend"><span><i style="background: var(--accent)"></i>generated</span><span><i style="background: var(--accent3)"></i>prompt</span></div>
  </div>
  <div class="card chart">
    <h2>Latency (ms, p50 over the last minute)</h2>
    <canvas id="chart-latency"></canvas>
    <div class="legend"><span><i style="background: var(--accent2)"></i>time to first token</span><span><i style="background: var(--accent)"></i>inter-token</span></div>
  </div>

  <div class="card third">
    <h2>KV cache pages</h2>
    <div class="bar"><div id="kv-bar"></div></div>
    <dl>
      <dt>in use</dt><dd id="kv-usage">-</dd>
      <dt>pages used / total</dt><dd id="kv-pages">-</dd>
      <dt>prefix cache hit tokens</dt><dd id="prefix-hit">-</dd>
      <dt>preemptions</dt><dd id="preemptions">-</dd>
    </dl>
  </div>
  <div class="card third">
    <h2>Query-aware selection</h2>
    <dl>
      <dt>pages selected / scanned</dt><dd id="sel-ratio">-</dd>
      <dt>pages selected</dt><dd id="pages-selected">-</dd>
      <dt>KV bytes read</dt><dd id="kv-bytes">-</dd>
      <dt>KV hit rate</dt><dd id="kv-hit-rate">-</dd>
      <dt>early exits</dt><dd id="early-exits">-</dd>
      <dt>tokens pruned</dt><dd id="tokens-pruned">-</dd>
    </dl>
  </div>
  <div class="card third">
    <h2>Totals</h2>
    <dl>
      <dt>prompt tokens</dt><dd id="prompt-tokens">-</dd>
      <dt>generated tokens</dt><dd id="gen-tokens">-</dd>
      <dt>end-to-end p50 / p99</dt><dd id="e2e">-</dd>
      <dt>executor</dt><dd id="executor">-</dd>
    </dl>
  </div>

  <div class="card" style="grid-column: span 12">
    <h2>Sessions (<span id="session-count">0</span>)</h2>
    <table>
      <thead><tr><th>id</th><th class="num">requests</th><th class="num">tokens</th><th class="num">pages</th><th class="num">last active</th></tr></thead>
      <tbody id="sessions-body"><tr><td colspan="5" class="empty">no sessions</td></tr></tbody>
    </table>
  </div>
</main>
<script src="/dashboard.js"></script>
</body>
</html>
`;

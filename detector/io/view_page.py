"""What the live view sends besides frames: its pages, scripts and styles, and the headers every response carries.

Two pages: one source's (an ``<img>`` on ``/stream.mjpg``), and the grid of several sources, whose script reads
every source's frames from one multiplexed MJPEG stream (``/grid.mjpg``, each part naming its source) and shows
each in its tile: one connection whatever the number of sources (a browser opens at most six per server, so an
``<img>`` stream per tile would leave the seventh tile blank). The pages load nothing from elsewhere and run no
inline script, so the CSP below allows only the pages' own files (the grid page also the ``blob:`` images
its script makes of the frames); the headers stop caching, sniffing, framing and referrers on every response, errors
included. Text that comes from a source (its state, its last error) is set with ``textContent``, never as HTML.
"""

from __future__ import annotations

BOUNDARY = "detectorframe"
SERVER_NAME = "detector"

SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/view.css">
<script src="/view.js" defer></script></head>
<body><header><h1>{title}</h1><span id="stats">waiting for frames...</span></header>
<img id="view" src="/stream.mjpg" alt="live detections">
</body></html>
"""

STYLE = """body { margin: 0; background: #111; color: #ddd; font: 14px system-ui, sans-serif; }
header { padding: 8px 12px; display: flex; gap: 16px; align-items: baseline; }
h1 { font-size: 16px; margin: 0; }
#stats { font-variant-numeric: tabular-nums; color: #9c9; }
img { display: block; max-width: 100vw; max-height: calc(100vh - 40px); margin: 0 auto; }
"""

SCRIPT = """async function poll() {
  try {
    const s = await (await fetch('/stats.json', {cache: 'no-store'})).json();
    document.getElementById('stats').textContent = `frame ${s.frame} · ${s.fps.toFixed(1)} fps · ` +
      `latency ${s.latency_ms.toFixed(0)} ms · ${s.detections} objects · ${s.viewers} viewer(s)`;
  } catch (e) { document.getElementById('stats').textContent = 'disconnected'; }
}
setInterval(poll, 500); poll();
"""


GRID_CSP = dict(SECURITY_HEADERS)["Content-Security-Policy"].replace("img-src 'self';", "img-src 'self' blob:;")
"""The grid page's own CSP: its script shows frames as ``blob:`` images it makes (only the grid page gets it)."""

GRID_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/view.css">
<script src="/grid.js" defer></script></head>
<body><header><h1>{title}</h1><span id="stats">waiting for frames...</span></header>
<main id="grid">
{tiles}
</main>
</body></html>
"""

GRID_TILE = """<figure class="tile stalled" data-source="{name}"><img alt="{name}">
<div class="overlay">connecting</div>
<figcaption><a href="/stream/{name}.mjpg" target="_blank" rel="noopener">{name}</a>
<span class="state">connecting</span></figcaption></figure>"""

GRID_STYLE = """
#grid { display: grid; gap: 8px; padding: 0 8px 8px;
  grid-template-columns: repeat(auto-fill, minmax(min(100%, 360px), 1fr)); }
.tile { position: relative; margin: 0; background: #000; min-height: 120px; }
.tile img { width: 100%; max-width: none; max-height: none; display: block; }
.tile figcaption { padding: 4px 6px; display: flex; gap: 10px; font-variant-numeric: tabular-nums; }
.tile a { color: #ddd; font-weight: bold; }
.tile .state { color: #9c9; }
.tile.stalled .state { color: #e99; }
.overlay { position: absolute; left: 0; right: 0; top: 40%; text-align: center; font-size: 18px;
  color: #fff; background: rgba(160, 30, 30, 0.7); padding: 6px; display: none; }
.tile.stalled .overlay { display: block; }
"""

GRID_SCRIPT = """const tiles = new Map();
document.querySelectorAll('.tile').forEach(t => tiles.set(t.dataset.source, t));
const SEP = new TextEncoder().encode('\\r\\n\\r\\n');
const text = new TextDecoder();

function find(buf, pat) {
  outer: for (let i = 0; i + pat.length <= buf.length; i++) {
    for (let j = 0; j < pat.length; j++) if (buf[i + j] !== pat[j]) continue outer;
    return i;
  }
  return -1;
}

function show(name, jpeg) {
  const tile = tiles.get(name);
  if (!tile) return;
  const img = tile.querySelector('img');
  const url = URL.createObjectURL(new Blob([jpeg], {type: 'image/jpeg'}));
  if (img.dataset.before) URL.revokeObjectURL(img.dataset.before);  // two behind: the shown one stays valid
  img.dataset.before = img.dataset.url || '';
  img.dataset.url = url;
  img.src = url;
}

async function stream() {  // one multipart stream, each part naming its source in X-Source
  try {
    const resp = await fetch('/grid.mjpg', {cache: 'no-store'});
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    const reader = resp.body.getReader();
    let buf = new Uint8Array(0);
    for (;;) {
      const {done, value} = await reader.read();
      if (done) break;
      const joined = new Uint8Array(buf.length + value.length);
      joined.set(buf);
      joined.set(value, buf.length);
      buf = joined;
      for (;;) {
        const end = find(buf, SEP);
        if (end < 0) break;
        const head = text.decode(buf.subarray(0, end));
        const length = parseInt((/content-length:\\s*(\\d+)/i.exec(head) || [])[1], 10);
        const name = (/x-source:\\s*(\\S+)/i.exec(head) || [])[1];
        if (Number.isNaN(length)) throw new Error('bad part');
        if (buf.length < end + 4 + length) break;
        show(name, buf.slice(end + 4, end + 4 + length));
        buf = buf.slice(end + 4 + length);
      }
    }
  } catch (e) { /* the run ended or the network dropped: try again */ }
  setTimeout(stream, 1000);
}

function describe(s) {
  if (s.state === 'running' || s.state === undefined) {
    const age = s.age_ms && s.age_ms.p95 !== undefined ? ` · age p95 ${Math.round(s.age_ms.p95)} ms` : '';
    return `${(s.fps || 0).toFixed(1)} fps${age} · ${s.detections || 0} objects · ${s.dropped || 0} dropped`;
  }
  const what = s.state === 'reconnecting' ? 'stalled, reconnecting' : s.state;
  return s.last_error ? `${what}: ${s.last_error}` : what;
}

async function poll() {
  try {
    const s = await (await fetch('/stats.json', {cache: 'no-store'})).json();
    let running = 0;
    for (const [name, st] of Object.entries(s.sources)) {
      const tile = tiles.get(name);
      if (!tile) continue;
      const live = st.state === undefined ? st.frame !== undefined : st.state === 'running';  // no health: frames
      running += live ? 1 : 0;
      tile.classList.toggle('stalled', !live);
      tile.querySelector('.state').textContent = describe(st);
      tile.querySelector('.overlay').textContent = live ? '' : describe(st);
    }
    document.getElementById('stats').textContent =
      `${running} of ${tiles.size} sources running · ${s.viewers} viewer(s)`;
  } catch (e) { document.getElementById('stats').textContent = 'disconnected'; }
}
setInterval(poll, 500); poll(); stream();
"""


def part_head(length: int, source: str | None = None) -> bytes:
    """The multipart head sent before each JPEG of an MJPEG stream (naming its source on the grid's stream)."""
    named = f"X-Source: {source}\r\n" if source is not None else ""
    return f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n{named}Content-Length: {length}\r\n\r\n".encode()

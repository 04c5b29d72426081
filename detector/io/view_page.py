"""What the live view sends besides frames: its page, script and style, and the headers every response carries.

The page loads nothing from elsewhere and runs no inline script, so the CSP below can allow only the page's own
files; the headers stop caching, sniffing, framing and referrers on every response, errors included.
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


def part_head(length: int) -> bytes:
    """The multipart head sent before each JPEG of the MJPEG stream."""
    return f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {length}\r\n\r\n".encode()

// Demo page: live kernel/userspace numbers from the stats endpoint, and request bursts.
const metricsPort = new URLSearchParams(location.search).get("metrics") || "9180";
const statsUrl = `${location.protocol}//${location.hostname}:${metricsPort}/stats.json`;
let previous = null;

function show(id, text) { const el = document.getElementById(id); if (el) el.textContent = text; }

async function refresh() {
  try {
    const r = await fetch(statsUrl, { cache: "no-store" });
    const s = await r.json();
    const k = s.requests.kernel, u = s.requests.user, total = k + u;
    show("kernel", k.toLocaleString());
    show("user", u.toLocaleString());
    const share = total ? (100 * k / total) : 0;
    show("share", share.toFixed(1) + " %");
    document.getElementById("share-bar").style.width = share + "%";
    if (previous) {
      const dt = Math.max(s.time - previous.time, 0.001);
      show("kernel-rate", ((k - previous.requests.kernel) / dt).toFixed(0) + " req/s");
      show("user-rate", ((u - previous.requests.user) / dt).toFixed(0) + " req/s");
    }
    previous = s;
    show("status", s.kernel.enabled ? `kernel path on (${Object.keys(s.kernel.interfaces).join(", ")}), ${s.cache.entries || 0} files cached`
                                    : `kernel path off: ${s.kernel.reason}`);
  } catch (e) {
    show("status", `no stats from ${statsUrl}: is the metrics port enabled?`);
  }
}

async function burst(url, n, out) {
  const t0 = performance.now();
  let ok = 0;
  for (let i = 0; i < n; i++) {
    const r = await fetch(url, { cache: "no-store" });
    if (r.ok) { await r.arrayBuffer(); ok++; }
  }
  out.textContent = `${ok}/${n} OK in ${Math.round(performance.now() - t0)} ms`;
  refresh();
}

for (const [id, url] of [["hot", "/data.json"], ["cold", "/assets/article.txt"]]) {
  const button = document.getElementById(id);
  if (button) button.addEventListener("click", () => burst(url, 100, document.getElementById(id + "-out")));
}
if (document.getElementById("kernel")) { refresh(); setInterval(refresh, 1000); }
// ?autoburst=hot|cold presses a button on load (used by the headless browser test).
const auto = new URLSearchParams(location.search).get("autoburst");
if (auto && document.getElementById(auto)) document.getElementById(auto).click();

// Demo page: fire a burst of requests at one URL and report how long it took.
async function burst(url, n, out) {
  const t0 = performance.now();
  let ok = 0;
  for (let i = 0; i < n; i++) {
    const r = await fetch(url, { cache: "no-store" });
    if (r.ok) { await r.arrayBuffer(); ok++; }
  }
  out.textContent = `${ok}/${n} OK in ${Math.round(performance.now() - t0)} ms`;
}
for (const [id, url] of [["hot", "/data.json"], ["cold", "/assets/article.txt"]]) {
  const button = document.getElementById(id);
  if (button) button.addEventListener("click", () => burst(url, 100, document.getElementById(id + "-out")));
}

// podbay's pages: a job's output followed live, and the usage charts (Chart.js).
"use strict";

(function followLogs() {
  const pre = document.getElementById("logs");
  if (!pre) return;
  const decoder = new TextDecoder();
  fetch(pre.dataset.src, { credentials: "same-origin", headers: { "X-Podbay-Page": pre.dataset.token } }).then(async (r) => {
    if (!r.ok || !r.body) {
      pre.textContent = "The output cannot be read (" + r.status + "): reload the page.";
      return;
    }
    const reader = r.body.getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.append(decoder.decode(value, { stream: true }));
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    }
    pre.append(decoder.decode());
    const following = document.getElementById("following");
    if (following) {
      // The job ended while the page was open: its final state, exit code and reason.
      following.textContent = "(the job has ended)";
      setTimeout(() => location.reload(), 1500);
    }
  });
})();

(function usageCharts() {
  const data = document.getElementById("usage-data");
  if (!data || typeof Chart === "undefined") return;
  const d = JSON.parse(data.textContent);
  new Chart(document.getElementById("held-chart"), {
    type: "bar",
    data: {
      labels: d.keys,
      datasets: [
        { label: "GPU-hours held", data: d.held, backgroundColor: "#9db7d5" },
        { label: "GPU-hours used", data: d.used, backgroundColor: "#2f6fb3" },
      ],
    },
    options: { animation: false, responsive: true, scales: { y: { beginAtZero: true } } },
  });
  new Chart(document.getElementById("util-chart"), {
    type: "line",
    data: {
      labels: d.labels,
      datasets: [{ label: "mean utilisation %", data: d.utilization, borderColor: "#2f6fb3", tension: 0.2 }],
    },
    options: { animation: false, responsive: true, scales: { y: { min: 0, max: 100 } } },
  });
  document.body.dataset.charts = "drawn";
})();

// Draws the dashboard's charts from the JSON block the server renders into the page (no inline script:
// the Content-Security-Policy allows only this file and the vendored Chart.js).
"use strict";

(function () {
  const data = JSON.parse(document.getElementById("dashboard-data").textContent);
  const colours = {
    received: "#1f4e79",
    actioned: "#2e7d32",
    no_action: "#c62828",
    pending: "#9e9e9e",
    due: "#90a4ae",
    within: "#2e7d32",
    time: "#1f4e79",
  };

  // Static charts: drawn once, completely, so what a screenshot or a test sees is final.
  Chart.defaults.animation = false;
  Chart.defaults.maintainAspectRatio = false;
  Chart.defaults.font.family = "system-ui, sans-serif";

  function dataset(label, values, colour, extra) {
    return Object.assign(
      { label: label, data: values, borderColor: colour, backgroundColor: colour, spanGaps: false },
      extra || {}
    );
  }

  const countAxis = { beginAtZero: true, ticks: { precision: 0 } };

  new Chart(document.getElementById("chart-timeline"), {
    type: "line",
    data: {
      labels: data.periods,
      datasets: [
        dataset("Received", data.timeline.received, colours.received),
        dataset("Actioned", data.timeline.actioned, colours.actioned),
        dataset("No action", data.timeline.no_action, colours.no_action),
        dataset("Pending", data.timeline.pending, colours.pending),
      ],
    },
    options: { scales: { y: countAxis } },
  });

  new Chart(document.getElementById("chart-action-time"), {
    type: "bar",
    data: {
      labels: data.action_time.labels,
      datasets: [dataset("Decided", data.action_time.counts, colours.time)],
    },
    options: { scales: { y: countAxis }, plugins: { legend: { display: false } } },
  });

  new Chart(document.getElementById("chart-deadline"), {
    type: "bar",
    data: {
      labels: data.periods,
      datasets: [
        dataset("Removal orders due", data.deadline.due, colours.due),
        dataset("Actioned within deadline", data.deadline.within, colours.within),
      ],
    },
    options: { scales: { y: countAxis } },
  });

  document.body.dataset.chartsReady = "true";
})();

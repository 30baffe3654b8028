// Usage charts (uPlot) on host, VM and dashboard pages. Each `[data-charts]`
// section names its metrics window in the API; the charts draw it and
// redraw it whenever the event stream announces a sample of the host they
// show (live.js forwards every stream message as an `ov:event`), so the
// server stays the one place that computes figures.

import uPlot from 'uplot';

const GAP_MS = 2000;

// What each chart shows: the window's columns and how to print them.
const CHARTS = {
  cpu: { title: 'CPU', columns: [['cpu_percent', 'busy']], unit: 'percent' },
  memory: { title: 'Memory', columns: [['memory_used_bytes', 'used']], unit: 'bytes' },
  disk: {
    title: 'Disk',
    columns: [['disk_read_bytes_per_sec', 'read'], ['disk_write_bytes_per_sec', 'write']],
    unit: 'rate',
  },
  network: {
    title: 'Network',
    columns: [['net_rx_bytes_per_sec', 'in'], ['net_tx_bytes_per_sec', 'out']],
    unit: 'rate',
  },
};
const COLORS = ['#2563eb', '#d97706'];

function bytes(v) {
  if (v === null || v === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  const digits = Number.isInteger(v) || Math.abs(v) >= 100 ? 0 : 1;
  return `${v.toFixed(digits)} ${units[i]}`;
}

function format(unit, v) {
  if (v === null || v === undefined) return '–';
  if (unit === 'percent') return `${v.toFixed(1)} %`;
  if (unit === 'rate') return `${bytes(v)}/s`;
  return bytes(v);
}

function options(kind, width, capacity) {
  const spec = CHARTS[kind];
  const top = spec.unit === 'percent' ? 100 : spec.unit === 'bytes' ? capacity.memory_bytes : null;
  return {
    width,
    height: 160,
    legend: { live: true },
    cursor: { drag: { x: false, y: false } },
    scales: { y: { range: (u, min, max) => [0, Math.max(top || 0, max || 1)] } },
    axes: [{}, { size: 70, values: (u, vals) => vals.map((v) => format(spec.unit, v)) }],
    series: [
      {},
      ...spec.columns.map(([, label], i) => ({
        label,
        stroke: COLORS[i],
        width: 1.5,
        spanGaps: false,
        value: (u, v) => format(spec.unit, v),
      })),
    ],
  };
}

function data(kind, window) {
  return [window.times, ...CHARTS[kind].columns.map(([column]) => window[column] || [])];
}

function setupSection(section) {
  const figures = Array.from(section.querySelectorAll('[data-chart]'));
  const empty = section.querySelector('.chart-empty');
  const plots = new Map();
  let range = '1h';
  let timer = null;
  let last = 0;

  const draw = (window) => {
    const hasData = window.times.length > 0;
    section.dataset.points = String(window.times.length);
    if (empty) empty.hidden = hasData;
    for (const figure of figures) {
      const kind = figure.dataset.chart;
      const width = Math.max(figure.clientWidth, 240);
      const plot = plots.get(kind);
      if (plot && plot.rangeStep === window.step_secs) {
        plot.setData(data(kind, window));
      } else {
        if (plot) plot.destroy();
        const fresh = new uPlot(options(kind, width, window.capacity || {}), data(kind, window), figure);
        fresh.rangeStep = window.step_secs;
        plots.set(kind, fresh);
      }
    }
  };

  const load = async () => {
    last = Date.now();
    try {
      const response = await fetch(`${section.dataset.charts}?range=${range}`, { credentials: 'same-origin' });
      if (response.ok) draw(await response.json());
    } catch {
      // the next sample tries again
    }
  };

  // At most one fetch per gap, and always one after the last sample.
  const reload = () => {
    if (timer) return;
    const wait = Math.max(0, last + GAP_MS - Date.now());
    timer = setTimeout(() => {
      timer = null;
      load();
    }, wait);
  };

  document.addEventListener('ov:event', (event) => {
    const message = event.detail;
    if (message.type !== 'metrics.sampled') return;
    const host = section.dataset.chartHost;
    if (!host || host === message.host_id) reload();
  });
  document.addEventListener('ov:live-open', reload);

  for (const button of section.querySelectorAll('[data-range]')) {
    button.addEventListener('click', () => {
      range = button.dataset.range;
      for (const b of section.querySelectorAll('[data-range]')) {
        b.setAttribute('aria-pressed', String(b === button));
      }
      load();
    });
  }

  window.addEventListener('resize', () => {
    for (const figure of figures) {
      const plot = plots.get(figure.dataset.chart);
      if (plot) plot.setSize({ width: Math.max(figure.clientWidth, 240), height: 160 });
    }
  });
  load();
}

for (const section of document.querySelectorAll('[data-charts]')) setupSection(section);

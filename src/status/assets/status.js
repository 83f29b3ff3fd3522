// narwhal's status page: polls status.json every 2 s and redraws. No framework, no outside assets.
// Every text from the server goes in through textContent, never as HTML.
(function () {
  'use strict';

  const REFRESH_MS = 2000;
  const TIMEOUT_MS = 10000;
  const HOUR_MS = 3600 * 1000;
  const SVG = 'http://www.w3.org/2000/svg';
  const script = document.currentScript;
  const statusUrl = (script && script.dataset.statusUrl) || 'status.json';
  let lastOk = null;
  let timer = null;

  const $ = (id) => document.getElementById(id);

  /** An element with attributes and children (strings become text nodes). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'text') node.textContent = String(v);
      else node.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      node.append(typeof c === 'string' ? document.createTextNode(c) : c);
    }
    return node;
  }

  function svgEl(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    return node;
  }

  function bytes(n) {
    if (n === null || n === undefined) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    let v = n;
    let i = 0;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    return `${i === 0 ? v : v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)} ${units[i]}`;
  }

  function percent(r) {
    return r === null || r === undefined ? '–' : `${(r * 100).toFixed(r === 1 ? 0 : 1)} %`;
  }

  function count(n, one, many) {
    return `${n.toLocaleString('en')} ${n === 1 ? one : many || `${one}s`}`;
  }

  function duration(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return s % 60 === 0 ? `${m} min` : `${m} min ${s % 60} s`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h} h ${m % 60} min`;
    return `${Math.floor(h / 24)} d ${h % 24} h`;
  }

  /** "12 s ago", "in 5 h 3 min" */
  function relative(iso, now) {
    const delta = (Date.parse(iso) - now) / 1000;
    return delta < 0 ? `${duration(-delta)} ago` : `in ${duration(delta)}`;
  }

  function time(iso, now) {
    return el('time', { datetime: iso, title: new Date(iso).toLocaleString() }, relative(iso, now));
  }

  function pill(text, tone) {
    return el('span', { class: `pill ${tone || ''}`.trim() }, text);
  }

  function replace(parent, nodes) {
    parent.replaceChildren(...nodes);
  }

  function renderHeader(s) {
    $('hostname').textContent = s.instance.hostname;
    document.title = `narwhal status · ${s.instance.hostname}`;
    replace($('instance'), [
      `version ${s.instance.version} · up ${duration(s.instance.uptimeSeconds)} · `,
      el(
        'span',
        { class: 'mono', title: 'The URL this instance advertises to its peers' },
        s.instance.url,
      ),
    ]);
    const lock = s.backends.lock;
    const lockTone = !lock.healthy ? 'bad' : lock.degraded ? 'warn' : 'ok';
    const lockText = `locks: ${lock.backend}${lock.degraded ? ' (degraded)' : lock.healthy ? '' : ' (down)'}`;
    replace($('backends'), [
      el('li', { class: 'badge' }, `database: ${s.backends.database}`),
      el('li', { class: 'badge' }, `storage: ${s.backends.storage}`),
      el('li', { class: `badge ${lockTone}`, title: lock.detail }, lockText),
    ]);
  }

  function renderTotals(s) {
    const t = s.totals;
    $('narinfo-ratio').textContent = percent(t.narinfo.hitRatio);
    $('narinfo-counts').textContent =
      `${count(t.narinfo.hit, 'hit')}, ${count(t.narinfo.miss, 'miss', 'misses')}, ` +
      `${t.narinfo.notFound.toLocaleString('en')} not found`;
    $('nar-ratio').textContent = percent(t.nar.hitRatio);
    $('nar-counts').textContent =
      `${count(t.nar.hit, 'hit')}, ${count(t.nar.download, 'download')}, ` +
      `${t.nar.joined.toLocaleString('en')} joined, ${t.nar.peer.toLocaleString('en')} from peers`;
    $('served-total').textContent = bytes(t.servedBytes.total);
    $('served-split').textContent =
      `${bytes(t.servedBytes.storage)} from storage, ${bytes(t.servedBytes.download)} from ` +
      `downloads, ${bytes(t.servedBytes.peer)} from peers`;
    $('upstream-total').textContent = bytes(t.upstreamBytes);
    const saved = t.servedBytes.total - t.upstreamBytes;
    $('saved').textContent =
      saved > 0
        ? `${bytes(saved)} saved` +
          (t.upstreamBytes > 0
            ? ` (${(t.servedBytes.total / t.upstreamBytes).toFixed(1)}× what was fetched)`
            : '')
        : `${count(t.downloads.stored, 'download')} stored, ${t.downloads.discarded} discarded`;
  }

  /**
   * The charts' time axis: the last hour, or less while the instance is younger (so a fresh one's
   * first minutes fill the width). `x` of a point's middle in a 600-wide chart, kept off the edges.
   */
  function timeAxis(points, now) {
    const first = points.length > 0 ? Date.parse(points[0].from) : now - HOUR_MS;
    const span = Math.max(60 * 1000, Math.min(HOUR_MS, now - first));
    return {
      span,
      x(point) {
        const mid = Date.parse(point.from) + (point.seconds * 1000) / 2;
        return 4 + Math.max(0, Math.min(1, 1 - (now - mid) / span)) * 592;
      },
    };
  }

  /** Path data through [x, y] points; null y breaks the line. */
  function pathOf(points) {
    let d = '';
    let pen = false;
    for (const [x, y] of points) {
      if (y === null) {
        pen = false;
        continue;
      }
      d += `${pen ? 'L' : 'M'}${x.toFixed(1)},${y.toFixed(1)}`;
      pen = true;
    }
    return d;
  }

  function ratioSeries(points, axis, key) {
    return points.map((p) => {
      const r = p[key];
      const all = Object.values(r).reduce((a, b) => a + b, 0);
      return [axis.x(p), all === 0 ? null : 150 - (r.hit / all) * 146 - 2];
    });
  }

  function addLine(svg, series, cls) {
    const d = pathOf(series);
    if (d) svg.append(svgEl('path', { d, class: `line ${cls}` }));
    // A point without neighbours would draw nothing: mark every point as a dot too.
    for (const [x, y] of series) {
      if (y !== null) svg.append(svgEl('path', { d: `M${x},${y}h0`, class: `dot ${cls}` }));
    }
  }

  function hourTotals(points) {
    const t = { narinfo: { hit: 0, all: 0 }, nar: { hit: 0, all: 0 }, served: 0, fetched: 0 };
    for (const p of points) {
      for (const key of ['narinfo', 'nar']) {
        t[key].hit += p[key].hit;
        t[key].all += Object.values(p[key]).reduce((a, b) => a + b, 0);
      }
      t.served += p.servedBytes;
      t.fetched += p.upstreamBytes;
    }
    return t;
  }

  function renderCharts(s, now) {
    const points = s.history.points;
    const hour = hourTotals(points);
    const axis = timeAxis(points, now);
    const since = axis.span >= HOUR_MS ? '1 h ago' : `${duration(axis.span / 1000)} ago`;
    for (const label of document.querySelectorAll('.axis-since')) label.textContent = since;
    const ratioSvg = $('ratio-chart');
    ratioSvg.replaceChildren();
    addLine(ratioSvg, ratioSeries(points, axis, 'narinfo'), 'narinfo');
    addLine(ratioSvg, ratioSeries(points, axis, 'nar'), 'nar');
    const describe = (k, what) =>
      hour[k].all === 0
        ? `no ${what} yet`
        : `${percent(hour[k].hit / hour[k].all)} (${hour[k].hit} of ${hour[k].all} ${what})`;
    ratioSvg.setAttribute(
      'aria-label',
      `Hit ratio over the last hour: narinfo ${describe('narinfo', 'lookups')}; ` +
        `NAR ${describe('nar', 'requests')}`,
    );

    const perSecond = points.map((p) => ({
      x: axis.x(p),
      // Each point as wide as the time it covers (the running one is narrower).
      width: Math.max(1, ((p.seconds * 1000) / axis.span) * 592 - 1),
      served: p.seconds > 0 ? p.servedBytes / p.seconds : 0,
      fetched: p.seconds > 0 ? p.upstreamBytes / p.seconds : 0,
    }));
    const peak = Math.max(1, ...perSecond.map((p) => Math.max(p.served, p.fetched)));
    const yOf = (v) => 150 - (v / peak) * 146 - 2;
    const bytesSvg = $('bytes-chart');
    bytesSvg.replaceChildren();
    for (const p of perSecond) {
      if (p.served <= 0) continue;
      const y = yOf(p.served);
      bytesSvg.append(
        svgEl('rect', {
          x: (p.x - p.width / 2).toFixed(1),
          y: y.toFixed(1),
          width: p.width.toFixed(1),
          height: (150 - y).toFixed(1),
          class: 'bar served',
        }),
      );
    }
    addLine(
      bytesSvg,
      perSecond.map((p) => [p.x, yOf(p.fetched)]),
      'fetched',
    );
    $('bytes-peak').textContent = `${bytes(peak)}/s`;
    bytesSvg.setAttribute(
      'aria-label',
      `Bytes over the last hour: ${bytes(hour.served)} served to clients, ` +
        `${bytes(hour.fetched)} fetched from upstreams; peak ${bytes(peak)} per second`,
    );
  }

  function progressOf(written, length, label) {
    const p = el('progress', { 'aria-label': label });
    if (length !== null && length > 0) {
      p.max = length;
      p.value = Math.min(written, length);
    }
    return p;
  }

  function renderDownloads(s, now) {
    const here = s.downloads.here.map((d) => {
      const of = d.length === null ? '' : ` of ${bytes(d.length)}`;
      const pct = d.length ? ` (${Math.floor((d.written / d.length) * 100)} %)` : '';
      const label = `Download of ${d.name}: ${bytes(d.written)}${of}${pct}`;
      return el(
        'li',
        { 'data-download': d.name },
        el(
          'div',
          { class: 'row' },
          el('code', {}, d.name),
          pill(d.state, d.state === 'failed' ? 'bad' : d.state === 'receiving' ? '' : 'ok'),
        ),
        progressOf(d.written, d.length, label),
        el(
          'div',
          { class: 'row small' },
          el('span', { class: 'progress-text' }, `${bytes(d.written)}${of}${pct}`),
          el('span', {}, `${bytes(d.bytesPerSecond)}/s`),
          el('span', {}, count(d.readers, 'reader')),
          el('span', {}, 'started ', time(d.startedAt, now)),
          el('span', { class: 'mono', title: 'Instance holding this download' }, d.holder),
        ),
      );
    });
    replace($('downloads'), here);
    $('downloads-empty').hidden = here.length > 0;
    const peers = s.downloads.fromPeers.map((d) =>
      el(
        'li',
        {},
        el('div', { class: 'row' }, el('code', {}, d.name), pill('streamed from a peer')),
        el(
          'div',
          { class: 'row small' },
          el('span', {}, 'held by ', el('span', { class: 'mono' }, d.holder)),
          d.length === null ? null : el('span', {}, bytes(d.length)),
          el('span', {}, 'since ', time(d.startedAt, now)),
        ),
      ),
    );
    replace($('peer-downloads'), peers);
    $('peer-block').hidden = peers.length === 0;
  }

  function renderStorage(s, now) {
    const { usedBytes, lru } = s.storage;
    const meter = $('storage-meter');
    if (lru.maxBytes !== null) {
      meter.hidden = false;
      meter.max = lru.maxBytes;
      meter.low = lru.maxBytes * 0.8;
      meter.high = lru.maxBytes * 0.95;
      meter.optimum = 0;
      meter.value = Math.min(usedBytes || 0, lru.maxBytes);
      const pct = ((usedBytes || 0) / lru.maxBytes) * 100;
      const text = `${bytes(usedBytes)} of ${bytes(lru.maxBytes)} used (${pct.toFixed(1)} %)`;
      meter.setAttribute('aria-label', `Storage used: ${text}`);
      $('storage-text').textContent = text;
    } else {
      meter.hidden = true;
      $('storage-text').textContent =
        `${bytes(usedBytes)} stored; no limit (--cache-max-size is not set)`;
    }
    const last = lru.lastRun;
    let lastText;
    if (!last) lastText = ['none since this instance started'];
    else if (last.result === 'failed') lastText = [time(last.at, now), `: failed (${last.error})`];
    else if (last.result === 'skipped')
      lastText = [time(last.at, now), ': skipped (another instance was running it)'];
    else
      lastText = [
        time(last.at, now),
        `: evicted ${count(last.evicted, 'NAR')}, freed ${bytes(last.evictedBytes)} in ` +
          `${last.durationMs} ms`,
      ];
    replace($('lru-last'), lastText);
    replace(
      $('lru-next'),
      lru.nextRunAt
        ? [time(lru.nextRunAt, now), ' ', el('code', {}, lru.schedule)]
        : ['never (no size limit)'],
    );
  }

  function renderUpstreams(s, now) {
    const items = s.upstreams.map((u) => {
      // Reachability from the probe; with a circuit breaker (fields `circuit`, `retryAt` in the
      // snapshot) an upstream narwhal skips after repeated failures says so, and until when.
      const states = [];
      if (u.reachable === null) states.push(pill('not probed yet'));
      else states.push(u.reachable ? pill('reachable', 'ok') : pill('unreachable', 'bad'));
      if (u.circuit === 'open') {
        const until = u.retryAt ? ` until ${new Date(u.retryAt).toLocaleTimeString()}` : '';
        states.push(pill(`skipped${until}`, 'warn'));
      } else if (u.circuit === 'half-open') states.push(pill('trying again', 'warn'));
      const state = el('span', { class: 'states' }, ...states);
      const figure = (name, value) => [el('div', {}, el('dt', {}, name), el('dd', {}, value))];
      return el(
        'li',
        { 'data-upstream': u.url },
        el('div', { class: 'row' }, el('code', {}, u.url), state),
        el(
          'dl',
          { class: 'figures' },
          ...figure('probe latency', u.latencyMs === null ? '–' : `${u.latencyMs} ms`),
          ...figure('mean response', u.meanResponseMs === null ? '–' : `${u.meanResponseMs} ms`),
          ...figure('requests', u.requests.toLocaleString('en')),
          ...figure('errors (1 h / all)', `${u.errorsLastHour} / ${u.errors}`),
          ...figure('priority', String(u.priority)),
          ...figure('last probe', u.checkedAt ? time(u.checkedAt, now) : '–'),
        ),
        u.error ? el('p', { class: 'small' }, `last probe failed: ${u.error}`) : null,
      );
    });
    replace($('upstreams'), items);
  }

  const KIND_TEXT = {
    'bad-signature': ['bad signature', 'bad'],
    'invalid-narinfo': ['invalid narinfo', 'bad'],
    'hash-mismatch': ['hash mismatch', 'bad'],
    'download-failed': ['download failed', 'warn'],
    'upstream-error': ['upstream error', 'warn'],
  };

  function renderFailures(s, now) {
    const items = s.failures.map((f) => {
      const [text, tone] = KIND_TEXT[f.kind] || [f.kind, 'warn'];
      return el(
        'li',
        { 'data-kind': f.kind },
        el(
          'div',
          { class: 'row' },
          el('span', {}, pill(text, tone), ' ', el('code', {}, f.subject)),
          el('span', { class: 'small' }, f.count > 1 ? `×${f.count}, last ` : '', time(f.at, now)),
        ),
        el('p', { class: 'message' }, f.message),
        f.upstream ? el('div', { class: 'small mono' }, f.upstream) : null,
      );
    });
    replace($('failures'), items);
    $('failures-empty').hidden = items.length > 0;
  }

  function render(s) {
    const now = Date.parse(s.generatedAt);
    renderHeader(s);
    renderTotals(s);
    renderCharts(s, now);
    renderDownloads(s, now);
    renderStorage(s, now);
    renderUpstreams(s, now);
    renderFailures(s, now);
    $('updated').textContent = `Updated ${new Date(now).toLocaleTimeString()}`;
  }

  async function refresh() {
    clearTimeout(timer);
    const abort = new AbortController();
    const giveUp = setTimeout(() => abort.abort(), TIMEOUT_MS);
    try {
      const res = await fetch(statusUrl, {
        cache: 'no-store',
        headers: { accept: 'application/json' },
        signal: abort.signal,
      });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      render(await res.json());
      lastOk = new Date();
      $('stale').hidden = true;
    } catch (e) {
      const stale = $('stale');
      stale.hidden = false;
      stale.textContent =
        `narwhal did not answer (${e && e.message ? e.message : 'error'}); retrying. ` +
        (lastOk ? `The figures are from ${lastOk.toLocaleTimeString()}.` : '');
    } finally {
      clearTimeout(giveUp);
      if (!document.hidden) timer = setTimeout(refresh, REFRESH_MS);
    }
  }

  // Hidden tabs do not poll; coming back refreshes at once.
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden) void refresh();
  });
  void refresh();
})();

// The workflow dashboard: plain browser JavaScript, no build step, no dependencies.
// Run data is only ever put into the page as text (h() below), never parsed as markup.
'use strict';

(() => {
  // The page links this file as <base>/assets/dashboard.js, whatever prefix or proxy path is in front.
  const base = new URL('..', document.currentScript.src);
  const readOnly = document.documentElement.dataset.readOnly === 'true';
  const refreshMs = Math.max(1, Number(new URLSearchParams(location.search).get('refresh')) || 5) * 1000;

  const STATES = ['pending', 'running', 'waiting', 'cancelling', 'succeeded', 'failed', 'cancelled'];
  const TERMINAL = ['succeeded', 'failed', 'cancelled'];
  const CANCELLABLE = new Set(['pending', 'running', 'waiting']);
  const CHART_BARS = 60;
  const SVG = 'http://www.w3.org/2000/svg';

  const $ = (id) => document.getElementById(id);
  /** replaceChildren, leaving out what is absent (it would print "null"). */
  const fill = (el, ...nodes) => el.replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined));
  /** Numbers align right; `opt` columns give way on a phone. */
  const COLUMN = { step: 'num', attempt: 'num', attempts: 'num opt', took: 'num', submitted: 'opt', worker: 'opt' };
  const head = (columns) =>
    h(
      'thead',
      {},
      h(
        'tr',
        {},
        columns.map((c) => h('th', { scope: 'col', className: COLUMN[c] ?? '' }, c)),
      ),
    );

  /** An element with attributes/properties and children; strings become text nodes. */
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null) continue;
      if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
      else if (key === 'dataset') Object.assign(el.dataset, value);
      else if (key in el) el[key] = value;
      else if (value !== false) el.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function svg(tag, attrs, text) {
    const el = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
    if (text !== undefined) el.textContent = text;
    return el;
  }

  const pad = (n) => String(n).padStart(2, '0');
  function when(iso) {
    if (!iso) return '';
    const d = new Date(iso);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  const json = (value) => JSON.stringify(value, null, 2);
  const runLink = (runId) => h('a', { href: `#/runs/${encodeURIComponent(runId)}`, className: 'id' }, runId);
  const stateBadge = (state) => h('span', { className: `state state-${state}` }, state);

  async function api(path, init = {}) {
    const res = await fetch(new URL(`api/${path}`, base), {
      credentials: 'same-origin',
      ...init,
      headers: { accept: 'application/json', ...init.headers },
    });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) {
      const err = new Error(Array.isArray(body.message) ? body.message.join('; ') : body.message || res.statusText);
      err.status = res.status;
      throw err;
    }
    return body;
  }

  /** Actions say where they come from with a header a cross-site form cannot send. */
  const act = (path, body = {}) =>
    api(path, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-workflow-dashboard': '1' },
      body: JSON.stringify(body),
    });

  let noticeTimer;
  function notice(text, isError = false) {
    const el = $('notice');
    el.textContent = text;
    el.classList.toggle('error', isError);
    el.hidden = false;
    clearTimeout(noticeTimer);
    if (!isError) noticeTimer = setTimeout(() => (el.hidden = true), 6000);
  }

  /** Runs an action from a button: disabled while it runs, its outcome in the notice. */
  async function perform(button, work, done) {
    button.disabled = true;
    try {
      notice(await work());
      await done();
    } catch (err) {
      notice(err.message, true);
    } finally {
      button.disabled = false;
    }
  }

  // ---- overview: counts, chart, list, dead letters

  const filter = { workflow: '', state: '' };
  let cursor;
  let lastTotals;
  let lastSignature = '';
  const bars = [];

  function renderCounts(counts) {
    const table = $('counts');
    const totals = Object.fromEntries(STATES.map((s) => [s, 0]));
    const cell = (workflow, state, n) =>
      h(
        'td',
        { className: n ? '' : 'zero' },
        h(
          'button',
          {
            type: 'button',
            className: 'count',
            dataset: { workflow, state },
            'aria-label': `${n} ${state || ''} runs of ${workflow || 'every workflow'}`.replace('  ', ' '),
            onclick: () => applyFilter(workflow, state),
          },
          String(n),
        ),
      );
    const rows = counts.map((c) => {
      for (const s of STATES) totals[s] += c.states[s] || 0;
      return h(
        'tr',
        {},
        h('th', { scope: 'row' }, c.workflow),
        STATES.map((s) => cell(c.workflow, s, c.states[s] || 0)),
        cell(c.workflow, '', c.total),
      );
    });
    fill(
      table,
      h(
        'thead',
        {},
        h(
          'tr',
          {},
          h('th', { scope: 'col' }, 'workflow'),
          STATES.map((s) => h('th', { scope: 'col' }, s)),
          h('th', { scope: 'col' }, 'total'),
        ),
      ),
      h('tbody', {}, rows),
      counts.length > 1
        ? h(
            'tfoot',
            {},
            h(
              'tr',
              {},
              h('th', { scope: 'row' }, 'all'),
              STATES.map((s) => cell('', s, totals[s])),
              cell(
                '',
                '',
                counts.reduce((n, c) => n + c.total, 0),
              ),
            ),
          )
        : null,
    );
    const select = $('filter-workflow');
    const known = new Set([...select.options].map((o) => o.value));
    for (const c of counts) if (!known.has(c.workflow)) select.append(h('option', { value: c.workflow }, c.workflow));
    return totals;
  }

  /** Runs that ended per refresh interval, stacked by how they ended: a picture of throughput. */
  function recordThroughput(totals) {
    if (lastTotals) {
      // Retention deletes finished runs, which would read as negative throughput.
      const bar = Object.fromEntries(TERMINAL.map((s) => [s, Math.max(0, totals[s] - lastTotals[s])]));
      bars.push(bar);
      if (bars.length > CHART_BARS) bars.shift();
    }
    lastTotals = totals;
    drawChart();
  }

  function drawChart() {
    const chart = $('chart');
    // Drawn in the element's own pixels, so text keeps its size from a phone to a wide screen.
    const W = Math.max(200, Math.round(chart.getBoundingClientRect().width) || 600);
    const H = 160;
    chart.setAttribute('viewBox', `0 0 ${W} ${H}`);
    const top = 14;
    const bottom = 18;
    const sum = (b) => TERMINAL.reduce((n, s) => n + b[s], 0);
    const max = Math.max(1, ...bars.map(sum));
    const slot = W / CHART_BARS;
    const scale = (H - top - bottom) / max;
    const nodes = [
      svg('line', { x1: 0, y1: H - bottom, x2: W, y2: H - bottom, class: 'axis' }),
      svg('text', { x: 2, y: 11, class: 'label' }, `${max} per ${refreshMs / 1000} s`),
      svg('text', { x: W - 2, y: H - 4, class: 'label end' }, 'now'),
      svg(
        'text',
        {
          x: 2,
          y: H - 4,
          class: 'label',
        },
        `${Math.round((CHART_BARS * refreshMs) / 60000)} min ago`,
      ),
    ];
    bars.forEach((b, i) => {
      let y = H - bottom;
      const x = (CHART_BARS - bars.length + i) * slot + 1;
      for (const s of TERMINAL) {
        if (!b[s]) continue;
        const height = b[s] * scale;
        y -= height;
        const rect = svg('rect', { x, y, width: slot - 2, height, class: `bar bar-${s}` });
        rect.append(svg('title', {}, `${b[s]} ${s}`));
        nodes.push(rect);
      }
    });
    chart.replaceChildren(...nodes);
    const recent = bars.slice(-Math.max(1, Math.round(60000 / refreshMs)));
    const lastMinute = recent.reduce((n, b) => n + sum(b), 0);
    const key = TERMINAL.map((s) => h('span', { className: `key key-${s}` }, s));
    fill(
      $('chart-caption'),
      bars.length ? `Runs finished per ${refreshMs / 1000} s, ${lastMinute} in the last minute: ` : 'Measuring… ',
      key,
    );
  }

  function runRow(run) {
    return h(
      'tr',
      { dataset: { runId: run.runId } },
      h('td', {}, runLink(run.runId)),
      h('td', {}, run.workflow),
      h('td', {}, stateBadge(run.state)),
      h('td', { className: 'num' }, String(run.currentStep)),
      h('td', { className: 'num opt' }, String(run.attempts)),
      h('td', { className: 'opt' }, when(run.submittedAt)),
      h('td', {}, when(run.updatedAt)),
    );
  }
  const runHead = () => head(['run', 'workflow', 'state', 'step', 'attempts', 'submitted', 'updated']);

  async function loadRuns(append = false) {
    const query = new URLSearchParams();
    if (filter.workflow) query.set('workflow', filter.workflow);
    if (filter.state) query.set('state', filter.state);
    if (append && cursor) query.set('cursor', cursor);
    const page = await api(`runs?${query}`);
    const table = $('runs');
    if (!append) table.replaceChildren(runHead(), h('tbody'));
    table.tBodies[0].append(...page.runs.map(runRow));
    cursor = page.nextCursor;
    $('more').hidden = !cursor;
    $('runs-empty').hidden = table.tBodies[0].rows.length > 0;
  }

  async function loadDead() {
    const { deadSteps } = await api(`dead${filter.workflow ? `?workflow=${encodeURIComponent(filter.workflow)}` : ''}`);
    $('dead').replaceChildren(
      deadHead(),
      h(
        'tbody',
        {},
        deadSteps.map((d) => deadRow(d, refreshOverview)),
      ),
    );
    $('dead-empty').hidden = deadSteps.length > 0;
  }
  const deadHead = () => head(['step', 'run', 'workflow', 'attempts', 'error', 'dead since', '']);
  function deadRow(d, after) {
    const retry = readOnly
      ? null
      : h(
          'button',
          {
            type: 'button',
            className: 'action',
            'aria-label': `Retry ${d.jobId}`,
            onclick: (e) =>
              perform(
                e.currentTarget,
                async () =>
                  (await act(`dead/${encodeURIComponent(d.jobId)}/retry`)).retried
                    ? `Retrying ${d.jobId}.`
                    : `${d.jobId} could not be retried (gone, or its run moved on).`,
                after,
              ),
          },
          'Retry',
        );
    return h(
      'tr',
      { dataset: { jobId: d.jobId } },
      h('td', { className: 'num' }, d.handler ? `handler ${d.handler}` : String(d.stepNumber)),
      h('td', {}, runLink(d.runId)),
      h('td', {}, d.workflow),
      h('td', { className: 'num opt' }, String(d.attempts)),
      h('td', {}, h('pre', { className: 'error-text' }, d.lastError)),
      h('td', {}, when(d.deadAt)),
      h('td', {}, retry),
    );
  }

  function applyFilter(workflow, state) {
    filter.workflow = workflow;
    filter.state = state;
    $('filter-workflow').value = workflow;
    $('filter-state').value = state;
    if (location.hash && location.hash !== '#') location.hash = '';
    loadRuns().then(() => $('runs-title').scrollIntoView({ block: 'start' }), showError);
    loadDead().catch(showError);
  }

  async function refreshCounts() {
    const { counts } = await api('counts');
    const totals = renderCounts(counts);
    recordThroughput(totals);
    // The list's first page follows the counts while nobody has paged further.
    const signature = JSON.stringify(counts);
    if (signature !== lastSignature && !cursor) {
      if (lastSignature) await Promise.all([loadRuns(), loadDead()]);
      lastSignature = signature;
    }
  }

  async function refreshOverview() {
    lastSignature = '';
    await Promise.all([refreshCounts(), loadRuns(), loadDead()]);
  }

  // ---- one run

  const field = (label, ...value) => [h('dt', {}, label), h('dd', {}, ...value)];
  const block = (title, ...content) => h('section', {}, h('h3', {}, title), ...content);
  const table = (columns, rows) =>
    h('div', { className: 'scroll' }, h('table', { className: 'list' }, head(columns), h('tbody', {}, rows)));

  function waitingText(w) {
    if (!w) return null;
    if (w.children !== undefined) return `${w.children} child run${w.children === 1 ? '' : 's'} to end`;
    return `signal "${w.signal}"${w.until ? ` until ${when(w.until)}` : ''}`;
  }

  /** The run on screen while it has not ended: the timer redraws it. */
  let liveRun;

  /** Someone is typing in the detail (a signal): a redraw would throw it away. */
  const busyInDetail = () =>
    [...$('detail').querySelectorAll('input, textarea')].some(
      (f) => f === document.activeElement || f.value !== f.defaultValue,
    );

  async function showRun(runId, quietly = false) {
    const detail = $('detail');
    $('overview').hidden = true;
    detail.hidden = false;
    if (!quietly) detail.replaceChildren(h('p', { className: 'empty' }, 'Loading…'));
    liveRun = undefined;
    let data;
    try {
      data = await api(`runs/${encodeURIComponent(runId)}`);
    } catch (err) {
      detail.replaceChildren(
        h('p', {}, h('a', { href: '#' }, '← All runs')),
        h('p', { className: 'notice error' }, err.status === 404 ? `No run ${runId}.` : err.message),
      );
      return;
    }
    if (location.hash !== `#/runs/${encodeURIComponent(runId)}`) return; // navigated away meanwhile
    const { run } = data;
    const reload = () => showRun(runId, true);
    if (!TERMINAL.includes(run.state)) liveRun = runId;

    const actions = [h('button', { type: 'button', onclick: reload }, 'Refresh')];
    if (!readOnly && CANCELLABLE.has(run.state)) {
      actions.push(
        h(
          'button',
          {
            type: 'button',
            className: 'action danger',
            onclick: (e) => {
              if (!confirm(`Cancel run ${run.runId}?`)) return;
              perform(
                e.currentTarget,
                async () =>
                  (await act(`runs/${encodeURIComponent(run.runId)}/cancel`)).cancelled
                    ? 'Cancel requested.'
                    : 'The run had already ended.',
                reload,
              );
            },
          },
          'Cancel run',
        ),
      );
    }
    const signalForm =
      !readOnly && !TERMINAL.includes(run.state)
        ? h(
            'form',
            {
              className: 'signal',
              onsubmit: (e) => {
                e.preventDefault();
                const form = e.currentTarget;
                let payload;
                try {
                  payload = form.data.value.trim() === '' ? null : JSON.parse(form.data.value);
                } catch {
                  notice('The signal data is not JSON.', true);
                  return;
                }
                perform(
                  form.querySelector('button'),
                  async () =>
                    (
                      await act(`runs/${encodeURIComponent(run.runId)}/signal`, {
                        name: form.signalName.value.trim(),
                        data: payload,
                      })
                    ).sent
                      ? 'Signal sent.'
                      : 'The run has ended; nothing was sent.',
                  reload,
                );
              },
            },
            h('h3', {}, 'Send a signal'),
            h(
              'label',
              {},
              'Name ',
              h('input', {
                name: 'signalName',
                required: true,
                defaultValue: run.waitingFor?.signal ?? '',
                autocomplete: 'off',
                spellcheck: false,
              }),
            ),
            h(
              'label',
              {},
              'Data (JSON) ',
              h('textarea', { name: 'data', rows: 3, spellcheck: false, placeholder: 'null' }),
            ),
            h('button', { type: 'submit', className: 'action' }, 'Send signal'),
          )
        : null;

    fill(
      detail,
      h('p', {}, h('a', { href: '#' }, '← All runs')),
      h('h2', {}, 'Run ', h('span', { className: 'id' }, run.runId), ' ', stateBadge(run.state)),
      h('div', { className: 'actions' }, actions),
      h(
        'dl',
        { className: 'fields' },
        field('workflow', run.workflow),
        field('state', run.state),
        field('current step', String(run.currentStep)),
        field('attempts', String(run.attempts)),
        run.waitingFor ? field('waiting for', waitingText(run.waitingFor)) : [],
        field('submitted', when(run.submittedAt)),
        field('updated', when(run.updatedAt)),
        run.finishedAt ? field('finished', when(run.finishedAt)) : [],
        run.runAt ? field('due', when(run.runAt)) : [],
        run.parentRunId ? field('parent', runLink(run.parentRunId)) : [],
        run.concurrencyKey !== undefined ? field('concurrency key', run.concurrencyKey) : [],
        run.scheduleId ? field('schedule', run.scheduleId) : [],
      ),
      signalForm,
      run.error !== undefined
        ? block('Error', h('pre', { className: 'error-text', id: 'run-error' }, run.error))
        : null,
      'result' in run ? block('Result', h('pre', { id: 'run-result' }, json(run.result))) : null,
      data.current
        ? block(
            run.currentStep === 0 ? 'Input (step 0 payload)' : `Payload of step ${run.currentStep}`,
            h('pre', { id: 'run-payload' }, json(data.current.payload)),
          )
        : null,
      block(
        'Headers',
        Object.keys(run.headers).length
          ? table(
              ['name', 'value'],
              Object.entries(run.headers).map(([k, v]) => h('tr', {}, h('td', {}, k), h('td', {}, v))),
            )
          : h('p', { className: 'empty' }, 'None.'),
      ),
      block(
        'History',
        data.history.length
          ? h(
              'div',
              { id: 'history' },
              table(
                ['step', 'attempt', 'outcome', 'started', 'took', 'worker', 'error'],
                data.history.map((r) =>
                  h(
                    'tr',
                    {},
                    h('td', { className: 'num' }, String(r.stepNumber)),
                    h('td', { className: 'num' }, String(r.attempt)),
                    h('td', {}, r.outcome),
                    h('td', {}, when(r.startedAt)),
                    h('td', { className: 'num' }, `${Math.max(0, new Date(r.finishedAt) - new Date(r.startedAt))} ms`),
                    h('td', { className: 'opt' }, r.worker),
                    h('td', {}, r.error ? h('pre', { className: 'error-text' }, r.error) : ''),
                  ),
                ),
              ),
            )
          : h('p', { className: 'empty' }, 'No deliveries recorded yet.'),
      ),
      data.children.length
        ? block(
            'Children',
            h(
              'div',
              { id: 'children' },
              table(
                ['run', 'workflow', 'state', 'step', 'updated'],
                data.children.map((c) =>
                  h(
                    'tr',
                    {},
                    h('td', {}, runLink(c.runId)),
                    h('td', {}, c.workflow),
                    h('td', {}, stateBadge(c.state)),
                    h('td', { className: 'num' }, String(c.currentStep)),
                    h('td', {}, when(c.updatedAt)),
                  ),
                ),
              ),
            ),
            data.moreChildren ? h('p', { className: 'empty' }, 'Only the newest children are shown.') : null,
          )
        : null,
      data.deadSteps.length
        ? block(
            'Dead letters',
            table(
              ['step', 'run', 'workflow', 'attempts', 'error', 'dead since', ''],
              data.deadSteps.map((d) => deadRow(d, reload)),
            ),
          )
        : null,
    );
  }

  function showError(err) {
    notice(err.message, true);
  }

  function route() {
    const m = /^#\/runs\/(.+)$/.exec(location.hash);
    if (m) {
      showRun(decodeURIComponent(m[1]));
    } else {
      liveRun = undefined;
      $('detail').hidden = true;
      $('detail').replaceChildren();
      $('overview').hidden = false;
    }
  }

  // ---- wiring

  $('read-only').hidden = !readOnly;
  const stateSelect = $('filter-state');
  for (const s of STATES) stateSelect.append(h('option', { value: s }, s));
  $('filters').addEventListener('change', () => applyFilter($('filter-workflow').value, stateSelect.value));
  $('filters').addEventListener('submit', (e) => e.preventDefault());
  $('filter-clear').addEventListener('click', () => applyFilter('', ''));
  $('more').addEventListener('click', () => loadRuns(true).catch(showError));
  $('search').addEventListener('submit', (e) => {
    e.preventDefault();
    const id = $('search-id').value.trim();
    if (id) location.hash = `#/runs/${encodeURIComponent(id)}`;
  });
  window.addEventListener('hashchange', route);
  window.addEventListener('resize', drawChart);

  route();
  refreshOverview().catch(showError);
  // One timer, rescheduled after each refresh: a slow server is never asked twice at once.
  const tick = () =>
    Promise.all([refreshCounts(), liveRun && !$('detail').hidden && !busyInDetail() ? showRun(liveRun, true) : null])
      .catch(showError)
      .finally(() => setTimeout(tick, refreshMs));
  setTimeout(tick, refreshMs);
})();

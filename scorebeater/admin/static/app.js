// scorebeater's page: the season's leaderboard, a player's chart, the model's realized quality.
//
// Plain JS, no library, no build step. Every value from the API reaches the page through
// textContent or setAttribute (never innerHTML), so a name such as
// `<img src=x onerror=alert(1)>` shows as text. Charts are SVG drawn here.
"use strict";

(function () {
  const QUERY = new URLSearchParams(window.location.search);
  const PAGE = Math.max(1, Math.min(1000, parseInt(QUERY.get("page_size") || "50", 10) || 50)); // rows per "load more"
  const MAX_LIMIT = 1000; // the API's bound on ?limit
  // How often the page asks whether new games were processed; `?poll_ms=` (at least 200) for tests.
  const POLL_MS = Math.max(200, parseInt(QUERY.get("poll_ms") || "4000", 10) || 4000);
  const SVG_NS = "http://www.w3.org/2000/svg";

  const state = {
    season: null,
    order: "-probability",
    team: "",
    name: "",
    items: [],
    next: null,
    selected: null,
    fingerprint: null,
    boardToken: 0,
    teams: new Set(),
    champion: null,
  };

  const $ = (id) => document.getElementById(id);

  // --- DOM helpers: text only ------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined && value !== false) {
        node.setAttribute(key, String(value));
      }
    }
  }

  function append(node, children) {
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  // --- formatting -----------------------------------------------------------------------

  const pct = (p) => (p === null || p === undefined ? "–" : (100 * p).toFixed(1) + "%");
  const num = (x, digits) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));

  function changeText(change) {
    if (change === null || change === undefined) return { text: "–", cls: "muted" };
    const pts = 100 * change;
    if (Math.abs(pts) < 0.05) return { text: "±0.0", cls: "muted" };
    return { text: (pts > 0 ? "+" : "−") + Math.abs(pts).toFixed(1), cls: pts > 0 ? "up" : "down" };
  }

  function outcomeBadge(outcome) {
    if (!outcome) return el("span", { class: "badge" }, "open");
    if (outcome.beat) {
      return el("span", { class: "badge beat" }, outcome.resolution === "early" ? "beat (early)" : "beat");
    }
    return el("span", { class: "badge missed" }, "missed");
  }

  function bar(fraction, cls, label) {
    const fill = el("span", { class: "fill " + (cls || "") });
    fill.style.width = (100 * Math.max(0, Math.min(1, fraction))).toFixed(1) + "%";
    return el("span", { class: "bar" }, el("span", { class: "track" }, fill), el("span", { class: "value" }, label));
  }

  // --- the API --------------------------------------------------------------------------

  async function api(path, params) {
    const url = new URL(path, window.location.origin);
    for (const [key, value] of Object.entries(params || {})) {
      if (value !== null && value !== undefined && value !== "") url.searchParams.set(key, String(value));
    }
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      const message = body && body.error ? body.error.message : response.status + " " + response.statusText;
      const error = new Error(message);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function showError(error) {
    const box = $("error");
    if (!error) {
      box.hidden = true;
      box.textContent = "";
      return;
    }
    box.textContent = String(error.message || error);
    box.hidden = false;
  }

  // --- the URL: #season=S&player=ID ------------------------------------------------------

  function readHash() {
    const params = new URLSearchParams(window.location.hash.slice(1));
    const season = parseInt(params.get("season") || "", 10);
    const player = parseInt(params.get("player") || "", 10);
    return { season: Number.isFinite(season) ? season : null, player: Number.isFinite(player) ? player : null };
  }

  function writeHash() {
    const params = new URLSearchParams();
    if (state.season !== null) params.set("season", String(state.season));
    if (state.selected !== null) params.set("player", String(state.selected));
    window.history.replaceState(null, "", "#" + params.toString());
  }

  // --- the leaderboard ------------------------------------------------------------------

  function sortButtons() {
    for (const button of document.querySelectorAll("button.sort")) {
      const base = button.dataset.order.replace(/^-/, "");
      const current = state.order.replace(/^-/, "");
      button.classList.remove("asc", "desc");
      const th = button.closest("th");
      if (base === current) {
        const descending = state.order.startsWith("-");
        button.classList.add(descending ? "desc" : "asc");
        th.setAttribute("aria-sort", descending ? "descending" : "ascending");
      } else {
        th.removeAttribute("aria-sort");
      }
    }
  }

  function row(item, rank) {
    const change = changeText(item.change);
    const mark = item.prev_ftm;
    const ftmShare = mark > 0 ? item.ftm / mark : 1;
    const done = item.outcome && item.outcome.beat;
    const name = el("button", { type: "button", class: "link", title: item.player }, item.player);
    const tr = el(
      "tr",
      { "data-player-id": item.player_id, class: item.player_id === state.selected ? "selected" : null },
      el("td", { class: "num muted" }, rank),
      el("td", { class: "player" }, name),
      el("td", {}, item.team),
      el("td", { class: "probability" }, bar(item.probability, "", pct(item.probability))),
      el("td", { class: "num change " + change.cls, title: "points since his previous game" }, change.text),
      el("td", { class: "ftm" }, bar(ftmShare, done ? "done" : "ftm", item.ftm + " / " + mark)),
      el("td", { class: "num" }, item.team_games + "/" + item.season_games),
      el("td", {}, outcomeBadge(item.outcome)),
    );
    tr.addEventListener("click", () => selectPlayer(item.player_id));
    return tr;
  }

  function renderBoard() {
    const body = $("rows");
    clear(body);
    state.items.forEach((item, i) => body.appendChild(row(item, i + 1)));
    $("empty").hidden = state.items.length > 0;
    $("more").hidden = !state.next;
    $("count").textContent = state.items.length ? state.items.length + (state.next ? "+ players" : " players") : "";
    sortButtons();
  }

  function boardParams(limit, cursor) {
    return {
      season: state.season,
      order: state.order,
      team: state.team,
      player: state.name,
      limit: limit,
      cursor: cursor,
    };
  }

  // Reload from the first row, keeping as many rows as are shown (a poll must not shrink the list).
  async function loadBoard() {
    if (state.season === null) return;
    const token = ++state.boardToken;
    const limit = Math.min(MAX_LIMIT, Math.max(PAGE, state.items.length));
    const page = await api("/v1/predictions", boardParams(limit, null));
    if (token !== state.boardToken) return; // a newer request owns the table
    state.items = page.items;
    state.next = page.next_cursor;
    noteTeams(page.items);
    renderBoard();
  }

  async function loadMore() {
    if (!state.next) return;
    const token = ++state.boardToken;
    const page = await api("/v1/predictions", boardParams(PAGE, state.next));
    if (token !== state.boardToken) return;
    state.items = state.items.concat(page.items);
    state.next = page.next_cursor;
    noteTeams(page.items);
    renderBoard();
  }

  function noteTeams(items) {
    let added = false;
    for (const item of items) {
      if (item.team && !state.teams.has(item.team)) {
        state.teams.add(item.team);
        added = true;
      }
    }
    if (!added) return;
    const select = $("team");
    const current = select.value;
    clear(select);
    select.appendChild(el("option", { value: "" }, "All teams"));
    for (const team of Array.from(state.teams).sort()) select.appendChild(el("option", { value: team }, team));
    select.value = current;
  }

  // The team list: the teams of the first page in name order (every team when the season has
  // at most MAX_LIMIT players), plus any seen in the rows loaded since.
  async function loadTeams() {
    if (state.season === null) return;
    const page = await api("/v1/predictions", { season: state.season, order: "player", limit: MAX_LIMIT });
    noteTeams(page.items);
  }

  // --- the player view ------------------------------------------------------------------

  function fact(key, value) {
    return el("div", { class: "fact" }, el("span", { class: "k" }, key), el("span", { class: "v" }, value));
  }

  async function selectPlayer(playerId) {
    state.selected = playerId;
    writeHash();
    for (const tr of $("rows").children) {
      tr.classList.toggle("selected", Number(tr.dataset.playerId) === playerId);
    }
    await loadPlayer();
  }

  async function loadPlayer() {
    if (state.selected === null) {
      $("player").hidden = true;
      return;
    }
    const wanted = state.selected;
    let body;
    try {
      body = await api("/v1/players/" + wanted, { season: state.season });
    } catch (error) {
      if (error.status === 404 && state.selected === wanted) {
        state.selected = null;
        writeHash();
        $("player").hidden = true;
        return;
      }
      throw error;
    }
    if (state.selected !== wanted) return;
    renderPlayer(body);
  }

  function renderPlayer(body) {
    $("player").hidden = false;
    $("player-title").textContent = body.player;
    const others = body.names.filter((n) => n !== body.player);
    const meta = [body.teams.join(" → "), "season " + body.season];
    if (others.length) meta.push("also " + others.join(", "));
    $("player-meta").textContent = meta.join(" · ");
    const last = body.history.length ? body.history[body.history.length - 1] : null;
    const facts = $("player-facts");
    clear(facts);
    if (last) {
      facts.appendChild(fact("P(beat)", pct(last.probability)));
      facts.appendChild(fact("FTM so far", String(last.ftm)));
      facts.appendChild(fact("Mark (last season)", String(last.prev_ftm)));
      facts.appendChild(fact("Games", last.team_games + " of " + last.season_games));
    }
    facts.appendChild(el("div", { class: "fact" }, el("span", { class: "k" }, "Outcome"), outcomeBadge(body.outcome)));
    const chart = $("player-chart");
    clear(chart);
    if (body.history.length) chart.appendChild(playerChart(body.history, body.outcome));
  }

  // Two panels over the season's games: the probability, then the running FTM against the mark.
  function playerChart(history, outcome) {
    const W = 430, left = 40, right = 10, top = 22, panel = 110, gap = 44, bottom = 30;
    const H = top + panel + gap + panel + bottom;
    const seasonGames = Math.max(1, ...history.map((h) => h.season_games || 0));
    const x = (g) => left + ((W - left - right) * g) / seasonGames;
    const mark = history[history.length - 1].prev_ftm;
    const ftmMax = Math.max(mark, ...history.map((h) => h.ftm), 1) * 1.1;
    const yp = (p) => top + panel * (1 - p);
    const top2 = top + panel + gap;
    const yf = (f) => top2 + panel * (1 - f / ftmMax);
    const root = svg("svg", {
      viewBox: "0 0 " + W + " " + H,
      role: "img",
      "aria-label": "Probability and running free throws made over the season",
      class: "player-svg",
    });

    // probability panel
    root.appendChild(svg("text", { x: left, y: top - 8, class: "title" }, "Probability he beats his mark"));
    for (const p of [0, 0.25, 0.5, 0.75, 1]) {
      root.appendChild(svg("line", { x1: left, x2: W - right, y1: yp(p), y2: yp(p), class: "grid" }));
      root.appendChild(svg("text", { x: left - 6, y: yp(p) + 4, "text-anchor": "end" }, Math.round(100 * p) + "%"));
    }
    const probPoints = history.map((h) => x(h.team_games).toFixed(1) + "," + yp(h.probability).toFixed(1));
    root.appendChild(svg("polyline", { points: probPoints.join(" "), class: "prob" }));
    for (const h of history) {
      root.appendChild(
        svg(
          "circle",
          { cx: x(h.team_games), cy: yp(h.probability), r: 2.5, class: "prob-dot" },
          svg("title", {}, "game " + h.team_games + ": " + pct(h.probability) + " (model v" + h.model_version + ")"),
        ),
      );
    }

    // running FTM panel
    root.appendChild(svg("text", { x: left, y: top2 - 8, class: "title" }, "Free throws made, running, vs last season"));
    const step = niceStep(ftmMax / 4);
    for (let f = 0; f <= ftmMax; f += step) {
      root.appendChild(svg("line", { x1: left, x2: W - right, y1: yf(f), y2: yf(f), class: "grid" }));
      root.appendChild(svg("text", { x: left - 6, y: yf(f) + 4, "text-anchor": "end" }, f));
    }
    root.appendChild(svg("line", { x1: left, x2: W - right, y1: yf(mark), y2: yf(mark), class: "mark" }));
    root.appendChild(
      svg("text", { x: W - right, y: yf(mark) - 5, "text-anchor": "end", class: "mark-label" }, "mark: " + mark),
    );
    const ftmPoints = [x(0).toFixed(1) + "," + yf(0).toFixed(1)].concat(
      history.map((h) => x(h.team_games).toFixed(1) + "," + yf(h.ftm).toFixed(1)),
    );
    root.appendChild(svg("polyline", { points: ftmPoints.join(" "), class: "ftm" }));
    for (const h of history) {
      root.appendChild(
        svg(
          "circle",
          { cx: x(h.team_games), cy: yf(h.ftm), r: 2.5, class: "ftm-dot" },
          svg("title", {}, "game " + h.team_games + ": " + h.ftm + " FTM"),
        ),
      );
    }
    const passed = history.find((h) => h.ftm > h.prev_ftm);
    if (passed) {
      root.appendChild(svg("line", { x1: x(passed.team_games), x2: x(passed.team_games), y1: top, y2: top2 + panel, class: "beat-line" }));
    }

    // the shared x axis
    root.appendChild(svg("line", { x1: left, x2: W - right, y1: top2 + panel, y2: top2 + panel, class: "axis" }));
    for (const g of ticks(seasonGames)) {
      root.appendChild(svg("text", { x: x(g), y: top2 + panel + 16, "text-anchor": "middle" }, g));
    }
    root.appendChild(svg("text", { x: (left + W - right) / 2, y: H - 2, "text-anchor": "middle" }, "team games played"));
    if (outcome) {
      root.appendChild(
        svg("text", { x: W - right, y: top - 8, "text-anchor": "end", class: "title" }, outcome.beat ? "beat his mark" : "missed his mark"),
      );
    }
    return root;
  }

  function niceStep(raw) {
    const power = Math.pow(10, Math.floor(Math.log10(Math.max(raw, 1))));
    for (const m of [1, 2, 5, 10]) if (m * power >= raw) return m * power;
    return 10 * power;
  }

  function ticks(max) {
    const step = niceStep(max / 6);
    const out = [];
    for (let g = 0; g <= max; g += step) out.push(g);
    return out;
  }

  // --- the model panel ------------------------------------------------------------------

  async function loadModel() {
    const [models, quality] = await Promise.all([api("/v1/models"), api("/v1/quality")]);
    const summary = $("model-summary");
    clear(summary);
    const champion = models.roles ? models.roles.champion : null;
    const challenger = models.roles ? models.roles.challenger : null;
    state.champion = champion;
    summary.appendChild(fact("Model", models.model));
    summary.appendChild(fact("Champion", champion === null ? "–" : "v" + champion));
    summary.appendChild(fact("Challenger", challenger === null ? "none" : "v" + challenger));
    const available = models.versions
      .filter((v) => v.state === "AVAILABLE")
      .map((v) => v.version)
      .sort((a, b) => a - b)
      .map((v) => "v" + v);
    summary.appendChild(fact("Served", available.length ? available.join(", ") : "–"));
    renderQuality(quality, champion);
  }

  function renderQuality(quality, champion) {
    const versions = quality.versions.filter((v) => v.buckets.length);
    const chosen = versions.find((v) => v.version === champion) || versions[versions.length - 1];
    $("quality-empty").hidden = Boolean(chosen);
    $("quality").hidden = !chosen;
    const body = $("quality-rows");
    clear(body);
    const chart = $("reliability");
    clear(chart);
    $("quality-version").textContent = chosen ? "· model v" + chosen.version : "";
    if (!chosen) return;
    for (const b of chosen.buckets) {
      body.appendChild(
        el(
          "tr",
          {},
          el("td", {}, b.bucket === "all" ? "whole season" : b.bucket + "%"),
          el("td", { class: "num" }, num(b.roc_auc, 3)),
          el("td", { class: "num" }, num(b.brier, 3)),
          el("td", { class: "num" }, num(b.ece, 3)),
          el("td", { class: "num" }, b.rows),
        ),
      );
    }
    chart.appendChild(reliabilityChart(chosen.reliability));
  }

  function reliabilityChart(bins) {
    const S = 260, left = 40, right = 10, top = 22, bottom = 34;
    const side = S - left - right;
    const x = (p) => left + side * p;
    const y = (p) => top + side * (1 - p);
    const root = svg("svg", {
      viewBox: "0 0 " + S + " " + (top + side + bottom),
      role: "img",
      "aria-label": "Reliability diagram: observed share against predicted probability",
      class: "reliability-svg",
    });
    root.appendChild(svg("text", { x: left, y: top - 8, class: "title" }, "Reliability"));
    for (const p of [0, 0.5, 1]) {
      root.appendChild(svg("line", { x1: x(0), x2: x(1), y1: y(p), y2: y(p), class: "grid" }));
      root.appendChild(svg("text", { x: left - 6, y: y(p) + 4, "text-anchor": "end" }, Math.round(100 * p) + "%"));
      root.appendChild(svg("text", { x: x(p), y: y(0) + 15, "text-anchor": "middle" }, Math.round(100 * p) + "%"));
    }
    root.appendChild(svg("line", { x1: x(0), y1: y(0), x2: x(1), y2: y(1), class: "diag" }));
    const filled = bins.filter((b) => b.rows > 0 && b.predicted !== null && b.observed !== null);
    const most = Math.max(1, ...filled.map((b) => b.rows));
    root.appendChild(svg("polyline", { points: filled.map((b) => x(b.predicted) + "," + y(b.observed)).join(" "), class: "rel" }));
    for (const b of filled) {
      root.appendChild(
        svg(
          "circle",
          { cx: x(b.predicted), cy: y(b.observed), r: 2.5 + 5 * Math.sqrt(b.rows / most), class: "rel-dot" },
          svg("title", {}, b.bin + ": predicted " + pct(b.predicted) + ", observed " + pct(b.observed) + " (" + b.rows + " rows)"),
        ),
      );
    }
    root.appendChild(svg("text", { x: (x(0) + x(1)) / 2, y: y(0) + 30, "text-anchor": "middle" }, "predicted"));
    return root;
  }

  // --- seasons, polling -----------------------------------------------------------------

  function setSeasons(seasons) {
    const select = $("season");
    const shown = Array.from(select.options).map((o) => Number(o.value));
    if (shown.length === seasons.length && shown.every((s, i) => s === seasons[i])) return;
    clear(select);
    for (const s of seasons) select.appendChild(el("option", { value: s }, s));
    if (state.season !== null) select.value = String(state.season);
  }

  function fingerprint(status) {
    const runs = (name) => (status.stages[name] ? status.stages[name].runs : 0);
    return ["features", "predictions", "refeed", "validation", "promotion"].map(runs).join("/");
  }

  function liveText(status) {
    const features = status.stages.features;
    const season = features && features.watermark ? features.watermark[String(state.season)] : null;
    const parts = [];
    if (season) parts.push(season.games_processed + " games processed");
    parts.push("updated " + new Date().toLocaleTimeString());
    return parts.join(" · ");
  }

  async function refresh(force) {
    const [status, quality] = await Promise.all([api("/v1/status"), api("/v1/quality")]);
    setSeasons(quality.seasons);
    if (state.season === null && quality.seasons.length) {
      state.season = quality.seasons[quality.seasons.length - 1];
      $("season").value = String(state.season);
      writeHash();
      force = true;
    }
    const live = $("live");
    live.classList.add("on");
    if (state.season === null) {
      live.textContent = "waiting for a season to follow";
      return;
    }
    live.textContent = liveText(status);
    const print = fingerprint(status);
    if (!force && print === state.fingerprint) return;
    state.fingerprint = print;
    await Promise.all([loadBoard(), loadTeams(), loadPlayer(), loadModel()]);
  }

  function run(promise) {
    promise.then(() => showError(null), showError);
  }

  function schedule() {
    window.setTimeout(() => {
      if (document.hidden) {
        schedule();
        return;
      }
      refresh(false).then(
        () => {
          showError(null);
          schedule();
        },
        (error) => {
          $("live").classList.remove("on");
          $("live").textContent = "not reachable, retrying";
          showError(error);
          schedule();
        },
      );
    }, POLL_MS);
  }

  function wire() {
    $("season").addEventListener("change", (event) => {
      state.season = Number(event.target.value);
      state.items = [];
      state.next = null;
      state.teams = new Set();
      state.selected = null;
      writeHash();
      $("player").hidden = true;
      run(refresh(true));
    });
    $("team").addEventListener("change", (event) => {
      state.team = event.target.value;
      state.items = [];
      run(loadBoard());
    });
    let typing = null;
    $("name").addEventListener("input", (event) => {
      window.clearTimeout(typing);
      typing = window.setTimeout(() => {
        state.name = event.target.value.trim();
        state.items = [];
        run(loadBoard());
      }, 250);
    });
    $("filters").addEventListener("submit", (event) => event.preventDefault());
    for (const button of document.querySelectorAll("button.sort")) {
      button.addEventListener("click", () => {
        const wanted = button.dataset.order;
        const base = wanted.replace(/^-/, "");
        if (state.order.replace(/^-/, "") === base) {
          state.order = state.order.startsWith("-") ? base : "-" + base;
        } else {
          state.order = wanted;
        }
        state.items = [];
        sortButtons();
        run(loadBoard());
      });
    }
    $("more").addEventListener("click", () => run(loadMore()));
    $("close-player").addEventListener("click", () => {
      state.selected = null;
      writeHash();
      $("player").hidden = true;
      for (const tr of $("rows").children) tr.classList.remove("selected");
    });
  }

  function start() {
    const wanted = readHash();
    state.season = wanted.season;
    state.selected = wanted.player;
    if (state.season !== null) {
      const select = $("season");
      select.appendChild(el("option", { value: state.season }, state.season));
    }
    wire();
    sortButtons();
    refresh(true).then(
      () => showError(null),
      (error) => showError(error),
    ).finally(schedule);
  }

  document.addEventListener("DOMContentLoaded", start);
})();

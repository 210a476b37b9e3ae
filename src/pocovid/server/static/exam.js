/* pocovid web page, exam mode: a patient's recordings (BLUE points) uploaded at once, each analysed,
   then the lung diagram coloured by zone severity, the zone table, the LUS score and the exam's
   verdict (GET api/exams/{id}: the ExamResult of `pocovid exam`). Plain JS; the helpers, words and
   colours come from app.js (window.pocovid) and GET api/display. */
"use strict";

(function () {
  const P = window.pocovid;
  if (!P) return;
  const { $, el, getJSON, setStatus, pct, className, classColor, findingName, severityText, plural, fmtDate } = P;
  const API = P.API;
  const SVG = document.querySelector("svg").namespaceURI;  // the SVG namespace, from the page's own inline icon
  const POINT_WORDS = { 1: "upper anterior", 2: "lower anterior", 3: "posterolateral" };
  const HISTORY_PAGE = 10;
  const S = {
    exam: null,         // the exam shown (its last status)
    names: {},          // recording id -> the file's name, as picked in this page (never sent back or stored)
    selected: null,     // recording id whose zone is being picked on the diagram
    timer: null,
    historyOffset: 0,
  };

  // ------------------------------------------------------------------------------ helpers
  function zones() {  // the protocol's points, in the report's order (GET api/display: lung_diagram)
    const d = P.display.lung_diagram;
    return d ? Object.keys(d.zones) : ["R1", "R2", "R3", "L1", "L2", "L3"];
  }
  function zoneWords(z) {
    return (z[0] === "R" ? "right " : "left ") + (POINT_WORDS[z[1]] || "");
  }
  function clipName(c) { return S.names[c.id] || c.file; }
  function svg(tag, attrs, children) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v != null) e.setAttribute(k, v);
    for (const c of [].concat(children || [])) if (c != null) e.append(c);
    return e;
  }
  function sentence(x) { return x ? x.charAt(0).toUpperCase() + x.slice(1) + (/[.!?]$/.test(x) ? "" : ".") : ""; }
  function severityColour(level) { return (P.display.severity_colours || [])[level] || P.display.withheld_colour; }
  function severityInk(level) { return (P.display.severity_ink || [])[level] || "#222222"; }
  function done(e) { return e && e.status === "done" && e.result; }
  function finished(s) { return s === "done" || s === "failed"; }
  function showProgress(label, fraction) {
    $("exam-progress-box").hidden = false;
    $("exam-progress-label").textContent = label;
    const v = Math.round(100 * Math.max(0, Math.min(1, fraction || 0)));
    $("exam-progress").value = v;
    $("exam-progress-pct").textContent = v + " %";
  }

  // ------------------------------------------------------------------------------ create, upload, follow
  async function createExam() {
    const status = $("exam-status"), input = $("exam-patient");
    const patient = input.value.trim();
    input.removeAttribute("aria-invalid");
    if (patient && !input.checkValidity()) {
      input.setAttribute("aria-invalid", "true"); input.focus();
      setStatus(status, "The patient reference takes letters, digits, _ . - and spaces only (never a name).", "error");
      return null;
    }
    let e;
    try {
      e = await getJSON(API + "/exams", { method: "POST", body: JSON.stringify(patient ? { patient } : {}),
        headers: { "Content-Type": "application/json", Accept: "application/json", [P.CSRF_HEADER]: P.CSRF_VALUE } });
    } catch (err) {
      setStatus(status, "The exam could not be started: " + err.message, "error");
      return null;
    }
    S.names = {};
    history.replaceState(null, "", "#exam=" + e.id);
    setStatus(status, "Exam started. Add its recordings.", "ok");
    await follow(e.id, true);
    loadExamHistory();
    return e;
  }

  async function addFiles(files) {
    const status = $("exam-status");
    files = Array.from(files || []);
    if (!files.length) return;
    const big = files.filter((f) => f.size > P.state.maxBytes);
    const ok = files.filter((f) => f.size > 0 && f.size <= P.state.maxBytes);
    if (!ok.length) { setStatus(status, "No recording to add (empty, or larger than the limit).", "error"); return; }
    if (!S.exam && !(await createExam())) return;
    const fd = new FormData();
    // the name is sent for its zone (patient_7_L1.mp4, scan_R2.mp4): the server reads it and keeps nothing of it
    ok.forEach((f) => fd.append("file", f, f.name));
    setStatus(status, "Uploading " + plural(ok.length, "recording") + "…");
    showProgress("Uploading", 0);
    let r;
    try {
      r = await P.uploadWithProgress(API + "/exams/" + S.exam.id + "/recordings", fd, (f) => showProgress("Uploading", f));
    } catch (err) {
      $("exam-progress-box").hidden = true;
      setStatus(status, "Upload refused: " + err.message, "error");
      return;
    }
    $("exam-progress-box").hidden = true;
    r.added.forEach((a, i) => { S.names[a.id] = r.names[i] || a.file; });
    const left = r.refused.map((x) => x.name + ": " + x.reason).concat(big.map((f) => f.name + ": larger than the limit"));
    setStatus(status, plural(r.added.length, "recording") + " added" + (left.length ? "; not added: " + left.join("; ") : "") +
      ". Analysing…", left.length ? "error" : null);
    follow(S.exam.id);
  }

  async function follow(id, once) {
    clearTimeout(S.timer);
    let delay = 600;
    const tick = async () => {
      let e;
      try { e = await getJSON(API + "/exams/" + id); }
      catch (err) {
        if (err.status === 404) { setStatus($("exam-status"), "This exam no longer exists.", "error"); closeExam(); return; }
        S.timer = setTimeout(tick, 2000);
        return;
      }
      const first = !S.exam || S.exam.id !== e.id;
      const wasDone = done(S.exam) && !first;
      show(e);
      if (once && e.status === "open") return;
      if (e.status === "done" || e.status === "failed") {
        if (!wasDone) {
          setStatus($("exam-status"), e.status === "done" ? "Exam concluded." : "The exam could not be concluded: " + e.error,
            e.status === "done" ? "ok" : "error");
          loadExamHistory();
        }
        return;
      }
      if (e.status === "running") {
        const c = e.counts;
        setStatus($("exam-status"), "Analysing: " + (c.done + c.failed) + " of " + e.n_recordings + " recordings finished…");
      }
      delay = Math.min(2000, delay * 1.25);
      S.timer = setTimeout(tick, delay);
    };
    await tick();
  }

  function closeExam() {
    clearTimeout(S.timer);
    S.exam = null; S.selected = null; S.names = {};
    $("exam-work").hidden = true;
    $("exam-head").hidden = true;
    $("exam-setup").hidden = false;
    history.replaceState(null, "", "#exam");
  }

  async function changeZone(id, zone) {
    const status = $("exam-status");
    S.selected = null;
    try {
      const e = await getJSON(API + "/exams/" + S.exam.id + "/recordings/" + id, { method: "PATCH",
        body: JSON.stringify({ zone: zone || null }),
        headers: { "Content-Type": "application/json", Accept: "application/json", [P.CSRF_HEADER]: P.CSRF_VALUE } });
      const c = e.recordings.find((x) => x.id === id);
      setStatus(status, (c ? clipName(c) : "The recording") + ": zone " + (zone || "none") + ".", "ok");
      show(e);
      if (!finished(e.status)) follow(e.id);
    } catch (err) {
      setStatus(status, "The zone was not changed: " + err.message, "error");
      show(S.exam);
    }
  }

  // ------------------------------------------------------------------------------ the exam
  function show(e) {
    S.exam = e;
    $("exam-setup").hidden = true;
    $("exam-head").hidden = false;
    $("exam-work").hidden = !e.n_recordings;
    $("exam-title").textContent = "Exam" + (e.patient ? " of patient " + e.patient : "");
    $("exam-meta").textContent = fmtDate(e.created) + " · " + e.protocol + " · " + plural(e.n_recordings, "recording");
    if (!e.n_recordings) return;
    showClips(e);
    showDiagram(e);
    showVerdict(e);
    showZones(e);
  }

  function showClips(e) {
    const body = $("exam-clips");
    const seen = new Set();
    for (const c of e.recordings) {
      seen.add(c.id);
      let row = body.querySelector('tr[data-id="' + c.id + '"]');
      if (!row) { row = buildClipRow(c); body.append(row); }
      fillClipRow(row, c);
    }
    body.querySelectorAll("tr").forEach((r) => { if (!seen.has(r.dataset.id)) r.remove(); });
  }

  function buildClipRow(c) {
    const sel = el("select", { class: "zone-select",  // its label, as the row's name: fillClipRow
      onchange: (ev) => changeZone(c.id, ev.target.value) },
    [el("option", { value: "", text: "— none" })].concat(zones().map((z) => el("option", { value: z, text: z + " · " + zoneWords(z) }))));
    const pick = el("button", { type: "button", class: "pick", "aria-pressed": "false", text: "Pick on diagram",
      onclick: () => {
        S.selected = S.selected === c.id ? null : c.id;
        showClips(S.exam); showDiagram(S.exam);
        if (S.selected) {
          setStatus($("exam-status"), "Now pick the zone of " + clipName(c) + " on the diagram (Escape: cancel).");
          const g = document.querySelector("#exam-diagram g.zone");
          if (g) g.focus();
        }
      } });
    return el("tr", { "data-id": c.id }, [
      el("td", { class: "name" }, [el("span", { class: "clip-name" })]),
      el("td", { class: "zone-cell" }, [sel, pick]),
      el("td", {}, [el("span", { class: "pill" })]),
      el("td", { class: "clip-result" }),
    ]);
  }

  function fillClipRow(row, c) {
    // set on every poll: the name picked in this page can arrive after the row was drawn (a poll that
    // lands while the upload answers)
    const name = clipName(c);
    row.querySelector(".clip-name").textContent = name;
    const sel = row.querySelector("select");
    sel.setAttribute("aria-label", "Zone of " + name);
    if (document.activeElement !== sel) sel.value = c.zone || "";
    row.classList.toggle("picking", S.selected === c.id);
    const pick = row.querySelector("button.pick");
    pick.setAttribute("aria-label", "Pick the zone of " + name + " on the diagram");
    pick.setAttribute("aria-pressed", String(S.selected === c.id));
    const pill = row.querySelector(".pill");
    pill.className = "pill " + c.status;
    pill.textContent = c.status === "running" ? "running " + Math.round(100 * (c.progress || 0)) + " %" : c.status;
    const res = row.querySelector(".clip-result");
    res.replaceChildren();
    res.classList.toggle("muted", !!c.withheld || c.status !== "done");
    if (c.status === "failed") res.append(el("span", { class: "error-text", text: "Could not be analysed: " + (c.error || "unknown reason") }));
    else if (c.status !== "done") res.append(c.stage || "waiting");
    else if (c.withheld) res.append("No diagnosis · " + P.OUTSIDE.toLowerCase() + " (left out of the exam)");
    else res.append(className(c.diagnosis) + " " + pct(c.probability) + (c.review_recommended ? " · review recommended" : ""));
    if (c.report) res.append(" ", el("a", { href: c.report, target: "_blank", rel: "noopener", text: "report",
      "aria-label": "Report of " + name }));
  }

  // the lung diagram, as exam.html draws it (GET api/display: lung_diagram), coloured by zone severity
  function showDiagram(e) {
    const D = P.display.lung_diagram;
    const box = $("exam-diagram");
    if (!D) { box.replaceChildren(el("p", { class: "muted", text: "The diagram is not available." })); return; }
    const W = D.width, H = D.height;
    const result = done(e) ? e.result : null;
    const zoneRows = result ? Object.fromEntries(result.zones.map((z) => [z.zone, z])) : {};
    const s = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "group", "aria-labelledby": "exam-diagram-h",
      class: S.selected ? "picking" : null }, [
      svg("title", {}, ["Lung zones, front view as you face the patient (the patient's right on the left)"]),
      svg("text", { x: 110, y: 20, "text-anchor": "middle", class: "side" }, ["patient's RIGHT"]),
      svg("text", { x: W - 110, y: 20, "text-anchor": "middle", class: "side" }, ["patient's LEFT"]),
      svg("path", { d: "M " + W / 2 + " 26 L " + W / 2 + " 62 M " + W / 2 + " 62 L " + (W / 2 - 26) + " 82 M " + W / 2 +
        " 62 L " + (W / 2 + 26) + " 82", class: "trachea" }),
      svg("path", { d: D.lung_path, class: "lung" }),
      svg("path", { d: D.lung_path, class: "lung", transform: "translate(" + W + ",0) scale(-1,1)" }),
    ]);
    for (const z of zones()) {
      const { x, y, r } = D.zones[z];
      const mine = e.recordings.filter((c) => c.zone === z);
      const row = zoneRows[z];
      let fill = "#ffffff", ink = "#333333", value = "–", dashed = !mine.length, tip;
      if (row && row.status === "scored" && row.severity != null) {
        fill = severityColour(row.severity); ink = severityInk(row.severity); value = String(row.severity); dashed = false;
        tip = z + ": " + severityText(row.severity, (P.display.severity_words || []).length || 4);
      } else if (row && row.status !== "missing") {
        fill = P.display.withheld_colour; ink = "#222222"; value = "?";
        tip = z + ": " + (row.status === "scored" ? "no severity (the model has no severity head)" : "no usable recording (withheld or failed)");
      } else if (mine.length && !result) {
        fill = "#e3f2f6"; value = String(mine.length);
        tip = z + ": " + plural(mine.length, "recording") + ", being analysed";
      } else tip = z + ": not scanned";
      const label = tip + " (" + zoneWords(z) + ")" + (S.selected ? ". Press to move the selected recording here" : "");
      const g = svg("g", { class: "zone" + (dashed ? " missing" : ""), "data-zone": z, tabindex: "0", role: "button",
        "aria-label": label }, [
        svg("title", {}, [tip]),
        svg("circle", { cx: x, cy: y, r, fill, "stroke-dasharray": dashed ? "4 3" : null }),
        svg("text", { x, y: y - 7, "text-anchor": "middle", class: "zone-name", fill: ink }, [z]),
        svg("text", { x, y: y + 15, "text-anchor": "middle", class: "zone-value", fill: ink }, [value]),
      ]);
      const act = () => pickZone(z);
      g.addEventListener("click", act);
      g.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); act(); }
        if (ev.key === "Escape") { S.selected = null; showClips(S.exam); showDiagram(S.exam); setStatus($("exam-status"), "Zone not changed."); }
      });
      s.append(g);
    }
    box.replaceChildren(s);
    const key = $("exam-key");
    key.replaceChildren(...(P.display.severity_colours || []).map((c, i) => el("li", {}, [
      el("i", { class: "swatch", style: "background:" + c }), i + " " + (P.display.severity_words[i] || "")])),
    el("li", {}, [el("i", { class: "swatch", style: "background:" + P.display.withheld_colour }), "? no usable recording"]),
    el("li", {}, [el("i", { class: "swatch dashed" }), "– not scanned"]));
  }

  function pickZone(z) {
    if (S.selected) { changeZone(S.selected, z); return; }
    const row = document.querySelector('#exam-zones tr[data-zone="' + z + '"]');
    if (row && !$("exam-zones-card").hidden) {
      row.scrollIntoView({ behavior: "smooth", block: "center" });
      row.classList.add("flash");
      setTimeout(() => row.classList.remove("flash"), 1200);
    } else {
      setStatus($("exam-status"), "To move a recording to " + z + ": press its “Pick on diagram” button first.");
    }
  }

  function showVerdict(e) {
    const card = $("exam-verdict"), diag = $("exam-diagnosis"), flags = $("exam-flags"), links = $("exam-links");
    const result = done(e) ? e.result : null;
    const v = result ? result.verdict : null;
    card.classList.toggle("pending", !result);
    card.classList.toggle("withheld", !!result && !v);
    card.classList.toggle("review", !!v && result.review_recommended);
    $("exam-badge").hidden = !(v && result.review_recommended);
    diag.style.color = "";
    flags.replaceChildren();
    links.replaceChildren();
    $("exam-probs").replaceChildren();
    $("exam-probs-h").hidden = !v;
    $("exam-lus").replaceChildren();
    if (!result) {
      $("exam-eyebrow").textContent = "Exam diagnosis";
      diag.textContent = e.status === "failed" ? "Not concluded" : "Waiting for the recordings";
      const c = e.counts;
      $("exam-diagnosis-p").textContent = e.status === "failed" ? (e.error || "") :
        (c.done + c.failed) + " of " + plural(e.n_recordings, "recording") + " analysed.";
      return;
    }
    const clips = result.clips;
    const withheld = clips.filter((c) => c.withheld);
    if (v) {
      $("exam-eyebrow").textContent = "Most likely (exam)";
      diag.textContent = className(v.label);
      if (!result.review_recommended) diag.style.color = classColor(v.label);
      const drivers = v.drivers.length ? "; driven by " + v.drivers.map((d) => d.zone + " (+" + Math.round(100 * d.effect) + " points)").join(", ") : "";
      $("exam-diagnosis-p").textContent = "Probability " + pct(v.probabilities[v.label]) + " from " +
        plural(v.n_clips, "recording") + drivers + ".";
      const order = Object.keys(v.probabilities).sort((a, b) => v.probabilities[b] - v.probabilities[a]);
      $("exam-probs").replaceChildren(...order.map((c) => {
        const p = v.probabilities[c], col = classColor(c), review = result.review_recommended;
        const fill = el("span", { style: "width:" + (100 * p).toFixed(1) + "%;" + (review
          ? "background:repeating-linear-gradient(135deg," + col + " 0 3px,transparent 3px 7px)" : "background:" + col) });
        return el("li", { class: c === v.label && !review ? "top" : null }, [el("span", { text: className(c) }),
          el("span", { class: "bar" + (review ? " outlined" : ""), role: "presentation", style: review ? "border-color:" + col : null }, [fill]),
          el("span", { class: "val", text: pct(p) })]);
      }));
    } else {
      // no verdict: nothing in a class colour, no probabilities; say why in plain words
      $("exam-eyebrow").textContent = "No diagnosis";
      const ok = clips.filter((c) => c.status === "ok");
      const allWithheld = ok.length && withheld.length === ok.length;
      diag.textContent = allWithheld ? P.OUTSIDE : "No exam diagnosis";
      $("exam-diagnosis-p").textContent = allWithheld
        ? "Every recording looks unlike the recordings the model was trained on (e.g. a linear probe, another organ, " +
          "or not lung ultrasound): the model's output says nothing about a diagnosis here."
        : sentence(result.no_verdict || "no recording could be analysed");
    }
    const lus = result.lus;
    const missing = [];
    if (lus.zones_missing.length) missing.push("not scanned: " + lus.zones_missing.join(", "));
    if (lus.zones_not_scored.length) missing.push("no usable recording: " + lus.zones_not_scored.join(", "));
    $("exam-lus").append(el("span", { class: "lus-label", text: "LUS score " }),
      el("strong", { class: "lus-score", text: (lus.score == null ? "—" : String(lus.score)) + " / " + lus.max_possible }),
      el("span", { class: "muted", text: lus.score == null ? " (" + (lus.zones_scored.length ? lus.rule : "no zone scored") + ")"
        : missing.length ? " (incomplete: " + missing.join("; ") + ")" : " (all " + lus.n_zones + " zones scored)" }));
    const reasons = result.review_reasons.filter((x) => !(!v && x === result.no_verdict) &&
      !(withheld.length && x.includes("outside the training data")));
    if (withheld.length) {
      flags.append(el("li", { class: "flag bad" }, [el("strong", { text: plural(withheld.length, "recording") + " " + P.OUTSIDE.toLowerCase() }),
        "Left out of the diagnosis, severity and score: " + withheld.map((c) => (c.zone || "no zone") + " (" + nameOf(c.file) + ")").join(", ") + "."]));
    }
    if (result.review_recommended && reasons.length) {
      flags.append(el("li", { class: "flag warn" }, [el("strong", { text: "Review recommended" }),
        el("ul", {}, reasons.map((x) => el("li", { text: sentence(x) })))]));
    } else if (!result.review_recommended) {
      flags.append(el("li", { class: "flag good" }, [el("strong", { text: "No review flag" }),
        "Every zone scored, no recording flagged; still decision support only."]));
    }
    if (e.links.report) links.append(el("a", { href: e.links.report, target: "_blank", rel: "noopener", class: "button", text: "Open the exam report" }));
    if (e.links.exam_json) links.append(el("a", { href: e.links.exam_json, download: "exam.json", class: "button", text: "exam.json" }));
  }

  function nameOf(file) {  // a stored name (<id>.<ext>) -> the name picked in this page, when known
    const id = String(file).split(".")[0];
    return S.names[id] || file;
  }

  function showZones(e) {
    const card = $("exam-zones-card"), body = $("exam-zones");
    const result = done(e) ? e.result : null;
    card.hidden = !result;
    body.replaceChildren();
    if (!result) return;
    const levels = (P.display.severity_words || []).length || 4;
    for (const z of result.zones) {
      let sev;
      if (z.status === "missing") sev = el("span", { class: "muted", text: "not scanned" });
      else if (z.severity == null) sev = [el("span", { class: "chip", style: "background:" + P.display.withheld_colour, text: "?" }), " ",
        el("span", { class: "muted", text: z.status === "scored" ? "no severity head" : "no usable recording" })];
      else sev = [el("span", { class: "chip", style: "background:" + severityColour(z.severity) + ";color:" + severityInk(z.severity),
        text: String(z.severity) }), " ", el("span", { text: (P.display.severity_words || [])[z.severity] || "",
        title: severityText(z.severity, levels) })];
      const f = z.findings ? Object.entries(z.findings).sort((a, b) => b[1] - a[1]) : [];
      const findings = f.length ? f.map(([n, p], i) => [i ? ", " : "", el(p >= 0.5 ? "strong" : "span", { class: p >= 0.5 ? null : "muted", text: findingName(n) + " " + pct(p) })]).flat()
        : el("span", { class: "muted", text: "—" });
      const byFile = Object.fromEntries(result.clips.map((c) => [c.file, c]));
      const recs = z.clips.map((file, i) => {
        const c = byFile[file] || {};
        const state = c.status === "failed" ? " (could not be analysed)" : c.withheld ? " (withheld: " + P.OUTSIDE.toLowerCase() + ")" : "";
        return [i ? ", " : "", nameOf(file) + state];
      }).flat();
      const url = z.key_frame && e.files[z.key_frame];
      const key = url ? el("a", { href: url, target: "_blank", rel: "noopener" }, [el("img", { src: url, class: "thumb",
        alt: "Key frame of " + z.zone + " with its heatmap" })]) : el("span", { class: "muted", text: "—" });
      body.append(el("tr", { "data-zone": z.zone, class: "zone-" + z.status }, [
        el("th", { scope: "row", class: "zone-name" }, [z.zone, el("span", { class: "muted small block", text: zoneWords(z.zone) })]),
        el("td", {}, sev), el("td", {}, findings), el("td", {}, recs.length ? recs : el("span", { class: "muted", text: "none" })),
        el("td", {}, [key])]));
    }
    if (result.unassigned.length) {
      body.append(el("tr", {}, [el("th", { scope: "row", text: "No zone" }), el("td", { colspan: 4, class: "muted",
        text: result.unassigned.map(nameOf).join(", ") + ": in the diagnosis, not in the LUS score" })]));
    }
  }

  // ------------------------------------------------------------------------------ history
  async function loadExamHistory() {
    const body = $("exam-history-body");
    let page;
    try { page = await getJSON(API + "/exams?offset=" + S.historyOffset + "&limit=" + HISTORY_PAGE); }
    catch (err) { body.replaceChildren(el("tr", {}, [el("td", { colspan: 6, class: "muted", text: "Exams not available: " + err.message })])); return; }
    body.replaceChildren();
    if (!page.items.length) body.append(el("tr", {}, [el("td", { colspan: 6, class: "muted", text: "No exams yet." })]));
    for (const x of page.items) {
      let res = "";
      if (x.status === "done" && x.diagnosis) res = className(x.diagnosis) + " (" + pct(x.probability) + ")";
      else if (x.status === "done") res = "No diagnosis" + (x.no_verdict && x.no_verdict.includes("withheld") ? " · " + P.OUTSIDE.toLowerCase() : "");
      else if (x.status === "failed") res = x.error || "";
      if (x.status === "done") res += " · LUS " + (x.lus_score == null ? "—" : x.lus_score) + " / " + x.lus_max + (x.review_recommended ? " · review recommended" : "");
      const clips = el("details", { class: "clips" }, [el("summary", { text: plural(x.n_recordings, "recording") +
        (x.counts.failed ? " (" + x.counts.failed + " failed)" : "") })]);
      clips.addEventListener("toggle", async () => {
        if (!clips.open || clips.dataset.loaded) return;
        clips.dataset.loaded = "1";
        try {
          const e = await getJSON(API + "/exams/" + x.id);
          clips.append(el("ul", {}, e.recordings.map((c) => el("li", { text: (c.zone || "no zone") + " · " + c.file + " · " +
            (c.status !== "done" ? c.status : c.withheld ? "no diagnosis (outside the training data)" : className(c.diagnosis) + " " + pct(c.probability)) }))));
        } catch (err) { clips.append(el("p", { class: "muted", text: err.message })); }
      });
      const when = fmtDate(x.created);
      body.append(el("tr", {}, [
        el("td", { text: when }), el("td", { text: x.patient || "—" }), el("td", {}, [clips]),
        el("td", {}, [el("span", { class: "pill " + (x.status === "open" ? "queued" : x.status), text: x.status })]),
        el("td", { text: res }),
        el("td", { class: "actions" }, [
          el("button", { type: "button", text: "Open", "aria-label": "Open the exam of " + when, onclick: () => openExam(x.id) }),
          el("button", { type: "button", class: "danger", text: "Delete", "aria-label": "Delete the exam of " + when,
            onclick: () => deleteExam(x.id) })]),
      ]));
    }
    const from = page.total ? page.offset + 1 : 0, to = page.offset + page.items.length;
    $("exam-history-pos").textContent = from + "–" + to + " of " + page.total;
    $("exam-history-newer").disabled = page.offset <= 0;
    $("exam-history-older").disabled = to >= page.total;
  }

  function openExam(id) {
    P.setMode("exam");
    history.replaceState(null, "", "#exam=" + id);
    if (!S.exam || S.exam.id !== id) { S.names = {}; $("exam-clips").replaceChildren(); }
    follow(id);
    $("exam").scrollIntoView({ behavior: "smooth", block: "start" });
  }

  async function deleteExam(id) {
    if (!confirm("Delete this exam, its recordings and their results?")) return;
    const r = await P.authorizedDelete(API + "/exams/" + id);
    if (!r) return;
    if (r.ok || r.status === 404) {
      setStatus($("exam-status"), "Exam deleted.", "ok");
      if (S.exam && S.exam.id === id) closeExam();
    } else {
      let msg = "HTTP " + r.status;
      try { msg = (await r.json()).detail || msg; } catch (err) { /* no body */ }
      setStatus($("exam-status"), "Not deleted: " + msg, "error");
    }
    loadExamHistory();
  }

  // ------------------------------------------------------------------------------ wiring
  async function init() {
    const input = $("exam-files"), dz = $("exam-dropzone");
    input.addEventListener("change", () => { const files = Array.from(input.files); input.value = ""; addFiles(files); });
    input.addEventListener("keydown", (ev) => {  // Enter opens the file chooser, as Space does
      if (ev.key === "Enter" && !ev.repeat) { ev.preventDefault(); input.click(); }
    });
    ["dragenter", "dragover"].forEach((t) => dz.addEventListener(t, (ev) => { ev.preventDefault(); dz.classList.add("over"); }));
    ["dragleave", "drop"].forEach((t) => dz.addEventListener(t, (ev) => { ev.preventDefault(); dz.classList.remove("over"); }));
    dz.addEventListener("drop", (ev) => { if (ev.dataTransfer && ev.dataTransfer.files.length) addFiles(ev.dataTransfer.files); });
    $("exam-create").addEventListener("click", createExam);
    $("exam-patient").addEventListener("keydown", (ev) => { if (ev.key === "Enter") { ev.preventDefault(); createExam(); } });
    $("exam-new").addEventListener("click", () => { closeExam(); setStatus($("exam-status"), ""); $("exam-patient").focus(); });
    $("history-refresh").addEventListener("click", loadExamHistory);
    $("exam-history-newer").addEventListener("click", () => { S.historyOffset = Math.max(0, S.historyOffset - HISTORY_PAGE); loadExamHistory(); });
    $("exam-history-older").addEventListener("click", () => { S.historyOffset += HISTORY_PAGE; loadExamHistory(); });
    window.addEventListener("hashchange", () => {
      const m = /^#exam=([0-9a-f]{16})/.exec(location.hash);
      if (m && (!S.exam || S.exam.id !== m[1])) openExam(m[1]);
    });
    // the exam named by the address when the page opened; read before waiting, since starting an exam meanwhile
    // rewrites the address, and following that one here would show its recordings before their names are known
    const m = /^#exam=([0-9a-f]{16})/.exec(location.hash);
    await (P.ready || Promise.resolve());  // the words, colours and diagram of GET api/display
    loadExamHistory();
    if (m && !S.exam) follow(m[1]);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();

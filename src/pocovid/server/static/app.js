/* pocovid web page: upload, follow, show and list analyses; contribute data. Plain JS, no libraries.
   The exam mode (exam.js) uses the helpers this file shares as window.pocovid. */
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const API = "api";
  // How results are shown (words, colours, heat map) comes from the server (GET api/display,
  // pocovid.analysis.display): the same as in the report. Until it has loaded: the keys, in grey.
  const display = {
    class_names: {}, class_colours: {}, withheld_colour: "#9a9a9a", finding_names: {}, severity_words: [],
    heatmap: { name: "viridis", stops: [] },
  };
  const HISTORY_PAGE = 10;
  const STAGES = {  // the analysis' progress stages, in words
    starting: "starting", "loading the model": "loading the model", region: "finding the scan region",
    classify: "classifying the frames", explain: "computing the heatmaps", report: "writing the report",
    video: "writing the overlay video", done: "finishing",
  };

  const state = {
    current: null,        // analysis being shown
    timeline: null,       // {times, classes, probs: [[...]], keyTimes}
    view: "overlay",      // overlay | original
    local: null,          // {id, url}: the file picked in this page (shown as the original)
    historyOffset: 0,
    pollTimer: null,
    maxBytes: 200 * 1024 * 1024,
  };

  // ------------------------------------------------------------------------------ helpers
  function upperFirst(s) { return s ? s.charAt(0).toUpperCase() + s.slice(1) : "—"; }
  function className(c) { return upperFirst(display.class_names[c] || (c ? c.replace(/_/g, " ") : "")); }
  function classColor(c) { return display.class_colours[c] || display.withheld_colour; }
  function findingName(f) { return upperFirst(display.finding_names[f] || f.replace(/_/g, " ")); }
  function severityText(level, n) {  // "severity 2 of 3 (moderate)", as the report says it
    const words = n === display.severity_words.length ? display.severity_words[level] : null;
    return "severity " + level + " of " + (n - 1) + (words ? " (" + words + ")" : "");
  }
  function plural(n, word, words) { return n + " " + (n === 1 ? word : (words || word + "s")); }
  const OUTSIDE = "Outside what the model was trained on";
  async function loadDisplay() {
    try { Object.assign(display, await getJSON(API + "/display")); } catch (e) { /* keys in grey */ }
  }
  function pct(p) {
    if (p == null || isNaN(p)) return "—";
    if (p >= 0.995) return ">99 %";
    if (p < 0.005) return "<1 %";
    return Math.round(100 * p) + " %";
  }
  function fmtTime(s) {
    if (s == null || isNaN(s)) return "";
    const m = Math.floor(s / 60), r = s - 60 * m;
    return m + ":" + (r < 10 ? "0" : "") + r.toFixed(1);
  }
  function fmtDate(epoch) {
    try { return new Date(epoch * 1000).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" }); }
    catch (e) { return new Date(epoch * 1000).toLocaleString(); }
  }
  function fmtSize(n) {
    if (n >= 1048576) return (n / 1048576).toFixed(1) + " MB";
    if (n >= 1024) return Math.round(n / 1024) + " kB";
    return n + " B";
  }
  function el(tag, attrs, children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === "text") e.textContent = v;
      else if (k === "class") e.className = v;
      else if (k === "style") e.style.cssText = v;  // CSSOM: allowed by the page's CSP (attributes are not)
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of [].concat(children || [])) if (c != null) e.append(c);
    return e;
  }
  function setStatus(node, text, kind) {
    node.textContent = text;
    node.className = "status" + (kind ? " " + kind : "");
  }
  // Every request that changes data carries this header: a page of another site cannot send it
  // (CSRF protection; see docs/server.md).
  const CSRF_HEADER = "X-Requested-With", CSRF_VALUE = "pocovid";
  async function getJSON(url, opts) {
    const r = await fetch(url, Object.assign({ headers: { Accept: "application/json", [CSRF_HEADER]: CSRF_VALUE } }, opts || {}));
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    if (!r.ok) {
      const err = new Error((body && body.detail) || ("HTTP " + r.status));
      err.status = r.status;
      throw err;
    }
    return body;
  }

  // ------------------------------------------------------------------------------ result parsing
  // The result is the analysis' result.json (`pocovid analyze --json`, docs/analyze.md), one shape:
  // prediction {label, probabilities {class: p}, withheld, frames_disagree}, uncertainty {score, threshold},
  // review_recommended, review_reasons, out_of_distribution, media {kind}, frames [{time_s, probabilities}],
  // key_frames [{rank, time_s, image, probabilities, evidence}], report, timeline, overlay_video.
  function readResult(a) {
    const r = a.result;
    const pred = r.prediction;
    const probs = pred.probabilities;
    return {
      diag: pred.label, diagP: Number(probs[pred.label]), probs, classes: Object.keys(probs),
      notLung: !!r.out_of_distribution,
      withheld: !!pred.withheld,
      review: !!r.review_recommended,
      reasons: r.review_reasons || [],
      uncertainty: r.uncertainty || null,
      oodReasons: (r.ood && r.ood.reasons) || [],
      framesDisagree: !!pred.frames_disagree,
      findings: r.findings || null,
      severity: r.severity || null,
      raw: r,
    };
  }

  function readFrames(r, classes) {
    // frames: [{index, time_s, probabilities: {class: p}}], one per analysed frame
    const frames = r.frames || [];
    return {
      classes: classes.slice(),
      times: frames.map((f) => Number(f.time_s)),
      probs: frames.map((f) => classes.map((c) => Number(f.probabilities[c]))),
    };
  }

  function readKeyFrames(a, r) {
    // key_frames: [{rank, index, time_s, image (original | heatmap side by side), probabilities, evidence}]
    const files = a.files || {};
    const out = [];
    for (const k of r.key_frames || []) {
      const src = files[k.image];
      if (!src) continue;
      out.push({ src, time: k.time_s, rank: k.rank, evidence: k.evidence, probs: k.probabilities, label: k.label });
    }
    return out;
  }

  // ------------------------------------------------------------------------------ upload + follow
  function uploadWithProgress(url, formData, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", url);
      xhr.responseType = "json";
      xhr.setRequestHeader("Accept", "application/json");
      xhr.setRequestHeader(CSRF_HEADER, CSRF_VALUE);
      xhr.upload.addEventListener("progress", (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); });
      xhr.addEventListener("load", () => {
        const body = xhr.response || {};
        if (xhr.status >= 200 && xhr.status < 300) resolve(body);
        else { const err = new Error(body.detail || ("upload refused (HTTP " + xhr.status + ")")); err.status = xhr.status; reject(err); }
      });
      xhr.addEventListener("error", () => reject(new Error("the upload failed (connection closed; is the file too large?)")));
      xhr.addEventListener("abort", () => reject(new Error("the upload was cancelled")));
      xhr.send(formData);
    });
  }

  function showProgress(label, fraction) {
    $("progress-box").hidden = false;
    $("progress-label").textContent = label;
    const v = Math.round(100 * Math.max(0, Math.min(1, fraction || 0)));
    $("progress").value = v;
    $("progress-pct").textContent = v + " %";
  }

  async function startAnalysis(file) {
    const status = $("status");
    if (!file) return;
    if (file.size === 0) { setStatus(status, "This file is empty.", "error"); return; }
    if (file.size > state.maxBytes) {
      setStatus(status, "This file is larger than the limit of " + fmtSize(state.maxBytes) + ".", "error");
      return;
    }
    clearTimeout(state.pollTimer);
    $("result").hidden = true;
    setStatus(status, "Uploading " + fmtSize(file.size) + "…");
    showProgress("Uploading", 0);
    const fd = new FormData();
    fd.append("file", file, "upload");  // the original file name is not sent (it may name the patient)
    let created;
    try {
      created = await uploadWithProgress(API + "/analyses", fd, (f) => {
        showProgress("Uploading", f);
      });
    } catch (e) {
      $("progress-box").hidden = true;
      setStatus(status, "Upload refused: " + e.message, "error");
      return;
    }
    setStatus(status, "Uploaded. Waiting for the analysis…");
    showProgress("Analysing", 0);
    history.replaceState(null, "", "#analysis=" + created.id);
    if (state.local) URL.revokeObjectURL(state.local.url);
    state.local = { id: created.id, url: URL.createObjectURL(file) };
    follow(created.id);
    loadHistory();
  }

  async function follow(id) {
    clearTimeout(state.pollTimer);
    const status = $("status");
    let delay = 500;
    const tick = async () => {
      let a;
      try { a = await getJSON(API + "/analyses/" + id); }
      catch (e) {
        if (e.status === 404) { setStatus(status, "This analysis no longer exists.", "error"); $("progress-box").hidden = true; return; }
        state.pollTimer = setTimeout(tick, 2000);
        return;
      }
      if (a.status === "done") {
        $("progress-box").hidden = true;
        setStatus(status, "Analysis finished.", "ok");
        showResult(a);
        loadHistory();
        return;
      }
      if (a.status === "failed") {
        $("progress-box").hidden = true;
        setStatus(status, "The analysis failed: " + (a.error || "unknown reason"), "error");
        loadHistory();
        return;
      }
      const stage = a.status === "queued" ? (a.stage || "waiting for a worker") : (STAGES[a.stage] || a.stage || "running");
      showProgress(a.status === "queued" ? "Queued" : "Analysing", a.progress);
      setStatus(status, (a.status === "queued" ? "Queued: " : "Analysing: ") + stage);
      delay = Math.min(2000, delay * 1.3);
      state.pollTimer = setTimeout(tick, delay);
    };
    tick();
  }

  // ------------------------------------------------------------------------------ result view
  function showResult(a) {
    state.current = a;
    const R = readResult(a);
    const res = $("result");
    res.hidden = false;
    $("result-meta").textContent = fmtDate(a.created) + " · " + a.format.toUpperCase() + " · " + fmtSize(a.size) +
      (a.deidentified ? " · de-identified" : "");
    const nFrames = (R.raw.frames || []).length;
    $("result-meta").textContent += " · " + plural(nFrames, "analysed frame");
    const diag = $("diagnosis"), card = document.querySelector(".diagnosis-card");
    card.classList.toggle("withheld", R.withheld);
    card.classList.toggle("review", R.review && !R.withheld);
    diag.replaceChildren();
    diag.style.color = "";
    $("badge").hidden = !(R.review && !R.withheld);
    if (R.withheld) {
      // no verdict: nothing in a class colour, nothing bold, the probabilities folded away below
      $("eyebrow").textContent = "No diagnosis";
      diag.textContent = OUTSIDE;
      $("diagnosis-p").textContent = "For example a linear-probe recording, another organ, or not lung ultrasound: " +
        "the model's output says nothing about a diagnosis here.";
    } else {
      $("eyebrow").textContent = "Most likely";
      diag.textContent = className(R.diag);
      if (!R.review) diag.style.color = classColor(R.diag);
      const u = R.uncertainty;
      $("diagnosis-p").textContent = "Probability " + pct(R.diagP) + (u && u.summary ? ". " + u.summary : "");
    }

    // flags: what is true, in plain words
    const flags = $("flags");
    flags.replaceChildren();
    const others = R.reasons.filter((x) => !R.oodReasons.some((o) => x.includes(o)) && !x.startsWith("outside what the model"));
    const sentence = (x) => x.charAt(0).toUpperCase() + x.slice(1) + ".";
    if (R.withheld) {
      const li = el("li", { class: "flag bad" }, [el("strong", { text: OUTSIDE + " (e.g. a linear probe)" }),
        "A healthy lung recorded in a way the model has not seen looks like this too. Why:"]);
      const why = R.oodReasons.length ? R.oodReasons : ["the recording differs from the training recordings"];
      li.append(el("ul", {}, why.map((x) => el("li", { text: sentence(x) }))));
      flags.append(li);
    }
    if (R.review && others.length) {
      flags.append(el("li", { class: "flag warn" }, [el("strong", { text: "Review recommended" }),
        others.map(sentence).join(" ")]));
    }
    if (!R.withheld && !R.review) {
      flags.append(el("li", { class: "flag good" }, [el("strong", { text: "No review flag" }),
        "The ensemble agrees and the frames agree; still decision support only."]));
    }

    // probabilities: a filled bar when sure, a hatched outline with review, grey and folded when withheld
    const order = R.classes.slice().sort((x, y) => (R.probs[y] || 0) - (R.probs[x] || 0));
    const row = (c) => {
      const p = Number(R.probs[c] || 0);
      const col = R.withheld ? display.withheld_colour : classColor(c);
      const fill = el("span", { style: "width:" + (100 * p).toFixed(1) + "%;" + (R.review && !R.withheld
        ? "background:repeating-linear-gradient(135deg," + col + " 0 3px,transparent 3px 7px)" : "background:" + col) });
      return el("li", { class: c === R.diag && !R.withheld && !R.review ? "top" : null }, [
        el("span", { text: className(c) }),
        el("span", { class: "bar" + (R.review && !R.withheld ? " outlined" : ""), role: "presentation",
          style: R.review && !R.withheld ? "border-color:" + col : null }, [fill]),
        el("span", { class: "val", text: pct(p) }),
      ]);
    };
    $("probs").replaceChildren(...(R.withheld ? [] : order.map(row)));
    $("probs-h").hidden = R.withheld;
    $("probs-fold").hidden = !R.withheld;
    $("probs-fold").open = false;
    $("probs-grey").replaceChildren(...(R.withheld ? order.map(row) : []));
    showTargets(R, a.files || {});

    // links
    const links = $("links");
    links.replaceChildren();
    const L = a.links || {};
    if (L.report) links.append(el("a", { href: L.report, target: "_blank", rel: "noopener", class: "button", text: "Open the report" }));
    if (L.result_json) links.append(el("a", { href: L.result_json, download: "result.json", class: "button", text: "result.json" }));

    // media
    state.view = "overlay";  // setupMedia falls back to the original when there is no overlay
    setupMedia(a, R);

    // timeline + key frames
    state.timeline = readFrames(R.raw, R.classes);
    state.keyframes = readKeyFrames(a, R.raw);
    state.timeline.keyTimes = state.keyframes.map((k) => k.time).filter((t) => t != null);
    state.cursor = null;
    $("timeline-readout").textContent = "";
    $("timeline-section").hidden = state.timeline.times.length <= 1;  // one frame (an image): no timeline
    drawLegend();
    if (state.timeline.times.length > 1) drawTimeline();
    showKeyframes();
    showHeatKey();
    $("result-h").focus({ preventScroll: true });
    res.scrollIntoView({ behavior: "smooth", block: "start" });
  }

  function showTargets(R, files) {
    // findings (probability each) and severity, greyed when the input is outside the training data;
    // where the model sees each finding read as present (finding_maps: none out of distribution)
    const box = $("targets");
    const F = R.findings, S = R.severity;
    box.hidden = !(F || S);
    box.classList.toggle("grey", R.withheld);
    const list = $("findings");
    list.replaceChildren();
    if (F) {
      Object.entries(F).sort((x, y) => y[1] - x[1]).forEach(([f, p]) => {
        list.append(el("li", {}, [el("span", { text: findingName(f) }),
          el("span", { class: "bar", role: "presentation" }, [el("span", { style: "width:" + (100 * p).toFixed(1) +
            "%;background:" + (R.withheld ? display.withheld_colour : "#56B4E9") })]),
          el("span", { class: "val", text: pct(p) })]));
      });
    }
    $("findings").hidden = !F;
    const maps = $("finding-maps");
    maps.replaceChildren();
    const FM = (R.withheld ? [] : R.raw.finding_maps || []).filter((m) => files[m.image]);
    FM.forEach((m) => {
      const name = findingName(m.finding), when = fmtTime(m.time_s);
      const img = el("img", { src: files[m.image], alt: "Where the model sees " + name + " at " + when +
        ": the frame and the map of its findings head" });
      const btn = el("button", { type: "button", "aria-label": "Jump to " + when + " (" + name + ")",
        onclick: () => { seek(m.time_s); $("media-h").scrollIntoView({ behavior: "smooth", block: "start" }); } },
      [img, el("span", { class: "cap", text: name + " · " + pct(m.probability) + " over the clip · " + when })]);
      maps.append(el("li", {}, [btn]));
    });
    maps.hidden = !FM.length;
    const sev = $("severity");
    sev.hidden = !S;
    if (S) {
      const n = S.probabilities.length;
      // the level is the ordinal head's median (result.json severity.level), as the report says it
      sev.textContent = "Lung severity: " + severityText(S.level, n) + ", the level at which the probabilities added up " +
        "from level 0 reach 50% (" + S.probabilities.map((p, k) => k + ": " + pct(p)).join(", ") + ").";
    }
  }

  // Containers a browser's <video> plays (the same as pocovid.analysis.analyze.BROWSER_PLAYABLE),
  // and stills an <img> shows; for other recordings the analysis wrote a playable copy (links.source_video).
  const SHOWABLE = ["mp4", "m4v", "webm", "mov", "png", "jpeg", "bmp"];
  function sourceUrl(a) {
    const copy = a.links && a.links.source_video;
    if (copy) return copy;  // AVI, MPEG, GIF, ...: the analysis' H.264 copy (a blob of the file would not play)
    if (!SHOWABLE.includes(a.format)) return null;
    if (state.local && state.local.id === a.id) return state.local.url;  // the file picked in this page
    return API + "/analyses/" + a.id + "/source";
  }

  function setupMedia(a, R) {
    const L = a.links || {};
    const video = $("video"), still = $("still");
    const isVideo = R.raw.media.kind === "video";
    const kf = readKeyFrames(a, R.raw);
    // overlay view: the overlay video (videos) or the first key frame with its heatmap (images);
    // original view: the recording itself, when the browser can show it
    const overlaySrc = isVideo ? L.overlay_video : (kf.length ? kf[0].src : null);
    const originalSrc = sourceUrl(a);
    const useVideo = isVideo && !!(overlaySrc || originalSrc);
    $("view-toggle").hidden = !(overlaySrc && originalSrc);
    if (!overlaySrc) state.view = "original";
    if (!originalSrc) state.view = "overlay";
    $("media-empty").hidden = !!(overlaySrc || originalSrc);
    video.hidden = !useVideo;
    still.hidden = useVideo || !(overlaySrc || originalSrc);
    if (!useVideo) video.removeAttribute("src");
    const apply = () => {
      const overlay = state.view === "overlay";
      $("show-overlay").setAttribute("aria-pressed", String(overlay));
      $("show-original").setAttribute("aria-pressed", String(!overlay));
      const want = overlay ? (overlaySrc || originalSrc) : (originalSrc || overlaySrc);
      if (useVideo) {
        if (video.getAttribute("src") !== want) {
          const t = state.cursor || video.currentTime || 0, playing = !video.paused;
          video.setAttribute("src", want);
          video.addEventListener("loadedmetadata", () => { try { video.currentTime = t; } catch (e) { /* ignore */ } if (playing) video.play(); }, { once: true });
        }
        video.setAttribute("aria-label", overlay ? "Recording with heatmap overlay and probabilities" : "Original recording");
      } else if (want) {
        still.src = want;
        still.alt = overlay ? "The image and its heatmap, side by side" : "The original image";
      }
    };
    state.applyView = apply;
    apply();
  }

  function setView(v) { state.view = v; if (state.applyView) state.applyView(); }

  function drawLegend() {
    const lg = $("legend");
    lg.replaceChildren();
    state.timeline.classes.forEach((c) => {
      lg.append(el("li", {}, [el("i", { style: "background:" + classColor(c) }), className(c)]));
    });
  }

  function showHeatKey() {
    const stops = display.heatmap.stops || [];
    $("heat-key").hidden = !stops.length;
    $("heat-ramp").style.cssText = stops.length ? "background:linear-gradient(90deg," + stops.join(",") + ")" : "";
  }

  function timelineDuration() {
    const T = state.timeline;
    const video = $("video");
    const tmax = T && T.times.length ? Math.max(...T.times) : 0;
    const vd = !video.hidden && isFinite(video.duration) ? video.duration : 0;
    return Math.max(tmax, vd, 1e-6);
  }

  function drawTimeline() {
    const cv = $("timeline");
    const T = state.timeline;
    const dpr = window.devicePixelRatio || 1;
    const w = (cv.parentElement && cv.parentElement.clientWidth) || cv.clientWidth || 600, h = cv.clientHeight || 170;
    cv.width = Math.round(w * dpr); cv.height = Math.round(h * dpr);
    const g = cv.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const pad = { l: 36, r: 10, t: 10, b: 24 };
    const pw = w - pad.l - pad.r, ph = h - pad.t - pad.b;
    const dur = timelineDuration();
    const x = (t) => pad.l + (dur > 0 ? (t / dur) * pw : 0);
    const y = (p) => pad.t + (1 - p) * ph;
    g.font = "11px system-ui, sans-serif";
    g.fillStyle = "#5b6875"; g.strokeStyle = "#e3e8ed"; g.lineWidth = 1;
    for (const p of [0, 0.5, 1]) {
      g.beginPath(); g.moveTo(pad.l, y(p) + 0.5); g.lineTo(w - pad.r, y(p) + 0.5); g.stroke();
      g.fillText(Math.round(100 * p) + "%", 4, y(p) + 4);
    }
    const nt = Math.min(8, Math.max(2, Math.floor(pw / 80)));
    for (let i = 0; i <= nt; i++) {
      const t = (dur * i) / nt;
      g.fillText(fmtTime(t), Math.min(x(t) - 10, w - 36), h - 6);
    }
    if (!T || !T.times.length) {
      g.fillStyle = "#5b6875"; g.font = "13px system-ui, sans-serif";
      g.fillText("No per-frame probabilities in this result", pad.l + 10, pad.t + ph / 2);
      return;
    }
    // key moments
    g.fillStyle = "rgba(11,110,138,0.12)";
    for (const t of T.keyTimes || []) g.fillRect(x(t) - 3, pad.t, 6, ph);
    T.classes.forEach((c, ci) => {
      g.strokeStyle = classColor(c); g.lineWidth = 2; g.beginPath();
      T.times.forEach((t, i) => {
        const p = Number(T.probs[i][ci] || 0);
        if (i === 0) g.moveTo(x(t), y(p)); else g.lineTo(x(t), y(p));
      });
      g.stroke();
      if (T.times.length <= 60) {
        g.fillStyle = classColor(c);
        T.times.forEach((t, i) => { g.beginPath(); g.arc(x(t), y(Number(T.probs[i][ci] || 0)), 2.2, 0, 2 * Math.PI); g.fill(); });
      }
    });
    // cursor
    const video = $("video");
    const cur = state.cursor != null ? state.cursor : (!video.hidden ? video.currentTime : null);
    if (cur != null) {
      g.strokeStyle = "#1c2733"; g.lineWidth = 1.5; g.beginPath();
      g.moveTo(x(cur), pad.t); g.lineTo(x(cur), pad.t + ph); g.stroke();
    }
    state.timelineGeom = { pad, pw, dur };
  }

  function seek(t) {
    const video = $("video");
    state.cursor = t;
    if (!video.hidden && video.getAttribute("src")) {
      try { video.currentTime = Math.max(0, Math.min(t, (video.duration || t))); } catch (e) { /* not seekable yet */ }
    }
    drawTimeline();
    const T = state.timeline;
    if (T && T.times.length) {
      let best = 0;
      T.times.forEach((tt, i) => { if (Math.abs(tt - t) < Math.abs(T.times[best] - t)) best = i; });
      const parts = T.classes.map((c, ci) => className(c) + " " + pct(T.probs[best][ci]));
      $("timeline").setAttribute("aria-valuetext", fmtTime(t) + ": " + parts.join(", "));
      $("timeline-readout").textContent = "At " + fmtTime(t) + ": " + parts.join(", ");
    }
  }

  function showKeyframes() {
    const list = $("keyframes");
    list.replaceChildren();
    const K = state.keyframes || [];
    const R = state.current ? readResult(state.current) : null;
    const diag = R ? R.diag : null;
    const withheld = !!(R && R.withheld);  // outside the training data: no class, no percentage
    if (!K.length) { list.append(el("li", { class: "muted", text: "No key moments in this result." })); return; }
    K.forEach((k, i) => {
      const when = k.time != null ? fmtTime(k.time) : "frame " + (i + 1);
      const label = k.label || diag;  // each moment is evidence for its own class
      const what = withheld ? "where the model looked (no evidence)"
        : k.evidence != null && label ? className(label) + " " + pct(k.evidence) : "";
      const cap = ["Moment " + (k.rank || i + 1), when, what].filter(Boolean).join(" · ");
      const img = el("img", { src: k.src, alt: "Key moment " + (k.rank || i + 1) + " at " + when + ": the frame and its heatmap" + (what ? " (" + what + ")" : "") });
      const btn = el("button", { type: "button", "aria-label": "Jump to " + when + (what ? " (" + what + ")" : ""),
        onclick: () => { if (k.time != null) { seek(k.time); $("media-h").scrollIntoView({ behavior: "smooth", block: "start" }); } } },
      [img, el("span", { class: "cap", text: cap })]);
      list.append(el("li", {}, [btn]));
    });
  }

  // ------------------------------------------------------------------------------ history
  async function loadHistory() {
    const body = $("history-body");
    let page;
    try { page = await getJSON(API + "/analyses?offset=" + state.historyOffset + "&limit=" + HISTORY_PAGE); }
    catch (e) { body.replaceChildren(el("tr", {}, [el("td", { colspan: 5, class: "muted", text: "History not available: " + e.message })])); return; }
    if (page.total && state.historyOffset >= page.total) { state.historyOffset = Math.max(0, page.total - HISTORY_PAGE); return loadHistory(); }
    body.replaceChildren();
    if (!page.items.length) body.append(el("tr", {}, [el("td", { colspan: 5, class: "muted", text: "No analyses yet." })]));
    for (const a of page.items) {
      let res = "";
      if (a.status === "done" && a.withheld) res = "No diagnosis · outside what the model was trained on";
      else if (a.status === "done") res = className(a.diagnosis) + (a.probability != null ? " (" + pct(a.probability) + ")" : "") + (a.review_recommended ? " · review recommended" : "");
      else if (a.status === "failed") res = a.error || "";
      else res = a.stage || "";
      const open = el("button", { type: "button", text: "Open", "aria-label": "Open the analysis of " + fmtDate(a.created),
        onclick: () => { setMode("single"); history.replaceState(null, "", "#analysis=" + a.id); follow(a.id); } });
      const del = el("button", { type: "button", class: "danger", text: "Delete", "aria-label": "Delete the analysis of " + fmtDate(a.created),
        onclick: () => deleteAnalysis(a.id) });
      body.append(el("tr", {}, [
        el("td", { text: fmtDate(a.created) }),
        el("td", { text: a.format.toUpperCase() + " · " + fmtSize(a.size) }),
        el("td", {}, [el("span", { class: "pill " + a.status, text: a.status })]),
        el("td", { text: res }),
        el("td", { class: "actions" }, [open, del]),
      ]));
    }
    const from = page.total ? page.offset + 1 : 0, to = page.offset + page.items.length;
    $("history-pos").textContent = from + "–" + to + " of " + page.total;
    $("history-newer").disabled = page.offset <= 0;
    $("history-older").disabled = to >= page.total;
  }

  // DELETE with the server's API token (asked once, kept for the tab); null when the user gave none
  async function authorizedDelete(url) {
    const tryDelete = async (token) => {
      const headers = { [CSRF_HEADER]: CSRF_VALUE };
      if (token) headers.Authorization = "Bearer " + token;
      return fetch(url, { method: "DELETE", headers });
    };
    let token = sessionStorage.getItem("pocovid-token");
    let r = await tryDelete(token);
    if (r.status === 401 || (r.status === 403 && !token)) {  // the server has a token: ask for it
      token = prompt("This server needs its API token to delete:");
      if (!token) return null;
      r = await tryDelete(token);
      if (r.ok) sessionStorage.setItem("pocovid-token", token);
    }
    return r;
  }

  async function deleteAnalysis(id) {
    if (!confirm("Delete this analysis, its upload and its results?")) return;
    const r = await authorizedDelete(API + "/analyses/" + id);
    if (!r) return;
    if (r.ok || r.status === 404) {
      setStatus($("status"), "Analysis deleted.", "ok");
      if (state.current && state.current.id === id) { $("result").hidden = true; state.current = null; history.replaceState(null, "", "#"); }
    } else {
      let msg = "HTTP " + r.status;
      try { msg = (await r.json()).detail || msg; } catch (e) { /* no body */ }
      setStatus($("status"), "Not deleted: " + msg, "error");
    }
    loadHistory();
  }

  // ------------------------------------------------------------------------------ contributions
  async function setupContributions() {
    let o;
    try { o = await getJSON(API + "/contributions/options"); } catch (e) { return; }
    const fill = (sel, items, keepFirst) => {
      if (!keepFirst) sel.replaceChildren();
      for (const it of items) sel.append(el("option", { value: it.value, text: it.label }));
    };
    fill($("c-diagnosis"), o.diagnoses, true);
    fill($("c-probe"), o.probes, false);
    fill($("c-license"), o.licenses.map((l) => ({ value: l, label: l })), true);
    fill($("c-severity"), o.severity.map((s) => ({ value: String(s), label: String(s) })), true);
    const grid = $("c-findings");
    grid.replaceChildren();
    for (const f of o.findings) {
      const id = "c-f-" + f.value;
      const sel = el("select", { id, name: f.value }, [el("option", { value: "", text: "Not assessed" }),
        el("option", { value: "yes", text: "Present" }), el("option", { value: "no", text: "Absent" })]);
      grid.append(el("div", { class: "field" }, [el("label", { for: id, text: f.label }), sel]));
    }
  }

  async function submitContribution(ev) {
    ev.preventDefault();
    const form = $("contrib-form"), status = $("c-status");
    form.querySelectorAll("[aria-invalid]").forEach((n) => n.removeAttribute("aria-invalid"));
    const required = [["c-file", "Choose a recording."], ["c-diagnosis", "Choose the diagnosis."],
      ["c-source", "Name the source or institution."], ["c-license", "Choose a license."]];
    for (const [id, msg] of required) {
      const n = $(id);
      if (!(n.type === "file" ? n.files.length : n.value.trim())) {
        n.setAttribute("aria-invalid", "true"); n.focus(); setStatus(status, msg, "error"); return;
      }
    }
    if (!$("c-consent").checked) {
      $("c-consent").setAttribute("aria-invalid", "true"); $("c-consent").focus();
      setStatus(status, "Please confirm consent and the right to share.", "error"); return;
    }
    const fd = new FormData(form);
    const file = $("c-file").files[0];
    fd.set("file", file, "upload");
    const bar = $("c-progress");
    bar.hidden = false; bar.value = 0;
    $("c-submit").disabled = true;
    setStatus(status, "Uploading…");
    try {
      const r = await uploadWithProgress(API + "/contributions", fd, (f) => { bar.value = Math.round(100 * f); });
      setStatus(status, "Thank you: contribution received for review" + (r.deidentified ? " (DICOM de-identified)." : "."), "ok");
      form.reset();
    } catch (e) {
      setStatus(status, "Not sent: " + e.message, "error");
    } finally {
      bar.hidden = true;
      $("c-submit").disabled = false;
    }
  }

  // ------------------------------------------------------------------------------ footer
  async function loadFooter() {
    try {
      const h = await getJSON(API + "/health");
      $("version").textContent = h.version;
      state.maxBytes = h.max_upload_mb * 1024 * 1024;
      $("max-mb").textContent = $("exam-max-mb").textContent = String(Math.round(h.max_upload_mb));
    } catch (e) { /* offline */ }
    try {
      const m = await getJSON(API + "/model");
      let cv = "";
      const v = m.metrics && m.metrics.video;
      if (v && v.balanced_accuracy != null) {
        cv = " · cross-validated balanced accuracy " + pct(v.balanced_accuracy) + " per recording" + (v.n ? " (n = " + v.n + ")" : "");
      }
      $("model-info").textContent = "Model: " + m.name + " (" + m.backbone + ", classes " + m.classes.map(className).join(", ") + ")" +
        (m.version ? " · trained with pocovid " + m.version : "") + cv;
    } catch (e) {
      $("model-info").textContent = "Model: not available (" + e.message + ")";
    }
  }

  // ------------------------------------------------------------------------------ modes
  // One recording, or an exam (exam.js): the page shows one of them (body.exam-mode), the history both.
  function setMode(mode) {
    const exam = mode === "exam";
    document.body.classList.toggle("exam-mode", exam);
    $("mode-single").setAttribute("aria-pressed", String(!exam));
    $("mode-exam").setAttribute("aria-pressed", String(exam));
  }
  function modeFromHash() {
    if (/^#exam/.test(location.hash)) setMode("exam");
    else if (/^#(analy|result)/.test(location.hash)) setMode("single");
  }

  // what exam.js uses
  window.pocovid = {
    $, API, display, state, el, getJSON, setStatus, pct, className, classColor, findingName, severityText, plural,
    fmtDate, fmtSize, uploadWithProgress, authorizedDelete, setMode, CSRF_HEADER, CSRF_VALUE, OUTSIDE, ready: null,
  };

  // ------------------------------------------------------------------------------ wiring
  async function init() {
    const input = $("file-input"), dz = $("dropzone");
    input.addEventListener("change", () => { if (input.files.length) startAnalysis(input.files[0]); input.value = ""; });
    // Enter opens the file chooser, as Space does (a file input answers Space only)
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.repeat) { e.preventDefault(); input.click(); }
    });
    ["dragenter", "dragover"].forEach((t) => dz.addEventListener(t, (e) => { e.preventDefault(); dz.classList.add("over"); }));
    ["dragleave", "drop"].forEach((t) => dz.addEventListener(t, (e) => { e.preventDefault(); dz.classList.remove("over"); }));
    dz.addEventListener("drop", (e) => { const f = e.dataTransfer && e.dataTransfer.files[0]; if (f) startAnalysis(f); });
    document.addEventListener("dragover", (e) => e.preventDefault());
    document.addEventListener("drop", (e) => e.preventDefault());

    $("show-overlay").addEventListener("click", () => setView("overlay"));
    $("show-original").addEventListener("click", () => setView("original"));

    const cv = $("timeline");
    cv.addEventListener("click", (e) => {
      const g = state.timelineGeom; if (!g) return;
      const r = cv.getBoundingClientRect();
      const t = ((e.clientX - r.left - g.pad.l) / g.pw) * g.dur;
      seek(Math.max(0, Math.min(g.dur, t)));
    });
    cv.addEventListener("keydown", (e) => {
      const g = state.timelineGeom; if (!g) return;
      const step = e.shiftKey ? g.dur / 10 : g.dur / 50;
      const cur = state.cursor != null ? state.cursor : 0;
      if (e.key === "ArrowRight") { seek(Math.min(g.dur, cur + step)); e.preventDefault(); }
      else if (e.key === "ArrowLeft") { seek(Math.max(0, cur - step)); e.preventDefault(); }
      else if (e.key === "Home") { seek(0); e.preventDefault(); }
      else if (e.key === "End") { seek(g.dur); e.preventDefault(); }
    });
    const video = $("video");
    video.addEventListener("timeupdate", () => { state.cursor = video.currentTime; drawTimeline(); });
    video.addEventListener("loadedmetadata", drawTimeline);
    window.addEventListener("resize", () => { if (state.timeline) drawTimeline(); });

    $("history-refresh").addEventListener("click", loadHistory);
    $("history-newer").addEventListener("click", () => { state.historyOffset = Math.max(0, state.historyOffset - HISTORY_PAGE); loadHistory(); });
    $("history-older").addEventListener("click", () => { state.historyOffset += HISTORY_PAGE; loadHistory(); });
    $("contrib-form").addEventListener("submit", submitContribution);

    $("mode-single").addEventListener("click", () => { setMode("single"); history.replaceState(null, "", "#analyze"); });
    $("mode-exam").addEventListener("click", () => {
      setMode("exam");
      if (!/^#exam/.test(location.hash)) history.replaceState(null, "", "#exam");
    });
    window.addEventListener("hashchange", modeFromHash);
    modeFromHash();

    setupContributions();
    window.pocovid.ready = loadDisplay();
    await window.pocovid.ready;  // before anything shows a class (names, colours)
    loadFooter();
    loadHistory();
    const m = /analysis=([0-9a-f]{16})/.exec(location.hash);
    if (m) follow(m[1]);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();

"""Check the scan-region detector on a folder of recordings that are already cropped to the scan area.

On such data the detector must be (nearly) a no-op: it must not cut into the image. Per file it
prints the share of "signal" pixels (temporal max grey level > --signal after a light blur) that
fall outside the detected mask ("lost"), the mask and box areas as shares of the frame, the shape,
the method and the detection time; then a summary (mean / max lost share, files above --limit).

    .venv/bin/python benchmarks/region_check.py ../shared/data/pocus [--screen] [--montage OUT]

--screen also pastes every clip onto a synthetic scanner screen (banner text, settings panel,
logo, grey bar, caliper, depth scale a few pixels from the image) and checks that the detector
keeps the clip's signal and leaves the overlays out ("ovl in": overlay pixels inside the mask).
--montage OUT writes one PNG per file (middle frame | temporal max with lost signal in red; mask
contour green, box yellow) and a contact sheet of the worst files. Exits 1 if any file loses more
than --limit (or, with --screen, keeps overlay pixels). Real data never leaves the data folder
except as these montages, which go where --montage says (keep them out of the repository).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from pocovid.media import MEDIA_EXTENSIONS, MediaError, sample_frames
from pocovid.region import ScanRegion, detect_scan_region


def signal_mask(frames: list[np.ndarray], level: float) -> np.ndarray:
    """Pixels bright at some time (grey temporal max after a light blur) above `level`."""
    mx = np.max([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames], axis=0).astype(np.float32)
    return cv2.GaussianBlur(mx, (0, 0), 1.0) > level


def check(frames: list[np.ndarray], signal_level: float = 20.0) -> tuple[ScanRegion, dict]:
    t0 = time.perf_counter()
    region = detect_scan_region(frames)
    dt = time.perf_counter() - t0
    sig = signal_mask(frames, signal_level)
    n_sig = int(sig.sum())
    lost = float((sig & ~region.mask).sum() / n_sig) if n_sig else 0.0
    return region, {"lost": lost, "mask": region.area_fraction, "box": region.box_fraction, "time_s": dt,
                    "n_frames": len(frames), "size": f"{frames[0].shape[1]}x{frames[0].shape[0]}",
                    "shape": region.shape, "method": region.method, "note": region.note}


def on_screen(frames: list[np.ndarray], seed: int = 0) -> tuple[list[np.ndarray], tuple[int, int], np.ndarray]:
    """The clip pasted onto a synthetic scanner screen with burnt-in overlays around it.

    Returns the screen frames, the clip's (x, y) offset on the screen and the overlay mask.
    """
    rng = np.random.default_rng(seed)
    h, w = frames[0].shape[:2]
    W, H = int(w * 1.55) + 40, int(h * 1.3) + 30
    x0, y0 = int(W * 0.2), int(H * 0.14)
    scr = np.zeros((H, W, 3), np.uint8)
    font, fs = cv2.FONT_HERSHEY_SIMPLEX, max(0.3, H / 1100)
    lh = max(9, int(30 * fs))
    white, grey, green, yellow = (235, 235, 235), (150, 160, 165), (120, 220, 120), (240, 220, 60)
    gap = max(10, W // 60)
    scr[y0:H - 4, 0:x0 - gap] = (20, 21, 26)  # settings panel, not black
    cv2.putText(scr, "PATIENT^NAME  ID 0012345", (4, lh), font, fs, white, 1, cv2.LINE_AA)
    cv2.putText(scr, "2021-05-04 09:41:07  C5-2 Lung", (4, 2 * lh), font, fs * 0.9, grey, 1, cv2.LINE_AA)
    cv2.putText(scr, "MI 1.1  TIs 0.4", (int(W * 0.5), lh), font, fs, grey, 1, cv2.LINE_AA)
    lw, lhh = max(20, W // 10), max(10, y0 // 2)  # logo, top right
    cv2.rectangle(scr, (W - lw - 4, 3), (W - 4, 3 + lhh), (200, 60, 40), -1)
    cv2.putText(scr, "ACME", (W - lw, lhh - 1), font, fs, (255, 255, 255), 1, cv2.LINE_AA)
    for i, s in enumerate(["B", "Gn 54", f"D {int(rng.integers(8, 17))}cm", "DR 66", "FR 24", "Lung"]):
        cv2.putText(scr, s, (4, y0 + (i + 1) * lh), font, fs * 0.85, green, 1, cv2.LINE_AA)
    ramp = np.linspace(255, 0, int(h * 0.4)).astype(np.uint8)  # grey bar
    gx = max(2, x0 - gap - max(4, W // 70) - 4)
    scr[y0 + h // 2:y0 + h // 2 + len(ramp), gx:gx + max(4, W // 70)] = ramp[:, None, None]
    cx, cy, arm = (x0 - gap) // 2, y0 + h // 3, max(4, W // 70)  # caliper and measurement
    cv2.line(scr, (cx - arm, cy), (cx + arm, cy), yellow, 1)
    cv2.line(scr, (cx, cy - arm), (cx, cy + arm), yellow, 1)
    cv2.putText(scr, "D1 1.9cm", (4, cy + arm + lh), font, fs * 0.75, yellow, 1, cv2.LINE_AA)
    sx = x0 + w + max(4, W // 100)  # depth scale, a few pixels right of the image
    for k in range(11):
        yy = y0 + int(round((h - 1) * k / 10))
        cv2.line(scr, (sx, yy), (sx + (7 if k % 5 == 0 else 4), yy), white, 1)
        if k % 5 == 0 and k:
            cv2.putText(scr, str(k), (sx + 9, yy + 4), font, fs * 0.8, white, 1, cv2.LINE_AA)
    cv2.line(scr, (sx, y0), (sx, y0 + h - 1), grey, 1)
    overlay = scr.any(axis=2)
    out = []
    for f in frames:
        s = scr.copy()
        s[y0:y0 + h, x0:x0 + w] = f
        out.append(s)
    overlay[y0:y0 + h, x0:x0 + w] = False
    return out, (x0, y0), overlay


def montage(frames: list[np.ndarray], region: ScanRegion, title: str, size: int = 320,
            signal_level: float = 20.0) -> np.ndarray:
    """Middle frame | temporal max with lost signal in red; mask contour green, box yellow."""
    mid = frames[len(frames) // 2]
    mx = np.max(frames, axis=0)
    lost = signal_mask(frames, signal_level) & ~region.mask
    mx = mx.copy()
    mx[lost] = (255, 0, 0)
    tiles = []
    for im in (mid, mx):
        im = np.ascontiguousarray(im)
        s = size / max(im.shape[:2])
        im = cv2.resize(im, (max(1, round(im.shape[1] * s)), max(1, round(im.shape[0] * s))),
                        interpolation=cv2.INTER_AREA)
        m = cv2.resize(region.mask.astype(np.uint8), (im.shape[1], im.shape[0]), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(im, contours, -1, (0, 255, 0), 1)
        x0, y0, x1, y1 = (round(v * s) for v in region.box)
        cv2.rectangle(im, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), (255, 255, 0), 1)
        can = np.zeros((size, size, 3), np.uint8)
        can[:im.shape[0], :im.shape[1]] = im
        tiles.append(can)
    out = np.concatenate(tiles, axis=1)
    head = np.zeros((16, out.shape[1], 3), np.uint8)
    cv2.putText(head, title[:90], (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([head, out], axis=0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--max-frames", type=int, default=32)
    ap.add_argument("--signal", type=float, default=20.0, help="grey level (0-255) that counts as signal")
    ap.add_argument("--limit", type=float, default=0.02, help="lost-signal share that counts as a failure")
    ap.add_argument("--screen", action="store_true", help="also check each clip pasted on a synthetic screen")
    ap.add_argument("--montage", type=Path, help="folder for PNG montages (mask contour drawn)")
    ap.add_argument("--worst", type=int, default=16, help="files in the worst-files contact sheet")
    a = ap.parse_args(argv)
    if not a.folder.is_dir():
        print(f"error: {a.folder}: no such folder (the real data lives in ../shared/data/pocus)", file=sys.stderr)
        return 2
    files = sorted(p for p in a.folder.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_EXTENSIONS)
    if not files:
        print(f"error: {a.folder}: no recordings found", file=sys.stderr)
        return 2
    if a.montage:
        a.montage.mkdir(parents=True, exist_ok=True)
    rows, sheets, failed = [], [], []
    head = f"{'lost':>7} {'mask':>6} {'box':>6} {'ms':>7} {'T':>3} {'size':>9}  {'shape':<6} {'method':<18}"
    if a.screen:
        head += f" | {'scr lost':>8} {'ovl in':>7} {'ms':>6}"
    print(head + "  file")
    for i, p in enumerate(files):
        rel = str(p.relative_to(a.folder))
        try:
            frames = [f.image for f in sample_frames(p, max_frames=a.max_frames)]
        except MediaError as e:
            failed.append(f"{e}")
            continue
        region, r = check(frames, a.signal)
        r["file"] = rel
        line = (f"{r['lost']:7.2%} {r['mask']:6.1%} {r['box']:6.1%} {1000 * r['time_s']:7.1f} {r['n_frames']:3d} "
                f"{r['size']:>9}  {r['shape']:<6} {r['method']:<18}")
        if a.screen:
            scr, (x0, y0), overlay = on_screen(frames, seed=i)
            t0 = time.perf_counter()
            sreg = detect_scan_region(scr)
            r["screen_time_s"] = time.perf_counter() - t0
            sig = np.zeros(overlay.shape, bool)
            h, w = frames[0].shape[:2]
            sig[y0:y0 + h, x0:x0 + w] = signal_mask(frames, a.signal)
            r["screen_lost"] = float((sig & ~sreg.mask).sum() / max(1, sig.sum()))
            r["overlay_in"] = int((overlay & sreg.mask).sum())
            line += f" | {r['screen_lost']:8.2%} {r['overlay_in']:7d} {1000 * r['screen_time_s']:6.1f}"
            if a.montage:
                img = montage(scr, sreg, f"screen {rel}  lost {r['screen_lost']:.2%}  overlay px in {r['overlay_in']}")
                cv2.imwrite(str(a.montage / ("screen__" + rel.replace("/", "__") + ".png")),
                            cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        rows.append(r)
        bad = r["lost"] > a.limit or (a.screen and (r["screen_lost"] > a.limit or r["overlay_in"] > 0))
        note = f"  [{r['note']}]" if r["note"] else ""
        print(f"{line}  {rel}{' <' if bad else ''}{note}", flush=True)
        if a.montage:
            img = montage(frames, region, f"{rel}  lost {r['lost']:.2%}  {r['shape']} {r['method']}")
            cv2.imwrite(str(a.montage / (rel.replace("/", "__") + ".png")), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            sheets.append((r["lost"], rel, img))
    if not rows:
        print("error: no file could be read", file=sys.stderr)
        return 2
    lost = np.array([r["lost"] for r in rows])
    times = np.array([r["time_s"] for r in rows])
    over = [r["file"] for r in rows if r["lost"] > a.limit]
    print()
    print(f"files: {len(rows)} checked, {len(failed)} unreadable")
    print(f"lost signal: mean {lost.mean():.3%}  median {np.median(lost):.3%}  max {lost.max():.3%} "
          f"({rows[int(lost.argmax())]['file']})")
    print(f"files losing > {a.limit:.0%}: {len(over)}" + (f"  {over}" if over else "")
          + f"; > 1%: {int((lost > 0.01).sum())}")
    print(f"mask area / frame: mean {np.mean([r['mask'] for r in rows]):.1%}  min {min(r['mask'] for r in rows):.1%}; "
          f"box area / frame: mean {np.mean([r['box'] for r in rows]):.1%}  min {min(r['box'] for r in rows):.1%}")
    shapes = {s: sum(r["shape"] == s for r in rows) for s in ("convex", "linear", "full")}
    methods: dict[str, int] = {}
    for r in rows:
        methods[r["method"]] = methods.get(r["method"], 0) + 1
    print(f"shapes: {shapes}  methods: {methods}")
    print(f"detection time per file: mean {1000 * times.mean():.1f} ms  max {1000 * times.max():.1f} ms; "
          f"per frame: {1000 * times.sum() / sum(r['n_frames'] for r in rows):.2f} ms")
    screen_bad = []
    if a.screen:
        sl = np.array([r["screen_lost"] for r in rows])
        ov = np.array([r["overlay_in"] for r in rows])
        screen_bad = [r["file"] for r in rows if r["screen_lost"] > a.limit or r["overlay_in"] > 0]
        print(f"on a synthetic screen: lost signal mean {sl.mean():.3%}  max {sl.max():.3%}; files losing > "
              f"{a.limit:.0%}: {int((sl > a.limit).sum())}; files with overlay pixels inside: {int((ov > 0).sum())} "
              f"(max {int(ov.max())} px); time mean {1000 * np.mean([r['screen_time_s'] for r in rows]):.1f} ms")
        if screen_bad:
            print(f"  screen failures: {screen_bad}")
    for f in failed:
        print(f"unreadable: {f}")
    if a.montage and sheets:
        worst = sorted(sheets, key=lambda s: -s[0])[: a.worst]
        cols = 2
        tiles = [s[2] for s in worst]
        while len(tiles) % cols:
            tiles.append(np.zeros_like(tiles[0]))
        sheet = np.concatenate([np.concatenate(tiles[i:i + cols], axis=1) for i in range(0, len(tiles), cols)])
        cv2.imwrite(str(a.montage / "_worst.png"), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        print(f"montages: {a.montage}/ (worst files: {a.montage}/_worst.png)")
    return 1 if over or screen_bad else 0


if __name__ == "__main__":
    sys.exit(main())

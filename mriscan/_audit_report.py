"""Markdown page and figures of ``mriscan.audit`` (matplotlib, Agg)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

_STATUS = {0: "clean", 3: "leakage", 4: "label conflicts", 7: "leakage and label conflicts"}
_HIST_FEATURES = ("width", "height", "file_size", "jpeg_quality", "intensity_mean", "border_mean")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "set"


def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path.name


def save_pairs(a, b, pairs, path: Path, title: str) -> str | None:
    """Pairs (i in a, j in b, corr, kind) drawn side by side, one row per pair."""
    if not pairs:
        return None
    n = len(pairs)
    fig, axes = plt.subplots(n, 2, figsize=(4.2, 2.1 * n + 0.4), squeeze=False)
    for row, (i, j, c, kind) in enumerate(pairs):
        for col, (s, k) in enumerate(((a, i), (b, j))):
            ax = axes[row, col]
            ax.imshow(s.thumbs[k], cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"{s.sources[k]}"[-34:], fontsize=6)
        axes[row, 0].set_ylabel(f"r={c:.4f}\n{kind}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def save_metadata_histograms(aset, path: Path) -> str | None:
    """Histograms of a few metadata features per class, plus colour mode counts."""
    feats = [f for f in _HIST_FEATURES if f in aset.meta and np.isfinite(aset.meta[f]).any()]
    has_mode = "mode" in aset.categorical
    n = len(feats) + has_mode
    if not n:
        return None
    cols = 3
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, f in zip(axes.flat, feats, strict=False):
        v = aset.meta[f]
        finite = v[np.isfinite(v)]
        bins = np.histogram_bin_edges(finite, bins=30)
        for k, name in enumerate(aset.class_names):
            x = v[(aset.labels == k) & np.isfinite(v)]
            ax.hist(x, bins=bins, alpha=0.5, label=f"{name} ({x.size})")
        ax.set_title(f, fontsize=9)
        ax.tick_params(labelsize=7)
    if has_mode:
        ax = axes.flat[len(feats)]
        modes = sorted(set(aset.categorical["mode"]))
        width = 0.8 / len(aset.class_names)
        for k, name in enumerate(aset.class_names):
            m = [
                sum(
                    1
                    for v, lab in zip(aset.categorical["mode"], aset.labels, strict=True)
                    if v == mode and lab == k
                )
                for mode in modes
            ]
            ax.bar(np.arange(len(modes)) + k * width, m, width=width, label=name)
        ax.set_xticks(np.arange(len(modes)) + 0.4 - width / 2, modes, fontsize=7)
        ax.set_title("colour mode", fontsize=9)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{aset.name}: file metadata per class", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return [*out, ""]


def _pair_rows(pairs: list[dict]) -> list[str]:
    return _table(
        ["a", "class", "b", "class", "r", "kind"],
        [
            [f"`{p['a']}`", p["a_class"], f"`{p['b']}`", p["b_class"], p["correlation"], p["kind"]]
            for p in pairs
        ],
    )


def _shortcut_lines(title: str, s: dict) -> list[str]:
    if s.get("auc") is None:
        return [f"**{title}:** AUC undefined ({s.get('reason', 'n/a')}).", ""]
    verdict = "**shortcut: yes**" if s["flagged"] else "shortcut: no"
    lines = [
        f"**{title}:** grouped {s['folds']}-fold CV ROC AUC **{s['auc']:.3f}** → {verdict} "
        f"(flag at ≥ {s['threshold']}); carried by: {', '.join(s['carriers'])}.",
        "",
    ]
    if len(s["per_class"]) > 2:
        lines += _table(
            ["class vs rest", "AUC", "carried by (single-feature AUC ≥ 0.9, else best)"],
            [[c, f"{v['auc']:.3f}", ", ".join(v["carriers"])] for c, v in s["per_class"].items()],
        )
    top = s["features"][:8]
    lines += _table(["feature (alone)", "AUC"], [[f["feature"], f"{f['auc']:.3f}"] for f in top])
    return lines


def write_markdown(report: dict[str, Any], out: Path) -> Path:
    """Write ``audit.md`` and the figures; return the markdown path."""
    t = report["threshold"]
    md = [
        "# Data audit",
        "",
        f"Signature: {report['signature']}; near-duplicate threshold **r > {t}**. "
        f"Exit status {report['exit_status']} "
        f"({_STATUS.get(report['exit_status'], 'see --help')}; {report['seconds']:.0f} s).",
        "",
    ]
    for r in report["sets"]:
        s = r["_set"]
        slug = _slug(s.name)
        md += [f"## {s.name} ({s.kind}: `{s.path}`)", ""]
        md += [
            f"{r['decoded']} slices decoded from {r['files'] - r['files_not_audited']} of "
            f"{r['files']} files; slices per class: "
            + ", ".join(f"{k} {v}" for k, v in r["classes"].items())
            + ".",
            "",
        ]
        md += [f"> note: {n}" for n in r["notes"]] + ([""] if r["notes"] else [])
        if r["skipped"]:
            md += _skipped_lines(r["skipped"])
        g = r["groups"]
        md += _table(
            ["check", "result"],
            [
                [
                    "exact duplicates (file SHA-256)",
                    f"{r['exact']['groups']} groups, {r['exact']['files']} files",
                ],
                [
                    "same pixels, different files",
                    f"{r['pixels']['groups']} groups, {r['pixels']['files']} files",
                ],
                [
                    f"near-duplicate pairs (r > {t})",
                    f"{r['near']['pairs']} pairs ({r['near']['pairs_not_byte_identical']} not "
                    f"byte-identical), {r['near']['items']} slices",
                ],
                [
                    f"borderline pairs ({r['borderline']['range'][0]} < r ≤ {t})",
                    r["borderline"]["pairs"],
                ],
                [
                    "groups (near-duplicates + patient/volume)"
                    if g.get("with_keys")
                    else "near-duplicate groups",
                    f"{g['count']} groups; sizes "
                    + ", ".join(f"{k}: {v}" for k, v in g["size_histogram"].items() if v),
                ],
                [
                    f"label conflicts (exact, same pixels or r > {r['conflict_threshold']})",
                    f"**{len(r['label_conflicts'])}**",
                ],
                [
                    f"cross-class look-alikes ({t} < r ≤ {r['conflict_threshold']})",
                    f"{r['cross_class_lookalikes']['pairs']} pairs "
                    + ", ".join(
                        f"{k}: {v}" for k, v in r["cross_class_lookalikes"]["by_classes"].items()
                    ),
                ],
                [
                    "shortcut (file metadata)",
                    _auc_cell(r["shortcut"]),
                ],
                ["shortcut (preprocessed slices)", _auc_cell(r["shortcut_preprocessed"])],
            ],
        )
        if r["label_conflicts"]:
            md += ["### Label conflicts (the same slice under two labels)", ""]
            md += _pair_rows(r["label_conflicts"][:50])
        i, j, c, bi, bj, bc = r["_pairs"]
        order = np.argsort(-c, kind="stable")[:6]
        kinds = {(p["a"], p["b"]): p["kind"] for p in r["near"]["worst"]}
        png = save_pairs(
            s,
            s,
            [
                (i[k], j[k], c[k], kinds.get((s.sources[i[k]], s.sources[j[k]]), "near"))
                for k in order
            ],
            out / f"{slug}_worst_pairs.png",
            f"{s.name}: most similar pairs",
        )
        if r["near"]["worst"]:
            md += ["### Most similar pairs", "", *_pair_rows(r["near"]["worst"])]
        if png:
            md += [f"![worst pairs]({png})", ""]
        border = np.argsort(-bc, kind="stable")[:6]
        png = save_pairs(
            s,
            s,
            [(bi[k], bj[k], bc[k], "borderline") for k in border],
            out / f"{slug}_borderline.png",
            f"{s.name}: just below r = {t}",
        )
        if png:
            md += [
                "### Borderline pairs (just below the threshold)",
                "",
                f"![borderline]({png})",
                "",
            ]
        md += ["### Shortcut risk", ""]
        md += _shortcut_lines("File metadata only", r["shortcut"])
        md += _shortcut_lines("Preprocessed-slice statistics only", r["shortcut_preprocessed"])
        if r["metadata_by_class"]:
            rows = []
            for cls, m in r["metadata_by_class"].items():
                if not m["slices"]:
                    rows.append([cls, 0, *["undefined (0 decodable files)"] + ["-"] * 6])
                    continue
                size = m["most_common_size"]
                rows.append(
                    [
                        cls,
                        m["slices"],
                        m["distinct_sizes"],
                        "-" if size is None else f"{size[0]} ({size[1]})",
                        ", ".join(f"{k} {v}" for k, v in sorted(m["mode"].items())),
                        ", ".join(f"{k} {v}" for k, v in sorted(m["format"].items())),
                        _median(m.get("file_size"), lambda v: f"{v / 1024:.0f} KiB"),
                        _median(m.get("jpeg_quality"), lambda v: f"{v:.0f}"),
                        _median(m.get("border_mean"), lambda v: f"{v:.1f}"),
                    ]
                )
            md += _table(
                [
                    "class",
                    "slices",
                    "sizes",
                    "most common size",
                    "colour modes",
                    "formats",
                    "median file",
                    "JPEG quality",
                    "border level",
                ],
                rows,
            )
            png = save_metadata_histograms(s, out / f"{slug}_metadata.png")
            if png:
                md += [f"![metadata per class]({png})", ""]
    for x in report["cross"]:
        md += [f"## Across sets: {x['a']} vs {x['b']}", ""]
        md += _table(
            ["r >", "pairs", f"{x['b']} slices with a match in {x['a']}"],
            [[k, v["pairs"], v["b_items"]] for k, v in x["levels"].items()],
        )
        md += _by_class(x)
        md += _cross_figures(x, out, _slug(f"{x['a']}_vs_{x['b']}"))
    leak = report["leakage"]
    if leak is not None:
        md += [
            f"## Leakage: train `{leak['train']}` vs test `{leak['test']}` ({leak['from']})",
            "",
            f"**{leak['leaked']} of {leak['test_items']} test slices** have an exact, "
            f"pixel-identical or near (r > {t}) duplicate in train.",
            "",
        ]
        md += _changed_lines(leak.get("changed_since_split"))
        md += _same_patient_lines(leak["same_patient"])
        md += _table(
            ["r >", "pairs", "test slices with a match"],
            [[k, v["pairs"], v["b_items"]] for k, v in leak["levels"].items()],
        )
        md += _by_class(leak)
        md += _cross_figures(leak, out, "leakage")
    path = out / "audit.md"
    tmp = out / ".audit.md.tmp"
    tmp.write_text("\n".join(md) + "\n")
    tmp.replace(path)
    return path


_MAX_LISTED = 50


def _median(stat: dict | None, fmt) -> str:
    """A per-class ``{"median": ...}`` cell, or "-" when the feature is unknown for the class."""
    return "-" if stat is None else fmt(stat["median"])


def _skipped_lines(skipped: list[dict]) -> list[str]:
    """The files (and folders) not audited, each with the reason (the first ``_MAX_LISTED``)."""
    lines = [f"Not audited: {len(skipped)} files or folders:", ""]
    lines += [f"- `{s['source']}`: {s['reason']}" for s in skipped[:_MAX_LISTED]]
    if len(skipped) > _MAX_LISTED:
        lines.append(f"- … and {len(skipped) - _MAX_LISTED} more (all in audit.json)")
    return [*lines, ""]


def _changed_lines(changed: dict | None) -> list[str]:
    """Split items the store retired since the split was made (``--split`` only)."""
    if not changed or not (changed["train"] or changed["test"]):
        return []
    lines = [
        "**Changed since the split was made:** "
        + ", ".join(
            f"{len(changed[k])} of {changed['split_items'][s]} {s} items"
            for k, s in (("train", "train+val"), ("test", "test"))
            if changed[k]
        )
        + ". They are not scored as they were: leakage is computed on the files' current "
        "content (listed as *now*; none when the file is gone).",
        "",
    ]
    rows = [
        [side, f"`{c['source']}`", c["change"], ", ".join(f"`{n}`" for n in c["now"]) or "-"]
        for side in ("train", "test")
        for c in changed[side]
    ]
    lines += _table(["side", "split item", "change", "now"], rows[:_MAX_LISTED])
    if len(rows) > _MAX_LISTED:
        lines += [f"… and {len(rows) - _MAX_LISTED} more (all in audit.json)", ""]
    return lines


def _auc_cell(s: dict) -> str:
    if s.get("auc") is None:
        return "AUC undefined (see below)"
    flag = "**yes**" if s["flagged"] else "no"
    return f"AUC {s['auc']:.3f} → {flag} ({', '.join(s['carriers'][:3])})"


def _same_patient_lines(same: dict) -> list[str]:
    """The leakage section's patients on both sides (``mriscan.audit.check_patients``), by
    pseudonym (keyed hash), as Markdown lines."""
    if not same["checked"]:
        return [f"Patients on both sides: not checked: {same['why_not']}.", ""]
    if not same["patients"]:
        return [
            f"No patient has slices on both sides ({same['test_patients']} patients in test, "
            f"{same['train_patients']} in train, by keyed Patient ID hash).",
            "",
        ]
    md = [
        f"**{same['patients']} patients have slices on both sides** (same keyed Patient ID "
        f"hash): {same['test_slices']} test slices, {same['train_slices']} train slices.",
        "",
    ]
    md += _table(
        ["patient (keyed hash)", "test slices", "train slices", "test classes"],
        [
            [
                f"`{p['patient']}`",
                p["test_slices"],
                p["train_slices"],
                ", ".join(f"{c} {n}" for c, n in p["test_classes"].items()),
            ]
            for p in same["shared"]
        ],
    )
    return md


def _by_class(x: dict) -> list[str]:
    rows = [
        [c, v["items"], v["exact"], v["pixels"], v["near"], v["leaked"], f"{100 * v['share']:.1f}%"]
        for c, v in x["by_class"].items()
    ]
    return _table(["class", "slices", "exact", "same pixels", "near", "matched", "share"], rows)


def _cross_figures(x: dict, out: Path, slug: str) -> list[str]:
    a, b = x["_a"], x["_b"]
    md = []
    if x["worst"]:
        md += ["Worst pairs:", "", *_pair_rows(x["worst"])]
    m = x["_matched"]
    keys = sorted(m, key=lambda k: (-m[k][2], k))[:6]
    png = save_pairs(
        a,
        b,
        [(m[k][1], k, m[k][2], m[k][0]) for k in keys],
        out / f"{slug}_worst_pairs.png",
        f"{a.name} (left) vs {b.name} (right)",
    )
    if png:
        md += [f"![worst pairs]({png})", ""]
    bi, bj, bc = x["_borderline"]
    png = save_pairs(
        a,
        b,
        [(bi[k], bj[k], bc[k], "borderline") for k in range(min(6, len(bi)))],
        out / f"{slug}_borderline.png",
        f"just below r = {x['threshold']}",
    )
    if png:
        md += ["Borderline pairs:", "", f"![borderline]({png})", ""]
    return md

"""PNG charts of result rows (``results.json``: method, lambda, form, task, n, p, hs, fa, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from asft.fileio import atomic_path
from asft.methods import method_of
from asft.report.tables import family, fine_tuned, label


def bar_chart(rows: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Side-by-side bars of HS and FA per setting (error bars = std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [label(r) for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.2))
    w = 0.38

    def err(key):  # no error bars for single-seed results
        values = [r.get(f"{key}_std") or 0 for r in rows]
        return values if any(values) else None

    ax.bar([i - w / 2 for i in x], [r["hs"] for r in rows], w, yerr=err("hs"),
           label="harmful score HS % (lower is better)", color="#c0392b", capsize=3)
    ax.bar([i + w / 2 for i in x], [r["fa"] or 0 for r in rows], w, yerr=err("fa"),
           label="fine-tuning accuracy FA % (higher is better)", color="#2e86c1", capsize=3)
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, rotation=25, ha="right", fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("%")
    ax.legend(fontsize=8, loc="upper left")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


OFFSETS = [(4, 4), (4, -4), (-4, 4), (-4, -4), (10, 12), (10, -12), (-10, 12), (-10, -12),
           (16, 0), (-16, 0), (0, 18), (0, -18), (22, 22), (22, -22), (-22, 22), (-22, -22)]  # points


def zoomed(lows: Sequence[float], highs: Sequence[float], pad: float = 0.08, floor: float = 2.0) -> tuple[float, float]:
    """Axis limits around the data (values minus / plus their error bars), padded by ``pad`` of the span
    (at least ``floor`` points) and kept within -2..102: the points spread over the plot instead of
    sharing one corner of a fixed 0-100 square."""
    lo, hi = min(lows), max(highs)
    margin = max(floor, pad * (hi - lo))
    return max(-2.0, lo - margin), min(102.0, hi + margin)


def _overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def place_labels(ax, items: Sequence[tuple], fontsize: int = 7) -> list:
    """Annotate each ``(text, (x, y)[, colour])`` at the first offset (``OFFSETS``) where its box overlaps no label
    placed before it and stays inside the figure; failing that, where it overlaps least. Call it once
    the layout is final (after ``tight_layout``). Returns the labels' boxes (display coordinates)."""
    from matplotlib.text import Text

    from matplotlib.transforms import Bbox

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    frame = fig.bbox
    placed: list = []
    marks = [Bbox.from_extents(x - 3, y - 3, x + 3, y + 3)  # each labelled point's marker: not covered either
             for x, y in (ax.transData.transform(xy) for _, xy, *_ in items)]
    for text, xy, *colour in items:
        best = None
        colour = colour[0] if colour else "black"
        for dx, dy in OFFSETS:
            far = abs(dx) > 4 or abs(dy) > 4  # a label moved away from its point gets a thin leader line
            ann = ax.annotate(text, xy, xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                              color=colour, ha="left" if dx >= 0 else "right", va="bottom" if dy >= 0 else "top",
                              arrowprops={"arrowstyle": "-", "color": colour, "lw": 0.5, "alpha": 0.6} if far else None)
            ann.update_positions(renderer)
            box = Text.get_window_extent(ann, renderer)  # the text's own box (an Annotation's adds its line)
            outside = box.x0 < frame.x0 or box.x1 > frame.x1 or box.y0 < frame.y0 or box.y1 > frame.y1
            cost = sum(_overlap(box, b) for b in placed) + 0.5 * sum(_overlap(box, m) for m in marks) \
                + (1e9 if outside else 0.0)
            if best is None or cost < best[2]:
                if best is not None:
                    best[0].remove()
                best = (ann, box, cost)
            else:
                ann.remove()
            if cost == 0:
                break
        placed.append(best[1])
    return placed


def tradeoff_chart(rows: Sequence[dict], path: str | Path, title: str = "", layout: dict | None = None) -> Path:
    """HS against FA, one line per method family through its lambdas (error bars = std), the axes zoomed
    to the points and each lambda labelled where it overlaps no other label. ``layout``: a dict that
    receives the axes' limits and the labels' boxes (for checks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.4, 4.8))
    families: dict[str, list[dict]] = {}
    for r in rows:
        families.setdefault(family(r), []).append(r)
    palette = plt.get_cmap("tab20")  # one colour per line: the default cycle repeats after 10
    labels: list[tuple[str, tuple[float, float]]] = []
    for i, (fam, rs) in enumerate(families.items()):
        method = method_of(rs[0])
        rs = sorted(rs, key=lambda r: r["lambda"])
        ax.errorbar([r["fa"] for r in rs], [r["hs"] for r in rs], xerr=[r.get("fa_std") or 0 for r in rs],
                    yerr=[r.get("hs_std") or 0 for r in rs], marker=method.marker if method is not None else "^", capsize=2,
                    color=palette((2 * i) % 20 + (i // 10) % 2),
                    linestyle="-" if len(rs) > 1 else "none", label=label(rs[0]) if len(rs) == 1 else fam)
        if len(rs) > 1:
            labels += [(f"{r['lambda']:g}", (r["fa"], r["hs"]), palette((2 * i) % 20 + (i // 10) % 2)) for r in rs]
    shown = [r for r in rows if r.get("fa") is not None]
    ax.set_xlim(*zoomed([r["fa"] - (r.get("fa_std") or 0) for r in shown], [r["fa"] + (r.get("fa_std") or 0) for r in shown]))
    ax.set_ylim(*zoomed([r["hs"] - (r.get("hs_std") or 0) for r in shown], [r["hs"] + (r.get("hs_std") or 0) for r in shown]))
    ax.set_xlabel("fine-tuning accuracy FA % (higher is better)")
    ax.set_ylabel("harmful score HS % (lower is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the plot, not over points
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    boxes = place_labels(ax, labels)  # after the layout: the boxes are where they are drawn
    if layout is not None:
        layout.update(xlim=ax.get_xlim(), ylim=ax.get_ylim(), labels=boxes)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def landscape_plots(doc: dict, out_dir: str | Path) -> list[Path]:
    """``landscape_1d.png`` (HS, and FA when scored, against alpha per direction) and, for a 2D scan,
    ``landscape_2d.png`` (HS contour over the align x random plane, adapters marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    paths = []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, d in doc["one_d"].items():
        ax.plot(d["alpha"], d["hs"], marker="o", ms=3, label=f"HS along {name}")
        if any(v is not None for v in d["fa"]):
            ax.plot(d["alpha"], d["fa"], linestyle="--", label=f"FA along {name}")
    ax.set_xlabel("alpha (step along the direction; 0 = the model)")
    ax.set_ylabel("%")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"safety landscape ({doc['norm']} normalisation)", fontsize=10)
    fig.tight_layout()
    paths.append(_save(fig, out_dir / "landscape_1d.png"))
    if "two_d" in doc:
        fig, ax = plt.subplots(figsize=(6.0, 5.0))
        t = doc["two_d"]
        cs = ax.contourf(t["alpha"], t["beta"], t["hs"], levels=[10 * i for i in range(11)], cmap="RdYlGn_r",
                         extend="neither")
        fig.colorbar(cs, ax=ax, label="harmful score HS %")
        names = []
        for m in doc.get("marks", []):
            ax.plot(m["alpha"], m["beta"], "k*", ms=10)
            name = Path(m["adapter"]).name
            name = Path(m["adapter"]).parent.name if name == "adapter" else name  # runs/<run>/adapter
            names.append((name, (m["alpha"], m["beta"])))
        ax.set_xlabel("alpha: alignment direction")
        ax.set_ylabel("beta: random direction orthogonal to it")
        fig.tight_layout()
        place_labels(ax, names)  # adapters close together: labels side by side, not on top of each other
        paths.append(_save(fig, out_dir / "landscape_2d.png"))
    return paths


def sweep_chart(rows: Sequence[dict], task: str, by: str, path: str | Path, title: str = "") -> Path | None:
    """HS and FA of each method against ``by`` (``p`` or ``n``) for one task, side by side
    (error bars = std over seeds). None when the rows hold fewer than two values of ``by``."""
    cell = [r for r in rows if r["task"] == task and fine_tuned(r) and r.get(by) is not None]
    values = sorted({r[by] for r in cell})
    if len(values) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from asft.report.tables import sort_key

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    groups: dict[str, list[dict]] = {}
    for r in sorted(cell, key=sort_key):
        groups.setdefault(r["group"], []).append(r)
    for ax, key, name in ((axes[0], "hs", "harmful score HS % (lower is better)"),
                          (axes[1], "fa", "fine-tuning accuracy FA % (higher is better)")):
        for g, rs in groups.items():
            rs = sorted(rs, key=lambda r: r[by])
            ax.errorbar([r[by] for r in rs], [r[key] if r[key] is not None else float("nan") for r in rs],
                        yerr=[r.get(f"{key}_std") or 0 for r in rs], marker="o", capsize=2, label=label(rs[0]))
        ax.set_xlabel({"p": "harmful ratio p", "n": "sample size N"}.get(by, by))
        ax.set_ylabel(name)
        shown = [r for r in cell if r[key] is not None]
        if shown:
            ax.set_ylim(*zoomed([r[key] - (r.get(f"{key}_std") or 0) for r in shown],
                                [r[key] + (r.get(f"{key}_std") or 0) for r in shown]))
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(title or f"{task}: HS and FA against {by}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)

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


def tradeoff_chart(rows: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """HS against FA, one line per method family through its lambdas (error bars = std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.4, 4.8))
    families: dict[str, list[dict]] = {}
    for r in rows:
        families.setdefault(family(r), []).append(r)
    palette = plt.get_cmap("tab20")  # one colour per line: the default cycle repeats after 10
    for i, (fam, rs) in enumerate(families.items()):
        method = method_of(rs[0])
        rs = sorted(rs, key=lambda r: r["lambda"])
        ax.errorbar([r["fa"] for r in rs], [r["hs"] for r in rs], xerr=[r.get("fa_std") or 0 for r in rs],
                    yerr=[r.get("hs_std") or 0 for r in rs], marker=method.marker if method is not None else "^", capsize=2,
                    color=palette((2 * i) % 20 + (i // 10) % 2),
                    linestyle="-" if len(rs) > 1 else "none", label=label(rs[0]) if len(rs) == 1 else fam)
        if len(rs) > 1:
            for r in rs:
                ax.annotate(f"{r['lambda']:g}", (r["fa"], r["hs"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
    ax.set_xlabel("fine-tuning accuracy FA % (higher is better)")
    ax.set_ylabel("harmful score HS % (lower is better)")
    ax.set_xlim(-2, 102)
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the plot, not over points
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
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
        for m in doc.get("marks", []):
            ax.plot(m["alpha"], m["beta"], "k*", ms=10)
            name = Path(m["adapter"]).name
            name = Path(m["adapter"]).parent.name if name == "adapter" else name  # runs/<run>/adapter
            ax.annotate(name, (m["alpha"], m["beta"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel("alpha: alignment direction")
        ax.set_ylabel("beta: random direction orthogonal to it")
        fig.tight_layout()
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
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(title or f"{task}: HS and FA against {by}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)

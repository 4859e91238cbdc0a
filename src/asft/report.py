"""Tables and charts from result rows (``results.json``: method, lambda, form, task, hs, fa, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from asft.fileio import atomic_path


def label(row: dict) -> str:
    """Human name of a row's setting, e.g. ``asft (reference C) λ=30``."""
    m = row["method"]
    if m == "asft":
        return f"{_family(row)} λ={row['lambda']:g}"
    if m == "l2":
        return f"l2 λ={row['lambda']:g}"
    return {"safelora": "Safe LoRA", "sft": "SFT", "aligned": "aligned (no fine-tuning)", "safeinstr": "SafeInstr",
            "bea": "BEA"}.get(m, m)


def _family(row: dict) -> str:
    """``asft (reference C)`` or ``asft (projector, k=8)``-style name of an AsFT row's form."""
    form = row.get("form") or "reference"
    return "asft (reference C)" if form == "reference" else f"asft ({form})"


def _pm(row: dict, key: str) -> str:
    v = row.get(key)
    if v is None:
        return "-"
    std = row.get(f"{key}_std")
    return f"{v:.1f} ± {std:.1f}" if std else f"{v:.1f}"


def markdown_table(rows: Sequence[dict]) -> str:
    """| setting | HS % | FA % | seeds | max eig of C |, lower HS and higher FA are better."""
    lines = ["| setting | HS % (lower is better) | FA % (higher is better) | seeds | max eig(C) |",
             "|---|---|---|---|---|"]
    for r in rows:
        eig = r.get("c_max_eig")
        seeds = r.get("seeds", [r.get("seed")] if r.get("seed") is not None else [])
        lines.append(f"| {label(r)} | {_pm(r, 'hs')} | {_pm(r, 'fa')} | {len(seeds) or '-'} | "
                     f"{'-' if eig is None else f'{eig:.3g}'} |")
    return "\n".join(lines) + "\n"


FA_TOLERANCE = 2.0  # accuracy points that count as "equal accuracy" when the seeds agree closely


def _beats(a: dict, b: dict) -> bool:
    """``a`` is safer than ``b`` beyond the seed spread (HS lower by more than both stds together)
    at equal accuracy (FA not lower by more than both stds together, or FA_TOLERANCE points)."""
    hs_gap = (a.get("hs_std") or 0) + (b.get("hs_std") or 0)
    fa_gap = max((a.get("fa_std") or 0) + (b.get("fa_std") or 0), FA_TOLERANCE)
    return a["hs"] < b["hs"] - hs_gap and a["fa"] >= b["fa"] - fa_gap


def verdict(rows: Sequence[dict]) -> list[str]:
    """Plain sentences: at each lambda, does AsFT (each form) beat the l2 control, is it beaten, or
    are they within the seed spread? The l2 control is what tells whether the anchor matters."""
    l2 = {r["lambda"]: r for r in rows if r["method"] == "l2"}
    lines = []
    for r in sorted((r for r in rows if r["method"] == "asft"), key=lambda r: (r.get("form") or "", r["lambda"])):
        c = l2.get(r["lambda"])
        if c is None:
            continue
        if _beats(r, c):
            word = "AsFT WINS: safer at equal accuracy, beyond the seed spread"
        elif _beats(c, r):
            word = "l2 wins: the control is safer at equal accuracy, beyond the seed spread"
        else:
            word = "no difference beyond the seed spread"
        lines.append(f"{label(r)}: HS {_pm(r, 'hs')} FA {_pm(r, 'fa')} vs l2 HS {_pm(c, 'hs')} "
                     f"FA {_pm(c, 'fa')}: {word}")
    return lines


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

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    families: dict[str, list[dict]] = {}
    for r in rows:
        fam = _family(r) if r["method"] == "asft" else r["method"]
        families.setdefault(fam, []).append(r)
    markers = {"sft": "s", "aligned": "*", "safelora": "D", "l2": "o"}
    for fam, rs in families.items():
        rs = sorted(rs, key=lambda r: r["lambda"])
        ax.errorbar([r["fa"] for r in rs], [r["hs"] for r in rs], xerr=[r.get("fa_std") or 0 for r in rs],
                    yerr=[r.get("hs_std") or 0 for r in rs], marker=markers.get(fam, "^"), capsize=2,
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
    ax.legend(fontsize=8)
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

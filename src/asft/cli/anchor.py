"""`asft anchor`: compute the alignment direction V = W_aligned - W_base, or inspect an anchor file."""

from __future__ import annotations

import argparse

from asft.cli import at_least

from asft.errors import AsftError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "anchor",
        help="compute the anchor V = W_aligned - W_base (or --inspect one)",
        description=(
            "Compute the alignment direction V = W_aligned - W_base for each target weight matrix, "
            "streaming the two checkpoints tensor by tensor, and save it as a safetensors file. "
            "With --inspect FILE, print per-module statistics of an existing anchor."
        ),
        epilog="example: asft anchor --base models/llama-2-7b --aligned models/llama-2-7b-chat --out anchor.safetensors\n"
               "         asft anchor --inspect anchor.safetensors")
    p.add_argument("--base", metavar="DIR", help="base (pre-alignment) model folder, or a LoRA adapter folder "
                   "trained from --aligned on harmful data (no base published: V = -s B A, the harmful "
                   "fine-tune back to the aligned model)")
    p.add_argument("--aligned", metavar="DIR", help="aligned (safety-tuned) model folder")
    p.add_argument("--out", metavar="FILE", help="anchor file to write (.safetensors)")
    p.add_argument("--targets", metavar="LIST", help="comma-separated module-name suffixes (default: q_proj,v_proj)")
    p.add_argument("--target-regex", metavar="RE", help="regex fully matching module names, instead of --targets")
    p.add_argument("--rank", type=int, metavar="K", help="store a rank-K truncated SVD of V instead of V itself")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--inspect", metavar="FILE", help="print statistics of an anchor file and exit")
    p.add_argument("--top", type=at_least(1), default=5, help="--inspect: singular values shown per module (default 5)")
    p.add_argument("-k", type=at_least(1), default=8, help="--inspect: energy reported for the top k directions (default 8)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.inspect:
        if args.base or args.aligned or args.out:
            raise AsftError("--inspect takes only an anchor file (drop --base/--aligned/--out)")
        return _inspect(args)
    missing = [f"--{n}" for n in ("base", "aligned", "out") if not getattr(args, n)]
    if missing:
        raise AsftError(f"missing {', '.join(missing)} (or use --inspect FILE)")
    if args.targets and args.target_regex:
        raise AsftError("give --targets or --target-regex, not both")
    from asft.models.anchor import DEFAULT_TARGETS, build_anchor

    targets = f"re:{args.target_regex}" if args.target_regex else (args.targets or ",".join(DEFAULT_TARGETS))
    res = build_anchor(
        args.base, args.aligned, targets=targets, rank=args.rank, out=args.out,
        overwrite=args.overwrite, progress=True,
    )
    size_mb = res.path.stat().st_size / 2**20
    kind = "exact" if args.rank is None else f"rank {args.rank}"
    print(f"wrote {res.path}: {len(res.modules)} modules, {kind}, {size_mb:.1f} MiB "
          f"(see `asft anchor --inspect {res.path}`)")
    return 0


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _inspect(args: argparse.Namespace) -> int:
    from asft.cli import console as make_console
    from rich.table import Table

    from asft.models.anchor import NEAR_ZERO_EIG, inspect_anchor, load_anchor

    anchor = load_anchor(args.inspect)
    rows = inspect_anchor(anchor, top=args.top, k=args.k)
    md = anchor.metadata
    table = Table(title=f"{args.inspect}  (targets {md.get('targets')}, rank {md.get('rank')})")
    # Module names are the point of the table: never truncate them, let the numbers wrap instead.
    table.add_column("module", no_wrap=True, min_width=max((len(r["module"]) for r in rows), default=6))
    table.add_column("shape", justify="right", no_wrap=True)
    table.add_column("||V||_F", justify="right", no_wrap=True, min_width=7)
    table.add_column(f"top {args.top} singular values", justify="left", min_width=20)
    table.add_column("max eig C", justify="right", no_wrap=True, min_width=9)
    table.add_column(f"energy top {args.k}", justify="right", min_width=7)
    for r in rows:
        table.add_row(
            r["module"], "x".join(map(str, r["shape"])), _fmt(r["norm"]),
            " ".join(_fmt(s) for s in r["singular_values"]), _fmt(r["c_max_eig"]),
            f"{r['energy_top_k']:.1%}",
        )
    console = make_console()  # piped to a file: not squeezed into 80 columns
    console.print(table)
    over = [r for r in rows if r["c_max_eig"] > 1.0]
    if over:
        worst = max(r["c_max_eig"] for r in over)
        above2 = sum(r["c_max_eig"] > 2.0 for r in over)
        console.print(
            f"WARNING: the reference C = V V^T / ||V||_F has eigenvalues above 1 in {len(over)} of "
            f"{len(rows)} modules (largest {worst:.3g}). The form is not scale-invariant: there I - C is "
            "not a projector complement" + (f", and in {above2} modules (eigenvalue > 2) updates along V "
            "are penalised MORE than by plain L2" if above2 else "") + ". The projector form "
            "(--form projector) does not depend on the scale of V.", highlight=False)
    near = [r for r in rows if r["verdict"]]
    if near:
        worst = max(r["c_max_eig"] for r in near)
        console.print(
            f"The reference C = V V^T / ||V||_F is near zero in {len(near)} of {len(rows)} modules "
            f"(largest eigenvalue <= {worst:.3g} < {NEAR_ZERO_EIG}): there the reference-form penalty "
            f"||(I-C)BA||^2 is at least {(1 - worst) ** 2:.2f} ||BA||^2, i.e. close to a plain L2 "
            "penalty on BA. The projector form (C = U_k U_k^T) keeps the alignment directions exactly.",
            highlight=False,
        )
    return 0

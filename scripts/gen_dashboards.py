#!/usr/bin/env python3
"""Generate the Grafana dashboards from their source in mfu_dashboards/ (grafana-foundation-sdk).

Source (edit this):
    mfu_dashboards/*.py                   one module per dashboard, shared panel shapes in common.py

Generated (never edit by hand; tests/test_dashboards.py fails when they drift):
    dashboards/*.json                     the dashboards, as Grafana imports them
    deploy/kubernetes/dashboards/*        their Kubernetes copies and kustomization
                                          (scripts/gen_prometheusrule.py's render_dashboards)

Usage:
    scripts/gen_dashboards.py             rewrite the generated files
    scripts/gen_dashboards.py --check     exit 1 if any generated file is out of date
    scripts/gen_dashboards.py --root DIR  write (or check) DIR/dashboards/... instead of the repository's
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

import gen_prometheusrule  # noqa: E402

from mfu_dashboards import DASHBOARDS  # noqa: E402
from mfu_dashboards.board import render  # noqa: E402

DASHBOARDS_DIR = Path("dashboards")


def render_all(repo: Path = REPO) -> dict[Path, str]:
    """Every generated file, keyed by its path relative to the repository."""
    files = {DASHBOARDS_DIR / f"{name}.json": render(build()) for name, build in DASHBOARDS.items()}
    # The Kubernetes copies, from the dashboards just rendered (not from the files on disk).
    by_name = {path.name: text for path, text in files.items()}
    k8s = gen_prometheusrule.K8S_DIR / gen_prometheusrule.GENERATED_DASHBOARDS
    for name, text in gen_prometheusrule.render_dashboards(repo, by_name).items():
        files[k8s / name] = text
    return files


def stale(repo: Path, files: dict[Path, str]) -> list[Path]:
    """Dashboard JSON files that no source produces any more."""
    return sorted(
        p.relative_to(repo)
        for p in (repo / DASHBOARDS_DIR).glob("*.json")
        if p.relative_to(repo) not in files
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when out of date")
    parser.add_argument(
        "--root",
        type=Path,
        default=REPO,
        help="where the generated files go (default: this script's repository)",
    )
    args = parser.parse_args(argv)
    root = args.root.resolve()
    files = render_all(REPO)
    if args.check:
        problems = [
            f"out of date: {rel}"
            for rel, text in files.items()
            if not (root / rel).is_file() or (root / rel).read_text(encoding="utf-8") != text
        ]
        problems += [f"stale (no source): {rel}" for rel in stale(root, files)]
        for problem in problems:
            print(f"gen_dashboards: {problem}", file=sys.stderr)
        if problems:
            print("gen_dashboards: run `python scripts/gen_dashboards.py`", file=sys.stderr)
        return 1 if problems else 0
    for rel in stale(root, files):
        (root / rel).unlink()
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Counts the structural figures of issue 22 (the redesign) over ``bptt_jax/``.

    python benchmarks/count_structure.py                       # a table
    python benchmarks/count_structure.py --json                # the same as JSON
    python benchmarks/count_structure.py --package OTHER/bptt_jax   # another checkout's

- ``precision_params`` / ``kernel_params``: functions (and methods) with a parameter of
  that name;
- ``wide_functions_outside_api``: functions outside ``bptt_jax/api/`` with more than 10
  parameters (``self`` not counted);
- ``model_branches`` / ``model_branches_outside_api``: lines that branch on the model
  type (``is_seed``, ``is_deep``, ``isinstance(..., Params | DeepParams)``);
- ``scan_steps``: the ``lax.scan`` calls whose body is a vanilla-cell forward or δ step
  (counted by the places the step's equations are written: see ``_STEP_MARKERS``);
- ``clip_delta_rescales``: the places the δ-clipping rescale is written.

The figures before and after the redesign are in ``docs/architecture.md``.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "bptt_jax"
_MODEL_BRANCH = re.compile(r"\b(is_seed|is_deep)\s*\(|isinstance\([^)]*\b(Params|DeepParams)\b")
#: The δ-clipping rescale: a norm compared with the threshold, written out.
_CLIP = re.compile(r"norm\s*>\s*(ctx\.)?clip_delta|norm\s*>\s*theta")


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    a = fn.args
    names = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    names += [p.arg for p in (a.vararg, a.kwarg) if p is not None]
    return [n for n in names if n not in ("self", "cls")]


def count(package: Path = PACKAGE) -> dict[str, int]:
    """The figures of the module docstring for the package at ``package``."""
    out = dict.fromkeys(
        ("precision_params", "kernel_params", "wide_functions_outside_api", "model_branches",
         "model_branches_outside_api", "clip_delta_rescales", "modules_over_400_lines"), 0
    )  # fmt: skip
    for path in sorted(package.rglob("*.py")):
        text = path.read_text()
        in_api = path.parent.name == "api"
        out["modules_over_400_lines"] += len(text.splitlines()) > 400
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names = _params(node)
                out["precision_params"] += "precision" in names
                out["kernel_params"] += "kernel" in names
                out["wide_functions_outside_api"] += len(names) > 10 and not in_api
        for line in text.splitlines():
            code = line.split("#", 1)[0]
            if _MODEL_BRANCH.search(code) and not code.lstrip().startswith("def "):
                out["model_branches"] += 1
                out["model_branches_outside_api"] += not in_api
            out["clip_delta_rescales"] += bool(_CLIP.search(code))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--package", type=Path, default=PACKAGE, help="the package folder")
    args = parser.parse_args()
    figures = count(args.package)
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    for name, value in figures.items():
        print(f"{name:32s} {value}")


if __name__ == "__main__":
    main()

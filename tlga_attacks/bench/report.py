"""Output files of a benchmark run: results.json, results.csv, report.md and PNG plots.

Everything here is rebuilt from the cell files and ``run.json``, so ``render_report(out)``
(``tlga-bench report DIR``) gives the same files as the run that wrote the cells. Plots use
matplotlib's Agg canvas directly and never touch pyplot's global state.
"""

import csv
import datetime
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .metrics import check_eps_ball, check_eps_zero, check_monotonic

logger = logging.getLogger(__name__)

__all__ = [
    "CSV_COLUMNS",
    "PLOT_FILES",
    "RESULTS_SCHEMA_VERSION",
    "build_checks",
    "render_markdown",
    "render_report",
    "write_outputs",
]

RESULTS_SCHEMA_VERSION = 1

CSV_COLUMNS = (
    "id",
    "kind",
    "model",
    "attack",
    "eps",
    "status",
    "num_clips",
    "clean_accuracy",
    "robust_accuracy",
    "attack_success_rate",
    "max_linf",
    "mean_l2",
    "eps_violations",
    "routing_flip_rate",
    "routing_iou",
    "weakest_expert_hit_rate",
    "lips_r",
    "forward_passes_per_clip",
    "backward_passes_per_clip",
    "seconds_per_clip",
    "gflops_per_clip",
    "steps",
    "seed",
    "config_hash",
    "reason",
)

PLOT_FILES = {
    "robust_accuracy": "robust_accuracy_vs_eps.png",
    "routing": "routing_vs_eps.png",
    "cost": "robust_accuracy_vs_passes.png",
}


# -- loading ----------------------------------------------------------------------------------


def _load_run(out: Path) -> Tuple[Dict[str, Any], List[Dict[str, Any]], List[str]]:
    run_file = out / "run.json"
    if not run_file.is_file():
        raise FileNotFoundError(
            f"{str(run_file)!r} not found: pass the output folder (--out) of a tlga-bench run."
        )
    run_info = json.loads(run_file.read_text())

    records, missing = [], []
    for identifier in run_info.get("cells", []):
        path = out / "cells" / f"{identifier}.json"
        try:
            records.append(json.loads(path.read_text()))
        except FileNotFoundError:
            missing.append(identifier)
        except json.JSONDecodeError as error:
            logger.warning("cell file %s is unreadable (%s); it is reported as missing", path, error)
            missing.append(identifier)
    return run_info, records, missing


def render_report(out) -> Dict[str, Any]:
    """Rebuild results.json, results.csv, report.md and the plots of ``out`` from its cells.

    Cells listed in ``run.json`` but not (yet) written are reported as missing.

    Raises:
        FileNotFoundError: ``out`` has no ``run.json``.

    Example:
        >>> results = render_report("tlga-bench-results")
        >>> len(results["records"])
    """
    out = Path(out)
    run_info, records, missing = _load_run(out)
    return write_outputs(out, run_info, records, missing)


# -- checks -----------------------------------------------------------------------------------


def build_checks(records: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Run every guard check on the records: eps 0, monotonicity in eps, and the eps-ball."""
    return check_eps_zero(records) + check_monotonic(records) + check_eps_ball(records)


# -- files ------------------------------------------------------------------------------------


def write_outputs(
    out: Path, run_info: Dict[str, Any], records: List[Dict[str, Any]], missing: Sequence[str] = ()
) -> Dict[str, Any]:
    """Write results.json, results.csv, report.md and the PNG plots into ``out``.

    Returns:
        The content of results.json.
    """
    from .runner import write_json_atomic

    out = Path(out)
    order = {identifier: index for index, identifier in enumerate(run_info.get("cells", []))}
    records = sorted(records, key=lambda record: order.get(record["id"], len(order)))
    results = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "generated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "library": run_info.get("library"),
        "packages": run_info.get("packages"),
        "machine": run_info.get("machine"),
        "config": run_info.get("config"),
        "datasets": run_info.get("datasets", {}),
        "records": records,
        "checks": build_checks(records),
        "missing_cells": list(missing),
    }

    write_json_atomic(out / "results.json", results)
    _write_csv(out / "results.csv", records)
    _write_plots(out, results)
    (out / "report.md").write_text(render_markdown(results))

    failed = [check for check in results["checks"] if not check["passed"]]
    if failed:
        logger.warning("%d of %d checks failed; see the Checks section of %s", len(failed), len(results["checks"]),
                       out / "report.md")
    logger.info("wrote results.json, results.csv, report.md and plots to %s", out)
    return results


def _write_csv(path: Path, records: Sequence[Dict[str, Any]]) -> None:
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for record in records:
            writer.writerow({column: record.get(column) for column in CSV_COLUMNS})


# -- markdown ---------------------------------------------------------------------------------


def _percent(value: Optional[float]) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _number(value: Optional[float], digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def _cells(records: Sequence[Dict[str, Any]], model: str) -> List[Dict[str, Any]]:
    return [record for record in records if record["model"] == model and record.get("kind", "cell") == "cell"]


def _ordered(values: Sequence[Any]) -> List[Any]:
    seen: List[Any] = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines + [""]


def _status_text(record: Optional[Dict[str, Any]], value: str) -> str:
    if record is None:
        return "missing"
    if record["status"] == "not_applicable":
        return "n/a"
    if record["status"] == "error":
        return "error"
    return value


def _model_names(results: Dict[str, Any]) -> List[str]:
    return _ordered(list(results.get("datasets", {})) + [record["model"] for record in results["records"]])


def _setup_section(results: Dict[str, Any]) -> List[str]:
    config = results.get("config") or {}
    library = results.get("library") or {}
    packages = results.get("packages") or {}
    machine = results.get("machine") or {}
    lines = [
        "# tlga-bench report",
        "",
        f"tlga-attacks {library.get('version')}, torch {packages.get('torch')}, torchattacks "
        f"{packages.get('torchattacks')}, ART {packages.get('adversarial-robustness-toolbox')}. "
        f"Machine: {machine.get('platform')}, {machine.get('cpu_count')} CPUs, device {machine.get('device')}, "
        f"{machine.get('world_size')} process(es).",
        "",
        f"Attacks run {config.get('steps')} steps on batches of {config.get('batch_size')} clips with base seed "
        f"{config.get('seed')}. Budgets eps are in units of 1/255. Accuracies and rates are in percent; "
        "n/a marks an attack that does not apply (a router attack on a model without a router).",
        "",
        "## Models and data",
        "",
    ]
    rows = []
    for model, info in results.get("datasets", {}).items():
        shape = "x".join(str(size) for size in info.get("clip_shape", []))
        rows.append([
            model,
            f"{info.get('data')} ({info.get('split') or 'all'})",
            str(info.get("clips")),
            shape,
            "yes" if info.get("has_router") else "no",
            _number(info.get("gflops_per_clip")),
            str(len(info.get("skipped", []))),
        ])
    lines += _table(["model", "data (split)", "clips", "clip C x T x H x W", "router", "GFLOPs per clip",
                     "skipped videos"], rows)
    return lines


def _accuracy_section(results: Dict[str, Any]) -> List[str]:
    lines = ["## Robust accuracy (%)", ""]
    for model in _model_names(results):
        cells = _cells(results["records"], model)
        if not cells:
            continue
        budgets = sorted({record["eps"] for record in cells})
        by_key = {(record["attack"], record["eps"]): record for record in cells}
        clean = next((record["clean_accuracy"] for record in cells if record["status"] == "ok"), None)
        rows = []
        for attack in _ordered([record["attack"] for record in cells]):
            row = [attack]
            for eps in budgets:
                record = by_key.get((attack, eps))
                row.append(_status_text(record, _percent(record and record.get("robust_accuracy"))))
            rows.append(row)
        lines += [f"### {model}", "", f"Clean accuracy: {_percent(clean)}%.", ""]
        lines += _table(["attack"] + [f"eps {eps:g}" for eps in budgets], rows)
    return lines


def _details_section(results: Dict[str, Any]) -> List[str]:
    lines = [
        "## Perturbation and routing",
        "",
        "Success: attack success rate on the clips classified correctly without attack. L-inf and L2 are "
        "perturbation norms (L-inf in units of 1/255). Flip: share of routing units whose top-1 expert "
        "changes. IoU: overlap of the clean and adversarial top-k expert sets. Weakest: share of units routed "
        "to the expert with the lowest clean router logit. Lips-R: router Lipschitz ratio Lip(R) at the cell's "
        "adversarial example (at the tla-r cells: at the TLA-R example).",
        "",
    ]
    for model in _model_names(results):
        cells = [record for record in _cells(results["records"], model) if record["status"] == "ok"]
        if not cells:
            continue
        rows = [
            [
                record["attack"],
                f"{record['eps']:g}",
                _percent(record["attack_success_rate"]),
                f"{255 * record['max_linf']:.2f}",
                _number(record["mean_l2"]),
                _percent(record["routing_flip_rate"]),
                _number(record["routing_iou"]),
                _percent(record["weakest_expert_hit_rate"]),
                _number(record["lips_r"]),
            ]
            for record in cells
        ]
        lines += [f"### {model}", ""]
        lines += _table(["attack", "eps", "success", "max L-inf", "mean L2", "flip", "IoU", "weakest", "Lips-R"], rows)
    return lines


def _cost_section(results: Dict[str, Any]) -> List[str]:
    lines = [
        "## Cost",
        "",
        "Forward and backward passes of the model per clip (the attack's own accounting) and wall seconds "
        "per clip, averaged over the budgets; GFLOPs of one forward pass per clip.",
        "",
    ]
    for model in _model_names(results):
        cells = [record for record in _cells(results["records"], model) if record["status"] == "ok"]
        if not cells:
            continue
        rows = []
        for attack in _ordered([record["attack"] for record in cells]):
            group = [record for record in cells if record["attack"] == attack]
            rows.append([
                attack,
                _number(_mean([record["forward_passes_per_clip"] for record in group])),
                _number(_mean([record["backward_passes_per_clip"] for record in group])),
                _number(_mean([record["seconds_per_clip"] for record in group])),
                _number(group[0].get("gflops_per_clip")),
            ])
        lines += [f"### {model}", ""]
        lines += _table(["attack", "forward per clip", "backward per clip", "seconds per clip", "GFLOPs per clip"],
                        rows)
    return lines


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    present = [value for value in values if value is not None]
    return sum(present) / len(present) if present else None


def _checks_section(results: Dict[str, Any]) -> List[str]:
    checks = results["checks"]
    titles = {
        "eps0": "Robust accuracy at eps 0 equals clean accuracy",
        "monotonic": "Robust accuracy never rises with eps",
        "eps_ball": "Every adversarial example lies in its eps-ball",
    }
    lines = ["## Checks", ""]
    for kind, title in titles.items():
        group = [check for check in checks if check["check"] == kind]
        passed = sum(check["passed"] for check in group)
        verdict = "PASS" if passed == len(group) else "FAIL"
        lines += [f"### {title}: {verdict} ({passed} of {len(group)})", ""]

        # The eps-ball check has one row per cell; only its failures are listed.
        shown = group if kind != "eps_ball" else [check for check in group if not check["passed"]]
        rows = [
            [check["model"], check["attack"] + (f" eps {check['eps']:g}" if "eps" in check else ""),
             "pass" if check["passed"] else "FAIL", check["detail"]]
            for check in shown
        ]
        if rows:
            lines += _table(["model", "attack", "result", "numbers"], rows)
    return lines


def _problems_section(results: Dict[str, Any]) -> List[str]:
    lines = []
    failed = [record for record in results["records"] if record["status"] == "error"]
    if failed or results.get("missing_cells"):
        lines += ["## Failed and missing cells", ""]
        lines += [f"- {record['id']}: {record['reason']}" for record in failed]
        lines += [f"- {identifier}: not computed yet" for identifier in results.get("missing_cells", [])]
        lines.append("")

    skipped = [(model, info.get("skipped", [])) for model, info in results.get("datasets", {}).items()]
    if any(items for _, items in skipped):
        lines += ["## Skipped videos", "", "These files could not be decoded and were left out:", ""]
        for model, items in skipped:
            lines += [f"- {model}: `{path}`: {reason}" for path, reason in items]
        lines.append("")
    return lines


def render_markdown(results: Dict[str, Any]) -> str:
    """Render the content of results.json as the markdown report."""
    lines = _setup_section(results)
    lines += _accuracy_section(results)
    lines += _details_section(results)
    lines += _cost_section(results)
    lines += _checks_section(results)
    lines += _problems_section(results)
    lines += [
        "## Plots",
        "",
        f"![Robust accuracy vs eps]({PLOT_FILES['robust_accuracy']})",
        "",
        f"![Routing flip rate and IoU vs eps]({PLOT_FILES['routing']})",
        "",
        f"![Robust accuracy vs passes]({PLOT_FILES['cost']})",
        "",
    ]
    return "\n".join(lines)


# -- plots ------------------------------------------------------------------------------------


def _save(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def _series(cells: Sequence[Dict[str, Any]], key: str) -> Dict[str, Tuple[List[float], List[float]]]:
    series: Dict[str, Tuple[List[float], List[float]]] = {}
    for record in sorted(cells, key=lambda record: record["eps"]):
        if record["status"] != "ok" or record.get(key) is None:
            continue
        xs, ys = series.setdefault(record["attack"], ([], []))
        xs.append(record["eps"])
        ys.append(100 * record[key] if key != "routing_iou" else record[key])
    return series


def _write_plots(out: Path, results: Dict[str, Any]) -> None:
    models = [model for model in _model_names(results) if _cells(results["records"], model)]
    columns = max(1, len(models))

    # Robust accuracy against eps, one panel per model.
    figure = Figure(figsize=(5 * columns, 4))
    for index, model in enumerate(models or [None]):
        axes = figure.add_subplot(1, columns, index + 1)
        series = _series(_cells(results["records"], model), "robust_accuracy")
        for attack, (xs, ys) in series.items():
            axes.plot(xs, ys, marker="o", label=attack)
        axes.set(title=str(model), xlabel="eps (1/255)", ylabel="robust accuracy (%)")
        if series:
            axes.legend(fontsize=7)
    _save(figure, out / PLOT_FILES["robust_accuracy"])

    # Routing flip rate and IoU against eps, one row per model.
    figure = Figure(figsize=(10, 4 * max(1, len(models))))
    for row, model in enumerate(models or [None]):
        cells = _cells(results["records"], model)
        for column, (key, label) in enumerate((("routing_flip_rate", "routing flip rate (%)"), ("routing_iou", "routing IoU"))):
            axes = figure.add_subplot(max(1, len(models)), 2, 2 * row + column + 1)
            series = _series(cells, key)
            for attack, (xs, ys) in series.items():
                axes.plot(xs, ys, marker="o", label=attack)
            if not series:
                axes.text(0.5, 0.5, "no router", ha="center", va="center", transform=axes.transAxes)
            axes.set(title=str(model), xlabel="eps (1/255)", ylabel=label)
            if series:
                axes.legend(fontsize=7)
    _save(figure, out / PLOT_FILES["routing"])

    # Robust accuracy against cost, one point per cell.
    figure = Figure(figsize=(5 * columns, 4))
    for index, model in enumerate(models or [None]):
        axes = figure.add_subplot(1, columns, index + 1)
        cells = [record for record in _cells(results["records"], model) if record["status"] == "ok"]
        for attack in _ordered([record["attack"] for record in cells]):
            group = [record for record in cells if record["attack"] == attack]
            axes.scatter(
                [record["forward_passes_per_clip"] + record["backward_passes_per_clip"] for record in group],
                [100 * record["robust_accuracy"] for record in group],
                label=attack,
            )
        axes.set(title=str(model), xlabel="forward + backward passes per clip", ylabel="robust accuracy (%)")
        if cells and any(record.get("robust_accuracy") is not None for record in cells):
            axes.legend(fontsize=7)
    _save(figure, out / PLOT_FILES["cost"])

"""``dyt-edge validate``: an artifact on a target runtime against the PyTorch reference, with a
verdict (exit code 1 when it fails). The library is :mod:`dyt_edge.validate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .options import (Device, FloatParts, JsonOut, check_json_out, emit_json, human_console,
                      json_stdout_guard)

CHECK_PANEL = "Thresholds (default: per precision, see docs/validate.md)"


def validate(
    artifact: Annotated[Optional[Path], typer.Argument(
        help="Artifact directory (or a model file in it). Default: the most recent export "
        "under dyt-edge-out/ that holds the model the target runs.", show_default=False)] = None,
    target: Annotated[Optional[str], typer.Option(
        "--target", "-t", show_default=False,
        help="Runtime to validate: onnxruntime | openvino | tensorrt (required); pytorch with "
        "--device cuda (PyTorch on a GPU) or --precision bf16.")] = None,
    precision: Annotated[Optional[str], typer.Option(
        "--precision", "-p", show_default=False,
        help="fp32 | fp16 | bf16 | int8. Default: what the artifact was built for, else "
        "fp32.")] = None,
    data: Annotated[Optional[str], typer.Option(
        "--data", show_default=False,
        help="Images: 'digits', an ImageFolder directory, or an .npz (images, labels). "
        "Default: digits (held-out split) for the demo model only; required otherwise.")] = None,
    samples: Annotated[int, typer.Option(
        "--samples", "-n", help="Images to validate on (a deterministic subset).")] = 512,
    batch: Annotated[Optional[int], typer.Option(
        "--batch", "-b", show_default=False,
        help="Images per inference. \\[default: 32, or the artifact's static batch]")] = None,
    device: Device = None,
    float_parts: FloatParts = None,
    json_out: JsonOut = None,
    max_diff: Annotated[Optional[float], typer.Option(
        "--max-diff", show_default=False, rich_help_panel=CHECK_PANEL,
        help="Max abs logit difference on images with no flipped gate, absolute (default at "
        "fp32: 4 x PyTorch fp32's own error vs float64, at least 1e-4).")] = None,
    min_agreement: Annotated[Optional[float], typer.Option(
        "--min-agreement", show_default=False, rich_help_panel=CHECK_PANEL,
        help="Min top-1 agreement, percent (fp32: 99.9, int8: 98).")] = None,
    max_drop: Annotated[Optional[float], typer.Option(
        "--max-drop", show_default=False, rich_help_panel=CHECK_PANEL,
        help="Max accuracy drop vs PyTorch, points (fp32: 0.1, int8: 1).")] = None,
    max_flips: Annotated[Optional[float], typer.Option(
        "--max-flips", show_default=False, rich_help_panel=CHECK_PANEL,
        help="Max flipped gate decisions, percent of all decisions (fp32: 0.1).")] = None,
) -> None:
    """Validate an artifact on a runtime against the PyTorch model it was exported from.

    Runs real images through the target and through the PyTorch model rebuilt from the
    recorded checkpoint (its sha256 checked), and reports the max / mean logit difference,
    top-1 agreement, how many gate decisions the target flipped (per dispatcher), the capacity
    overflow for capacity exports, and with labels the accuracy of both and the delta. Each
    check is listed with its threshold; the exit code is 1 when one fails.
    """
    from dyt_edge.validate import Thresholds, check_target, pick_artifact, validate_artifact

    # Flags first (cheap, one line each), before anything is loaded.
    if precision is not None:
        from dyt_edge.runtimes import canonical_precision

        precision = canonical_precision(precision)
    target_name = check_target(target, device, precision)
    from dyt_edge.runtimes import float_parts_extra

    float_parts_extra(target_name, float_parts)
    if samples <= 0:
        from dyt_edge.errors import UsageError

        raise UsageError(f"--samples must be a positive integer, got {samples}")
    if batch is not None and batch <= 0:
        from dyt_edge.errors import UsageError

        raise UsageError(f"--batch must be a positive integer, got {batch}")
    overrides = Thresholds(max_diff=max_diff, min_agreement=min_agreement,
                           max_flips=max_flips, max_drop=max_drop).checked()
    json_out = check_json_out(json_out, "validate.json")

    from rich.console import Console

    console = human_console(json_out)
    err = Console(stderr=True)
    art, picked = pick_artifact(artifact, target_name)
    if picked:
        err.print(f"using the most recent export: {art.summary()}", highlight=False)
    with json_stdout_guard(json_out), err.status(f"validating on {target_name}") as status:
        report = validate_artifact(
            art, target_name, precision=precision, data=data, samples=samples, batch=batch,
            thresholds=overrides, progress=lambda msg: status.update(f"{msg}..."),
            device=device, float_parts=float_parts)
    report.artifact["picked"] = picked
    render(report, console)
    written = emit_json(json_out, report.to_dict())
    if written is not None:
        console.print(f"wrote {written}", highlight=False)
    report.raise_if_failed()


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}%"


def render_classes(classes: Optional[dict[str, Any]], console) -> None:
    """The per-class table (all classes when few, else the worst first)."""
    if not classes or not classes.get("rows"):
        return
    from rich.table import Table

    from dyt_edge.class_names import worst_first

    rows, left = worst_first(classes["rows"])
    how = {"artifact": "the artifact's class names", "data": "the data's class names",
           "index": "class indices (no class names)"}.get(classes["names_from"], "")
    title = ("Per class" + (" (worst first)" if left else "") + f", named by {how}"
             + ("" if classes["accuracy"] else "; no accuracy: labels may not match"))
    table = Table(title=title, title_justify="left")
    for col in ("class", "images", "accuracy ref", "accuracy target", "top-1 agreement"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for r in rows:
        table.add_row(f"{r['index']} {r['name']}" if r["name"] != str(r["index"]) else r["name"],
                      str(r["images"]), _pct(r["reference_accuracy_pct"]),
                      _pct(r["target_accuracy_pct"]), _pct(r["top1_agreement_pct"]))
    console.print(table)
    if left:
        console.print(f"  ... {left} more classes (--json has every class)", highlight=False)


def render(report: Any, console) -> None:
    from rich.table import Table

    from dyt_edge.validate import format_value

    m, d, t = report.metrics, report.data, report.target
    console.print(f"[bold]artifact[/]: {report.artifact['path']}  ({report.artifact['format']}, "
                  f"{report.artifact.get('variant')}, dispatch "
                  f"{(report.artifact.get('dispatch') or {}).get('mode', '?')})",
                  highlight=False)
    console.print(f"[bold]target[/]: {t.get('target')} {report.precision} -- "
                  f"{t.get('backend', '?')}, {t.get('device', '?')}, precision in effect "
                  f"{t.get('precision_in_effect', report.precision)}"
                  + (f", gates {t['gate_path']}" if t.get("gate_path") not in (None, "f32")
                     else ""), highlight=False)
    r = report.reference
    console.print(f"[bold]reference[/]: {r.get('backend', 'PyTorch')} {r.get('precision')}, "
                  f"dispatch {r.get('dispatch')}, checkpoint {r.get('model_file')}",
                  highlight=False)
    split = f", '{d['split']}' split" if d.get("split") else ""
    skipped = f", {d['skipped']} unreadable skipped" if d.get("skipped") else ""
    labels = "labelled" if d.get("labelled") else "no labels"
    console.print(f"[bold]data[/]: {d['spec']}{split}: {d['images']} images ({labels}"
                  f"{skipped}), batch {report.batch}", highlight=False)

    metrics = Table(title="Reference vs target", title_justify="left")
    metrics.add_column("metric")
    metrics.add_column("value", justify="right")
    rows = [
        ("max abs logit diff", format_value(m["max_abs_diff"], "abs")),
        ("mean abs logit diff", format_value(m["mean_abs_diff"], "abs")),
        (f"max abs diff, no flipped gate ({m['unflipped_images']} images)",
         format_value(m["max_abs_diff_unflipped"], "abs")),
        ("logit scale (max |reference logit|)", f"{m['logit_scale']:.3g}"),
        ("top-1 agreement", f"{m['top1_agreement_pct']:.2f}% "
                            f"({m['top1_disagreements']} differ)"),
    ]
    if m["masks_compared"]:
        rows += [("gate decisions flipped", f"{m['flips']} of {m['decisions']} "
                                            f"({format_value(m['flip_pct'], '%')})"),
                 ("images with a flipped gate", str(m["images_with_flips"])),
                 ("tokens active, reference / target",
                  f"{_pct(m['reference_active_pct'])} / {_pct(m['target_active_pct'])}")]
    if m["reference_accuracy_pct"] is not None:
        rows += [("accuracy, reference / target",
                  f"{_pct(m['reference_accuracy_pct'])} / {_pct(m['target_accuracy_pct'])}"),
                 ("accuracy delta", format_value(m["accuracy_delta_points"], "points"))]
    cap = report.capacity
    if cap is not None and cap.get("overflow_images") is not None:
        rows.append((f"capacity {cap['capacity']:g} overflow (images)",
                     f"{cap['overflow_images']} ({cap['overflow_pct']:.1f}%), "
                     f"{cap['overflow_tokens']} tokens dropped"))
        if cap.get("exact_accuracy_pct") is not None:
            rows.append(("accuracy of the exact (dense) model", _pct(cap["exact_accuracy_pct"])))
    for k, v in rows:
        metrics.add_row(k, v)
    console.print(metrics)

    if report.layers:
        layers = Table(title="Dispatch agreement per dispatcher", title_justify="left")
        cols = ["dispatcher", "flips", "flip %", "images", "active ref", "active target"]
        if cap is not None:
            cols += ["slots", "overflow"]
        for c in cols:
            layers.add_column(c, justify="left" if c == "dispatcher" else "right")
        for row in report.layers:
            cells = [row["name"], str(row["flips"]), format_value(row["flip_pct"], "%"),
                     str(row["images_with_flips"]), _pct(row["reference_active_pct"]),
                     _pct(row["target_active_pct"])]
            if cap is not None:
                cells += [str(row["slots"]) if row["slots"] is not None else "-",
                          str(row["overflow_images"]) if row["overflow_images"] is not None
                          else "-"]
            layers.add_row(*cells)
        console.print(layers)
    render_classes(report.classes, console)

    checks = Table(title=f"Checks ({report.thresholds['precision']} thresholds"
                   + (f"; overridden: {', '.join(report.thresholds['overridden'])}"
                      if report.thresholds["overridden"] else "") + ")",
                   title_justify="left")
    for c in ("check", "value", "threshold", "result", "detail"):
        checks.add_column(c, justify="right" if c in ("value", "threshold") else "left")
    style = {"pass": "[green]pass[/]", "fail": "[bold red]FAIL[/]", "info": "[dim]info[/]",
             "n/a": "[dim]n/a[/]"}
    for c in report.checks:
        thr = "-" if c.threshold is None else \
            f"{c.op} {format_value(c.threshold, c.unit).lstrip('+')}"
        checks.add_row(c.name, format_value(c.value, c.unit), thr, style[c.status], c.detail)
    console.print(checks)
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    verdict = "[bold green]PASSED[/]" if report.passed else "[bold red]FAILED[/]"
    console.print(f"[bold]validation[/]: {verdict} {report.summary(verdict=False)}",
                  highlight=False)

"""``dyt-edge checks``: what this machine can do for dyt-edge, in one table (or JSON). The
library is :mod:`dyt_edge.checks`."""

from __future__ import annotations

from typing import Any

from .options import JsonOut, check_json_out, emit_json, human_console, json_stdout_guard

_OK, _NO, _ERROR = "[green]ok[/]", "[yellow]no[/]", "[red]error[/]"


def checks(json_out: JsonOut = None) -> None:
    """Report what this machine can do for dyt-edge; changes nothing.

    Lists the versions of dyt-edge and of every library it uses (torch, torchvision, timm,
    onnx, onnxruntime, onnxsim, onnxslim, openvino, nncf, tensorrt, cuda-bindings,
    tritonclient, nvidia-pytriton; "not installed" where missing); the CPU, its usable cores
    and the instruction-set features that decide inference speed (AVX2, AVX-512, VNNI, BF16,
    AMX); OpenVINO's devices and the precisions each runs; the NVIDIA GPUs and whether TensorRT
    can build engines for them (with the command that fixes it when not); and whether the
    serve extra can start its server. A probe that fails is shown as that row's error. The
    exit code is 0.
    """
    from dyt_edge.checks import run_checks

    json_out = check_json_out(json_out, "checks.json")
    with json_stdout_guard(json_out):
        report = run_checks()
        render(report, human_console(json_out, soft_wrap=False))
    emit_json(json_out, report)


def _yes(value: Any) -> str:
    return _OK if value else _NO


def rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """``(section, item, status, detail)`` per table row; ``status`` is rich markup."""
    out: list[tuple[str, str, str, str]] = []
    py = report["python"]
    out.append(("dyt-edge", "dyt-edge", _OK, report["dyt_edge"]["version"]))
    out.append(("", "python", _OK, f"{py['version']} ({py['platform']})"))
    for lib in report["libraries"]:
        if lib.get("error"):
            out.append(("libraries", lib["name"], _ERROR, lib["error"]))
            continue
        version = lib["version"] or ("installed, version unknown" if lib["installed"]
                                     else "not installed")
        if lib["installed"] and lib.get("distribution") not in (None, lib["name"]):
            version += f" ({lib['distribution']})"
        out.append(("libraries", lib["name"], _yes(lib["installed"]),
                    f"{version}; {lib['used_for']}"))
    _cpu_rows(report["cpu"], out)
    _openvino_rows(report["openvino"], out)
    _gpu_rows(report["gpus"], report["tensorrt"], out)
    serve = report["serve"]
    out.append(("serve", "Triton server", _ERROR if serve.get("error") else _yes(serve["ok"]),
                serve.get("error") or serve["detail"] or ""))
    # The section name on its first row only.
    seen: set[str] = set()
    named = []
    for section, item, status, detail in out:
        named.append(("" if section in seen else section, item, status, detail))
        seen.add(section)
    return named


def _cpu_rows(cpu: dict[str, Any], out: list) -> None:
    if cpu.get("error"):
        out.append(("CPU", "cpu", _ERROR, cpu["error"]))
        return
    from dyt_edge.checks import CPU_FEATURES

    out.append(("CPU", "model", _OK, f"{cpu['model'] or '?'} ({cpu.get('machine') or '?'})"))
    out.append(("CPU", "cores", _OK, f"{cpu['usable_cores']} usable of {cpu['cores']}"))
    if not cpu.get("flags_read"):
        out.append(("CPU", "features", _NO, "no CPU flags found (/proc/cpuinfo)"))
        return
    for name, has in cpu["features"].items():
        out.append(("CPU", name, _yes(has), CPU_FEATURES[name]))


def _openvino_rows(ov: dict[str, Any], out: list) -> None:
    if ov.get("error"):
        out.append(("OpenVINO", "devices", _ERROR, ov["error"]))
        return
    if not ov["installed"]:
        out.append(("OpenVINO", "devices", _NO, "not installed (pip install openvino)"))
        return
    if not ov["devices"]:
        out.append(("OpenVINO", "devices", _NO, f"OpenVINO {ov['version']}: no devices"))
    for d in ov["devices"]:
        if d.get("error"):
            out.append(("OpenVINO", d["name"], _ERROR, d["error"]))
            continue
        runs = ", ".join(d["precisions"]) or "no dyt-edge precision"
        out.append(("OpenVINO", d["name"], _OK, f"{d['full_name']}: runs {runs} (capabilities "
                    f"{', '.join(d['capabilities'])})"))


def _gpu_rows(gpus: dict[str, Any], trt: dict[str, Any], out: list) -> None:
    if gpus.get("error"):
        out.append(("GPUs", "NVIDIA", _ERROR, gpus["error"]))
    elif not gpus["devices"]:
        out.append(("GPUs", "NVIDIA", _NO, "none found (CUDA driver API, nvidia-smi)"))
    for g in gpus.get("devices", []):
        memory = f", {g['memory_mib']} MiB" if g.get("memory_mib") else ""
        out.append(("GPUs", f"cuda:{g['index']}", _OK,
                    f"{g['name']} (sm {g['compute_capability']}, {g['architecture']}{memory}, "
                    f"--gpu {g['profile']}; TensorRT {g['tensorrt_versions']})"))
    if trt.get("error"):
        out.append(("TensorRT", "engines", _ERROR, trt["error"]))
        return
    version = (f"TensorRT {trt['version']}" + (f" ({trt['package']})" if trt["package"] else "")
               if trt["installed"] else "TensorRT not installed")
    problems = "; ".join(f"{p['message']} ({p['fix']})" for p in trt["problems"])
    detail = version + (f": builds for --gpu {trt['gpu']}" if trt["usable"] else
                        f": {problems}" if problems else "")
    out.append(("TensorRT", "engines", _yes(trt["usable"]), detail))
    for w in trt.get("warnings", []):
        out.append(("TensorRT", "warning", "[yellow]note[/]", w))


def render(report: dict[str, Any], console: Any) -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="dyt-edge checks: what this machine can do", title_justify="left",
                  box=box.SIMPLE_HEAD)
    for col in ("section", "item", "status", "detail"):
        table.add_column(col, no_wrap=col != "detail", style="bold" if col == "section" else "")
    for section, item, status, detail in rows(report):
        table.add_row(section, escape(item), status, escape(detail))
    console.print(table)

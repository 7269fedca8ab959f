"""`doctor`: what this interpreter can run — Python, mdn, torch, triton, numpy, CUDA devices, the optional
baselines (flash-linear-attention, mamba_ssm), and where the Triton kernels will run.

It never fails because something is missing: it reports it (`importable: false` with the error) and lets the
Go side decide what is required. Params: none.
"""
from __future__ import annotations

import importlib
import importlib.metadata as metadata
import os
import platform
import re
import sys

# module name -> distribution name (for the version when the module has no __version__, and for pins)
PACKAGES = {
    "torch": "torch",
    "triton": "triton",
    "numpy": "numpy",
    "fla": "flash-linear-attention",
    "mamba_ssm": "mamba_ssm",
}


def _first_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}".rstrip(": ")


def _dist_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _module(name: str) -> dict:
    """Import `name`; report whether it worked, its version and where it lives."""
    info: dict = {"importable": False, "version": _dist_version(PACKAGES.get(name, name)), "path": None, "error": None}
    try:
        mod = importlib.import_module(name)
    except Exception as exc:  # an optional package may fail in any way (missing CUDA extension, ABI, ...)
        info["error"] = _first_line(exc)
        return info
    if getattr(mod, "__file__", None) is None:  # a bare directory of that name on sys.path, not the package
        where = ", ".join(getattr(mod, "__path__", []) or [])
        info["error"] = f"only a namespace directory ({where}), not an installed package"
        return info
    info["importable"] = True
    info["version"] = getattr(mod, "__version__", None) or info["version"]
    info["path"] = os.path.dirname(mod.__file__)
    return info


def _pins() -> dict:
    """The version pins of the mdn distribution (pyproject) and whether the installed versions match them."""
    out: dict = {}
    try:
        reqs = metadata.requires("mdn") or []
    except metadata.PackageNotFoundError:
        return out
    for req in reqs:
        if ";" in req:  # extras / markers: not a runtime pin
            continue
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([0-9][0-9A-Za-z.]*(?:\.\*)?)\s*$", req)
        if not m:
            continue
        dist, want = m.group(1), m.group(2)
        have = _dist_version(dist)
        if want.endswith(".*"):
            ok = have is not None and (have.split("+")[0] + ".").startswith(want[:-1])
        else:
            ok = have is not None and have.split("+")[0] == want
        out[dist] = {"want": "==" + want, "have": have, "ok": ok}
    return out


def _cuda(torch_mod) -> dict:
    info: dict = {"available": False, "torch_cuda": None, "device_count": 0, "devices": [], "error": None}
    if torch_mod is None:
        return info
    info["torch_cuda"] = getattr(torch_mod.version, "cuda", None)
    try:
        info["available"] = bool(torch_mod.cuda.is_available())
        if info["available"]:
            info["device_count"] = torch_mod.cuda.device_count()
            for i in range(info["device_count"]):
                p = torch_mod.cuda.get_device_properties(i)
                info["devices"].append({
                    "index": i,
                    "name": p.name,
                    "memory_gib": round(p.total_memory / 2**30, 1),
                    "capability": f"{p.major}.{p.minor}",
                    "multiprocessors": p.multi_processor_count,
                })
    except Exception as exc:  # a broken driver shows up here, not at import
        info["error"] = _first_line(exc)
    return info


def _triton_target() -> dict | None:
    """The backend Triton would compile for (None when there is no GPU driver)."""
    try:
        from triton.runtime import driver

        t = driver.active.get_current_target()
        return {"backend": t.backend, "arch": str(t.arch)}
    except Exception:
        return None


def _backend(cuda_ok: bool, triton_ok: bool, torch_ok: bool, interpret: bool) -> tuple[str, str]:
    """Where mdn.ops runs its kernels, by the ops' own rule: Triton on CUDA tensors, Triton in the interpreter
    under TRITON_INTERPRET=1, else the torch reference (fallback) on CPU tensors."""
    if not torch_ok:
        return "none", "torch is not importable: no kernel can run"
    if interpret and triton_ok:
        return "interpreter", "TRITON_INTERPRET=1: the Triton kernels run in the interpreter on the CPU (slow)"
    if cuda_ok and triton_ok:
        return "gpu", "Triton kernels compile for the CUDA device"
    if cuda_ok:
        return "torch", "CUDA is available but triton is not importable: torch fallback only"
    return "torch", "no CUDA device; TRITON_INTERPRET=1 would run the Triton kernels in the interpreter"


def run(params: dict, ctx) -> dict:
    import mdn

    report: dict = {
        "python": {
            "executable": sys.executable,
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "prefix": sys.prefix,
            "venv": sys.prefix != sys.base_prefix,
        },
        "platform": {"system": platform.system(), "machine": platform.machine(), "release": platform.release()},
        "mdn": {"version": getattr(mdn, "__version__", None), "path": os.path.dirname(mdn.__file__)},
    }
    packages = {}
    total = len(PACKAGES)
    for i, name in enumerate(PACKAGES):
        ctx.progress(i, total, f"import {name}")
        packages[name] = _module(name)
    ctx.progress(total, total, "done")
    report["packages"] = packages
    report["pins"] = _pins()

    torch_mod = sys.modules.get("torch") if packages["torch"]["importable"] else None
    report["cuda"] = _cuda(torch_mod)
    report["triton_target"] = _triton_target() if packages["triton"]["importable"] else None
    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    report["triton_interpret"] = interpret
    backend, why = _backend(report["cuda"]["available"], packages["triton"]["importable"],
                            packages["torch"]["importable"], interpret)
    report["backend"] = backend
    report["backend_reason"] = why
    return report

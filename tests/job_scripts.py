"""The tune_jobs/*.py scripts as modules (they are scripts, not a package): tests call their main()/build_parser()."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

JOBS = Path(__file__).resolve().parents[1] / "tune_jobs"


def load_job(name: str) -> ModuleType:
    """tune_jobs/<name>.py, freshly executed as module `job_<name>`."""
    spec = importlib.util.spec_from_file_location(f"job_{name}", JOBS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

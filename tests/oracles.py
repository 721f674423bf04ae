"""Reference implementations used as test oracles, loaded by file path from packages installed with
``pip install --no-deps`` (the README's test command): cd-fvd 0.1.1, torch-fidelity 0.4.0, clip-anytorch
2.6.0.

Their package ``__init__`` files import torchvision, which cannot be installed beside the CPU torch, so each
oracle file is imported on its own (anchors-eval.md §8.2). Nothing in ``minivdit/`` imports these.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from importlib import metadata
from pathlib import Path


def package_file(dist: str, relpath: str) -> Path:
    """The installed file ``relpath`` of distribution ``dist`` (e.g. ``("cd-fvd", "cdfvd/fvd.py")``)."""
    try:
        d = metadata.distribution(dist)
    except metadata.PackageNotFoundError as e:
        raise RuntimeError(
            f"test oracle {dist} is not installed: run the README's test command "
            f"(pip install --no-deps cd-fvd==0.1.1 torch-fidelity==0.4.0 clip-anytorch==2.6.0)"
        ) from e
    path = Path(d.locate_file(relpath))
    if not path.is_file():
        raise RuntimeError(f"{dist} is installed but has no {relpath}")
    return path


def load_file(module_name: str, path: Path) -> types.ModuleType:
    """Import one source file as ``module_name`` without running its package's ``__init__``."""
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def stub_package(name: str, folder: Path) -> types.ModuleType:
    """Register an empty package ``name`` whose submodules are found in ``folder`` (its ``__init__`` is not
    run): ``import name.sub`` then loads ``folder/sub.py`` alone."""
    if name in sys.modules:
        return sys.modules[name]
    pkg = types.ModuleType(name)
    pkg.__path__ = [str(folder)]
    sys.modules[name] = pkg
    return pkg

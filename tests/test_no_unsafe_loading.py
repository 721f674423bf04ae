"""No code path of minivdit executes code from a file it reads (issue 13): every ``torch.load`` passes
``weights_only=True`` (PyTorch's restricted unpickler) and nothing passes ``trust_remote_code=True`` to
transformers / diffusers. Checked on the syntax tree of ``minivdit/``, ``tools/`` and ``recipes/``, so a
string or comment that mentions them (an error message telling the user what to run) is not a call."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted(p for d in ("minivdit", "tools", "recipes") for p in (ROOT / d).rglob("*.py"))


def _name(func: ast.expr) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _const(node: ast.expr | None):
    return node.value if isinstance(node, ast.Constant) else "<not a constant>"


def violations(source: str) -> list[str]:
    """Each ``torch.load`` without ``weights_only=True`` and each ``trust_remote_code`` other than False."""
    bad = []
    for call in (n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call)):
        name = _name(call.func)
        kwargs = {k.arg: k.value for k in call.keywords if k.arg}
        if name.endswith("torch.load") and _const(kwargs.get("weights_only")) is not True:
            bad.append(f"line {call.lineno}: {name}(...) without weights_only=True")
        if "trust_remote_code" in kwargs and _const(kwargs["trust_remote_code"]) is not False:
            bad.append(f"line {call.lineno}: {name}(..., trust_remote_code=...) other than False")
    return bad


def test_files_found():
    assert len(FILES) > 50 and any(p.name == "ckpt.py" for p in FILES)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_unsafe_loading(path):
    bad = violations(path.read_text())
    assert not bad, f"{path.relative_to(ROOT)}: " + "; ".join(bad)


def test_the_check_catches_violations():
    """The checker itself: each forbidden form is found, the allowed ones are not."""
    src = (
        "import torch\n"
        "torch.load('a')\n"
        "torch.load('a', weights_only=False)\n"
        "m = AutoModel.from_pretrained('x', trust_remote_code=True)\n"
        "m = AutoModel.from_pretrained('x', trust_remote_code=flag)\n"
        "ok = torch.load('a', map_location='cpu', weights_only=True)\n"
        "ok2 = AutoTokenizer.from_pretrained('x', trust_remote_code=False)\n"
        "msg = 'torch.load(p, weights_only=False)'\n"
    )
    assert [int(v.split(":")[0].split()[1]) for v in violations(src)] == [2, 3, 4, 5]

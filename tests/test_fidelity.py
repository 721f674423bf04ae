"""``docs/fidelity.md`` cannot drift from the code (DESIGN.md §9, issue 18 §5).

Every table belongs to one recipe, named by its heading (``## `recipes/x.py` `config("flow")` ``). Its
"minivdit" cells hold one or more items separated by ``<br>``:
- ``field`` = ``value``: a dotted path into the recipe's ``config(...)`` and a Python literal; the test
  checks that the config holds exactly that value (``type(path)`` = ``Name`` checks the class name);
- ``tests/test_x.py::test_name``: a behaviour that is not a config value, pinned by that test; the test
  checks that the test function exists.
The status cell starts with ``equal``, ``deviation`` or ``choice`` (a reference is silent or references
disagree), so every row says where it stands.
"""

import ast
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "fidelity.md"

HEADING = re.compile(r"^## `(recipes/[\w/]+\.py)`(?: `config\((.*)\)`)?\s*$")
FIELD = re.compile(r"^`(type\()?([\w.]+)\)?` = `(.+)`$")
PINNED = re.compile(r"^`(tests/[\w/]+\.py)::(\w+)`$")
STATUS = ("equal", "deviation", "choice")


def _tables() -> list[tuple[str, str, list[list[str]]]]:
    """[(recipe path, config call arguments, rows of cells)] in document order."""
    tables, current = [], None
    for line in DOC.read_text().splitlines():
        if m := HEADING.match(line):
            current = (m.group(1), m.group(2) or "", [])
            tables.append(current)
        elif line.startswith("## "):
            current = None
        elif current is not None and line.startswith("|") and not re.match(r"^\|\s*-", line):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[0] != "setting":
                current[2].append(cells)
    return tables


def _config(recipe: str, args: str):
    spec = importlib.util.spec_from_file_location(f"fidelity_{Path(recipe).stem}", ROOT / recipe)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.config(*ast.literal_eval(f"({args},)") if args else ())


def _resolve(cfg, path: str):
    value = cfg
    for name in path.split("."):
        value = getattr(value, name)
    return value


def _test_names(path: str) -> set[str]:
    tree = ast.parse((ROOT / path).read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


TABLES = _tables()


def test_every_recipe_has_a_table():
    recipes = {f"recipes/{p.name}" for p in (ROOT / "recipes").glob("*.py")}
    # Not reproductions (the file says so): CPU demonstrations (the quickstarts; issue 20 §4's VLM check,
    # whose docstring lists what differs from UniWorld) and minivdit's own VAE design.
    own = {"recipes/vae_causal3d.py", "recipes/uniworld_synthetic.py"}
    reproductions = {r for r in recipes if "quickstart" not in r and r not in own}
    documented = {recipe for recipe, _, _ in TABLES}
    assert reproductions <= documented, (
        f"recipes without a table in docs/fidelity.md: {reproductions - documented}"
    )
    assert all(rows for _, _, rows in TABLES)


@pytest.mark.parametrize("recipe,args,rows", TABLES, ids=[f"{r}({a})" for r, a, _ in TABLES])
def test_table_matches_the_recipe(recipe, args, rows):
    cfg = _config(recipe, args)
    for cells in rows:
        assert len(cells) == 4, (
            f"{recipe}: a row needs 4 cells (setting, minivdit, reference, status): {cells}"
        )
        setting, ours, reference, status = cells
        assert reference, f"{recipe} / {setting}: no reference"
        assert status.startswith(STATUS), f"{recipe} / {setting}: status must start with one of {STATUS}"
        for item in ours.split("<br>"):
            item = item.strip()
            if m := PINNED.match(item):
                assert m.group(2) in _test_names(m.group(1)), f"{recipe} / {setting}: no test {item}"
                continue
            m = FIELD.match(item)
            assert m, f"{recipe} / {setting}: '{item}' is neither `field` = `value` nor `tests/...::test`"
            is_type, path, literal = m.groups()
            actual = _resolve(cfg, path)
            if is_type:
                assert type(actual).__name__ == literal, (
                    f"{recipe} / {setting}: type({path}) is {type(actual)}"
                )
            else:
                expected = ast.literal_eval(literal)
                assert (
                    actual == expected
                    and type(actual) is type(expected)
                    or (
                        isinstance(actual, float)
                        and isinstance(expected, (int, float))
                        and actual == expected
                    )
                ), f"{recipe} / {setting}: {path} is {actual!r}, docs/fidelity.md says {literal}"


def test_every_test_the_file_names_exists():
    """The documentation-only sections name their tests in prose: those must exist too."""
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", DOC.read_text())
    assert named
    missing = [f"{path}::{name}" for path, name in named if name not in _test_names(path)]
    assert not missing, f"docs/fidelity.md names tests that do not exist: {missing}"

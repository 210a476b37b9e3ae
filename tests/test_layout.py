"""The package's import direction (DEVELOPERS.md "Layout", STYLE.md "Habits"): folders follow the
data's path and nothing imports upward, not even inside a function.

Every module under src/pocovid is parsed with `ast`; every import is read (top-level, function-local,
under `if TYPE_CHECKING:`, relative, and `importlib.import_module("pocovid...")` with a literal).
"""

from __future__ import annotations

import ast
import warnings
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "pocovid"

# Floors, bottom first. A unit (a sub-package or a top-level module of pocovid) may import its own
# floor's units only where SIDEWAYS allows, and any lower floor; never a higher one.
FLOORS: list[set[str]] = [
    {"errors", "files"},
    {"media"},
    {"region"},
    {"phantom"},  # a data generator: what it may import; who may import it is PHANTOM_USERS
    {"data"},
    {"models"},
    {"inference"},
    {"evaluation", "training"},
    {"analysis"},
    {"server", "cli", "testing"},
]
SIDEWAYS = {
    ("training", "evaluation"),  # training reports with evaluation's metrics; never the other way
    ("cli", "server"),  # `pocovid serve` and the contributions commands start / read the service
}
# pocovid.phantom makes synthetic clips: the `pocovid phantom` / demo commands and the tests use it,
# nothing clinical does.
PHANTOM_USERS = {"phantom", "cli", "testing"}
# pocovid.testing holds test and benchmark helpers: nothing in the package imports it.
TESTING_USERS = {"testing"}

UNIT_FLOOR = {unit: i for i, units in enumerate(FLOORS) for unit in units}

# Known violations, as (importing module, imported module). Each one is a debt: fix the import and
# delete its line here. Never add a line to make a new violation pass. The test prints this set, and
# warns about entries that no longer occur (delete those).
KNOWN: set[tuple[str, str]] = set()  # emptied when inference.py stopped importing pocovid.training.frames


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. "pocovid.analysis.report"
    line: int
    target: str  # the imported module, e.g. "pocovid.media" (for `from pocovid.media import x`)
    names: tuple[str, ...]  # the names taken from it (empty for `import pocovid.media`)

    @property
    def where(self) -> str:
        return f"{self.module}:{self.line}"


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str) -> str:
    """The sub-package or top-level module a module belongs to; "" for the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def package_imports(src: Path = SRC) -> list[Import]:
    """Every import of a pocovid module in every module under src/pocovid."""
    out = []
    for path in sorted((src / PACKAGE).rglob("*.py")):
        module = module_name(path, src)
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                out += [Import(module, node.lineno, a.name, ()) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = tuple(a.name for a in node.names)
                if target == PACKAGE:
                    # `from pocovid import media` imports the unit; `from pocovid import __version__` the package
                    subs = [n for n in names if n in UNIT_FLOOR]
                    out += [Import(module, node.lineno, f"{PACKAGE}.{n}", ()) for n in subs]
                    names = tuple(n for n in names if n not in UNIT_FLOOR)
                    if not names:
                        continue
                out.append(Import(module, node.lineno, target, names))
            elif isinstance(node, ast.Call) and _is_import_call(node):
                out.append(Import(module, node.lineno, node.args[0].value, ()))
    return [i for i in out if i.target == PACKAGE or i.target.startswith(PACKAGE + ".")]


def _is_import_call(node: ast.Call) -> bool:
    f = node.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
    return (name in ("import_module", "__import__") and len(node.args) >= 1
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def violations(src: Path = SRC) -> dict[tuple[str, str], list[str]]:
    """(importing module, imported module) -> why each import of it breaks the layout."""
    found: dict[tuple[str, str], list[str]] = {}
    for imp in package_imports(src):
        src_unit, dst_unit = unit_of(imp.module), unit_of(imp.target)
        if dst_unit == src_unit or dst_unit == "":
            continue  # within a unit, or the package itself (__version__)
        why = []
        if src_unit not in UNIT_FLOOR or dst_unit not in UNIT_FLOOR:
            why.append(f"{src_unit or dst_unit} has no floor in tests/test_layout.py FLOORS")
        elif UNIT_FLOOR[dst_unit] > UNIT_FLOOR[src_unit]:
            why.append(f"imports upward: {src_unit} (floor {UNIT_FLOOR[src_unit]}) -> {dst_unit} "
                       f"(floor {UNIT_FLOOR[dst_unit]})")
        elif UNIT_FLOOR[dst_unit] == UNIT_FLOOR[src_unit] and (src_unit, dst_unit) not in SIDEWAYS:
            why.append(f"imports sideways: {src_unit} -> {dst_unit} (same floor, not in SIDEWAYS)")
        if dst_unit == "phantom" and src_unit not in PHANTOM_USERS:
            why.append("imports pocovid.phantom (synthetic data: for the CLI and tests only)")
        if dst_unit == "testing" and src_unit not in TESTING_USERS:
            why.append("imports pocovid.testing (test helpers: nothing in the package imports them)")
        private = [n for n in imp.names if _private(n)]
        private += [p for p in imp.target.split(".") if _private(p)]
        if private:
            why.append(f"imports private {', '.join(private)} from another package")
        if why:
            found.setdefault((imp.module, imp.target), []).extend(f"{imp.where}: {w}" for w in why)
    return found


def test_the_layout_sees_the_whole_package():
    imports = package_imports()
    modules = {module_name(p) for p in (SRC / PACKAGE).rglob("*.py")}
    assert len(modules) > 30 and len(imports) > 100
    units = {unit_of(m) for m in modules} - {""}
    assert units <= set(UNIT_FLOOR), f"units without a floor in FLOORS: {sorted(units - set(UNIT_FLOOR))}"
    # function-local imports are read too (pocovid.testing imports all of its pocovid modules in functions)
    assert any(i.module == "pocovid.testing" and i.target == "pocovid.phantom" for i in imports)


def test_no_import_breaks_the_layout():
    print(f"KNOWN layout violations ({len(KNOWN)}; each to be fixed, then deleted from tests/test_layout.py):")
    for pair in sorted(KNOWN):
        print(f"  {pair[0]} -> {pair[1]}")
    found = violations()
    new = {pair: why for pair, why in found.items() if pair not in KNOWN}
    stale = sorted(KNOWN - set(found))
    if stale:
        warnings.warn("KNOWN layout violations that no longer occur; delete them from tests/test_layout.py: "
                      + "; ".join(f"{a} -> {b}" for a, b in stale), stacklevel=1)
    assert not new, "imports that break the layout (DEVELOPERS.md):\n" + "\n".join(
        w for why in new.values() for w in why)


def test_the_checker_catches_what_it_should(tmp_path):
    """Each rule, on a throw-away package: upward (also function-local and relative), sideways,
    phantom and testing users, private names across packages."""
    pkg = tmp_path / PACKAGE
    for d in ("media", "models", "analysis", "training", "evaluation"):
        (pkg / d).mkdir(parents=True)
        (pkg / d / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("__version__ = '0'\n")
    (pkg / "phantom").mkdir()
    (pkg / "phantom" / "__init__.py").write_text("")
    (pkg / "testing.py").write_text("from pocovid.phantom import x\nfrom pocovid.analysis import y\n")
    (pkg / "media" / "reader.py").write_text(
        "from pocovid import __version__\nfrom . import helpers\n\n"
        "def f():\n    from ..models import create_model\n")
    (pkg / "evaluation" / "metrics.py").write_text("import pocovid.training.fit\n")
    (pkg / "training" / "fit.py").write_text("from pocovid.evaluation.metrics import auc\n")
    (pkg / "models" / "data.py").write_text(
        "import importlib\nfrom pocovid.media.reader import _short, sample\n"
        "from pocovid import phantom, testing\nm = importlib.import_module('pocovid.analysis.x')\n")
    got = violations(tmp_path)
    assert set(got) == {
        ("pocovid.media.reader", "pocovid.models"),
        ("pocovid.evaluation.metrics", "pocovid.training.fit"),
        ("pocovid.models.data", "pocovid.media.reader"),
        ("pocovid.models.data", "pocovid.phantom"),
        ("pocovid.models.data", "pocovid.testing"),
        ("pocovid.models.data", "pocovid.analysis.x"),
    }, got
    assert "upward" in got[("pocovid.media.reader", "pocovid.models")][0]
    assert "sideways" in got[("pocovid.evaluation.metrics", "pocovid.training.fit")][0]
    assert "private _short" in got[("pocovid.models.data", "pocovid.media.reader")][0]
    assert any("CLI and tests only" in w for w in got[("pocovid.models.data", "pocovid.phantom")])
    assert any("nothing in the package" in w for w in got[("pocovid.models.data", "pocovid.testing")])

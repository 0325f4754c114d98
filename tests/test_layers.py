"""The layers of docs/architecture.md, kept: every module's imports are read (all of them, at the top of the
module and inside functions) and checked against the rules. No module is imported here, so no model loads."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "webbot"
ENTRY_POINTS = ("app.py", "chat_bot.py", "speech.py")
HEAVY = ("torch", "transformers", "sqlalchemy")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in it, as dotted names (`from a.b import c` gives a.b and a.b.c)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def top(name: str) -> str:
    return name.split(".")[0]


PACKAGE_MODULES = sorted(PACKAGE.rglob("*.py"))
ALL_MODULES = PACKAGE_MODULES + [ROOT / name for name in ENTRY_POINTS]


def layer(path: Path) -> str | None:
    """`config`, `model`, `voice`, `storage` or `web` for a module of the package."""
    parts = path.relative_to(PACKAGE).parts
    return "config" if parts == ("config.py",) else parts[0] if len(parts) > 1 else None


def test_the_root_holds_only_the_entry_points():
    assert sorted(p.name for p in ROOT.glob("*.py")) == sorted(ENTRY_POINTS)


@pytest.mark.parametrize("path", [p for p in PACKAGE_MODULES
                                  if layer(p) in ("model", "voice", "storage", "documents")], ids=module_name)
def test_model_voice_storage_and_documents_never_import_flask_or_the_web_layer(path):
    bad = {name for name in imports(path) if top(name) in ("flask", "flask_login", "flask_wtf", "werkzeug")
           or name.startswith("webbot.web")}
    assert not bad, f"{module_name(path)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", ALL_MODULES, ids=module_name)
def test_a_module_that_imports_flask_imports_no_torch_transformers_or_sqlalchemy(path):
    names = imports(path)
    if not any(top(name) == "flask" for name in names):
        return
    heavy = {name for name in names if top(name) in HEAVY}
    assert not heavy, f"{module_name(path)} imports flask and {sorted(heavy)}"


@pytest.mark.parametrize("path", [p for p in PACKAGE_MODULES if layer(p) == "documents"], ids=module_name)
def test_documents_import_only_config_and_never_the_model_stack(path):
    """Reading files runs in a child process that must start fast and hold no model: config and itself only."""
    names = imports(path)
    assert not {n for n in names if n.startswith("webbot.") and not n.startswith(("webbot.config",
                                                                                    "webbot.documents"))}
    assert not {n for n in names if top(n) in HEAVY}


def test_config_imports_nothing_of_the_product():
    names = imports(PACKAGE / "config.py")
    assert not {name for name in names if top(name) in ("webbot", "app", "chat_bot", "speech")}


@pytest.mark.parametrize("path", [p for p in PACKAGE_MODULES if layer(p) != "web"], ids=module_name)
def test_no_layer_below_web_reaches_the_entry_points(path):
    """Only the web layer and app.py may use chat_bot.py, speech.py and app.py (the composition root)."""
    assert not {name for name in imports(path) if top(name) in ("app", "chat_bot", "speech")}


@pytest.mark.parametrize("path", ALL_MODULES, ids=module_name)
def test_every_module_opens_with_a_docstring_and_stays_small(path):
    tree = ast.parse(path.read_text())
    assert ast.get_docstring(tree), f"{module_name(path)} has no docstring saying what it is for"
    lines = len(path.read_text().splitlines())
    assert lines <= 400, f"{module_name(path)} has {lines} lines; split it into a sibling that says what it holds"


def test_nothing_cites_a_document_outside_the_repository():
    cited = []
    for path in [*ROOT.glob("*.py"), *ROOT.glob("*.md"), *PACKAGE.rglob("*.py"), *(ROOT / "tests").rglob("*.py"),
                 *(ROOT / "bench").rglob("*.py"), *(ROOT / "harness").rglob("*.py"), *(ROOT / "docs").rglob("*.md"),
                 *(ROOT / "static" / "js").glob("*.js")]:
        if path == Path(__file__):
            continue
        if re.search(r"DESIGN\.md", path.read_text()):
            cited.append(str(path.relative_to(ROOT)))
    assert cited == []


def test_tests_and_benchmarks_share_the_harness_not_each_other():
    for path in (ROOT / "tests").rglob("*.py"):
        assert not {n for n in imports(path) if top(n) == "bench"}, path
    for path in (ROOT / "bench").rglob("*.py"):
        assert not {n for n in imports(path) if top(n) == "tests"}, path
    for path in (ROOT / "harness").rglob("*.py"):
        assert not {n for n in imports(path) if top(n) in ("tests", "bench")}, path

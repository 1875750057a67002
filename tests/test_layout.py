"""The project's layout: scripts import modules and never each other; the modules' imports run
one way (no circle, counting imports inside functions), so each file can be read, tested and
changed on its own; no file of the product is over 800 lines; development tools live in tools/,
and neither the product nor the tests import them."""
import ast

from conftest import ROOT

SCRIPTS = {"train_sft", "train_grpo", "track", "eval_got10k", "prepare_data"}
TOOLS = {"bench", "bench_grpo", "make_demo_model"}


def module_name(path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name[:-len(".__init__")] if name.endswith(".__init__") else name


def product_files() -> dict:
    """Every Python file of the product (outside tests/ and tools/), by module name."""
    files = [p for p in ROOT.rglob("*.py") if p.relative_to(ROOT).parts[0] not in {"tests", "tools"}
             and not any(part.startswith(".") or part in {"runs", "demo_model"} for part in p.relative_to(ROOT).parts)]
    return {module_name(p): p for p in files}


def imported_names(path) -> set:
    """Every module `path` imports, at load time or inside a function, as written."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from package import module`
    return found


def imported_project_modules(path, modules) -> set:
    return {name for name in imported_names(path) if name in modules}


def test_every_script_is_there_and_scripts_import_no_script():
    files = product_files()
    assert SCRIPTS <= set(files)
    for script in SCRIPTS:
        imported = imported_project_modules(files[script], files)
        assert not imported & SCRIPTS, f"{script}.py imports the script(s) {sorted(imported & SCRIPTS)}"


def test_development_tools_are_apart_and_nothing_imports_them():
    assert {p.stem for p in (ROOT / "tools").glob("*.py")} == TOOLS
    assert not {p.stem for p in ROOT.glob("*.py")} & TOOLS, "a development tool beside the user's scripts"
    users = list(product_files().values()) + list((ROOT / "tests").glob("*.py"))
    for path in users:
        names = {name.split(".")[0] for name in imported_names(path)}
        assert not names & (TOOLS | {"tools"}), f"{path.relative_to(ROOT)} imports a tool"


def test_no_file_of_the_product_is_over_800_lines():
    long = {str(p.relative_to(ROOT)): n for p in product_files().values()
            if (n := len(p.read_text().splitlines())) > 800}
    assert not long, long


def test_modules_import_one_way():
    files = product_files()
    graph = {name: imported_project_modules(path, files) - {name} for name, path in files.items()}
    # a package's modules load its __init__ first; it may import them (a registry), they must not import it
    graph = {name: {m for m in deps if not name.startswith(m + ".")} for name, deps in graph.items()}
    assert graph["r1track"] >= {"fast_decoder", "frame_loop"}, "the core builds on the fast decoder and the frame loop"
    for name in ("fast_decoder", "frame_loop", "boxes", "frames", "prompts", "answers", "settings", "cli"):
        assert "r1track" not in graph[name], f"{name}.py imports the core, which imports it"
    done, visiting = set(), []

    def visit(name):  # depth-first: a module met again while its own imports are open closes a circle
        assert name not in visiting, f"import circle: {' -> '.join(visiting[visiting.index(name):] + [name])}"
        if name in done:
            return
        visiting.append(name)
        for imported in graph[name]:
            visit(imported)
        visiting.pop()
        done.add(name)

    for name in graph:
        visit(name)

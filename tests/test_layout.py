"""The project's layout: scripts import modules and never each other, and the modules' imports
at load time run one way (no cycle), so each file can be read, tested and changed on its own."""
import ast

from conftest import ROOT

SCRIPTS = {"train_sft", "train_grpo", "track", "eval_got10k", "prepare_data", "bench", "bench_grpo",
           "make_demo_model"}


def project_files() -> dict:
    return {path.stem: path for path in ROOT.glob("*.py")}


def imported_project_names(path, names, top_level_only) -> set:
    """The project files `path` imports: all of them, or only those imported when it loads."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(names)


def test_every_script_is_there_and_scripts_import_no_script():
    files = project_files()
    assert SCRIPTS <= set(files)
    for script in SCRIPTS:
        imported = imported_project_names(files[script], files, top_level_only=False)
        assert not imported & SCRIPTS, f"{script}.py imports the script(s) {sorted(imported & SCRIPTS)}"


def test_the_core_reaches_other_modules_only_for_the_fast_decoder():
    files = project_files()
    everywhere = imported_project_names(files["r1track"], files, top_level_only=False)
    assert everywhere == {"fast_decoder"}, "r1track.py may import fast_decoder inside Tracker, and nothing else"


def test_modules_import_one_way():
    files = project_files()
    modules = {name: path for name, path in files.items() if name not in SCRIPTS}
    graph = {name: imported_project_names(path, modules, top_level_only=True) - {name}
             for name, path in modules.items()}
    assert graph["r1track"] == set(), "the core imports no other module of the project when it loads"
    done, visiting = set(), []

    def visit(name):  # depth-first: a module met again while its own imports are open closes a cycle
        assert name not in visiting, f"import cycle: {' -> '.join(visiting[visiting.index(name):] + [name])}"
        if name in done:
            return
        visiting.append(name)
        for imported in graph[name]:
            visit(imported)
        visiting.pop()
        done.add(name)

    for name in graph:
        visit(name)

"""Imports flow one way: base -> ops -> models -> data -> evaluation -> analysis -> training -> inference
-> cli.

The package's modules are parsed (``ast``; nothing is imported) into a graph of their imports of
medmamba_jax modules, at module level and inside functions. The test fails on an import from a
lower layer to a higher one, on any cycle, on an import inside a function that ``LAZY_IMPORTS``
does not list with its reason, and on one of a module that importing the file already loads (it
hides nothing). A module may import any module of its own layer or of a lower one.

``python tests/test_layers.py [ROOT]`` prints the counts the layering is judged by (cycles,
function-level imports, upward imports, files over 300 lines) for the checkout at ROOT.
"""

from __future__ import annotations

import ast
import os
import sys
from typing import Iterator, NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "medmamba_jax"

# Each layer, lowest first, with the module-name prefixes it holds (a module takes the layer of
# its longest matching prefix; the bare package name matches only the package's __init__).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # Neutral helpers that import nothing of ours: atomic files, optional-dependency errors,
    # XLA flags, device sharding, the paper's tables as data.
    ("base", ("medmamba_jax.files", "medmamba_jax.extras", "medmamba_jax.runtime", "medmamba_jax.sharding",
              "medmamba_jax.paper")),
    ("ops", ("medmamba_jax.ops",)),
    # The model, its bare-model files (model_files) and the PyTorch weight converters (params);
    # the package's __init__ re-exports the model.
    ("models", ("medmamba_jax.models", "medmamba_jax.model_files", "medmamba_jax.params", "medmamba_jax")),
    ("data", ("medmamba_jax.data",)),
    ("evaluation", ("medmamba_jax.evaluation",)),
    # Libraries that read results and draw figures: training draws its own curves with them.
    ("analysis", ("medmamba_jax.analysis",)),
    ("training", ("medmamba_jax.training",)),
    # A trained model put to use: loaded from a workdir or a model directory, exported, and scored
    # under perturbations; what the commands run.
    ("inference", ("medmamba_jax.inference",)),
    # The commands (cli/: each tool's main, the dispatcher and their shared plumbing), the
    # modules that keep each tool's `python -m medmamba_jax.<tool>` address, and the recipes
    # train.py reads (configs/).
    ("cli", ("medmamba_jax.cli", "medmamba_jax.configs", "medmamba_jax.__main__", "medmamba_jax.train",
             "medmamba_jax.evaluate", "medmamba_jax.predict", "medmamba_jax.explain", "medmamba_jax.robustness",
             "medmamba_jax.flops", "medmamba_jax.curves", "medmamba_jax.convert", "medmamba_jax.export",
             "medmamba_jax.reproduce")),
)

# (importer, imported module) -> why the import sits inside a function. An importer that is a
# layer's name stands for every module of that layer.
LAZY_IMPORTS: dict[tuple[str, str], str] = {
    ("medmamba_jax.ops", "medmamba_jax.ops.pallas_scan"): "Pallas loads only for impl='pallas' (a build may lack it)",
    ("medmamba_jax.ops", "medmamba_jax.ops.cpu_scan"): "numba is optional: the CPU kernels load only for impl='cpu'",
    ("medmamba_jax.ops.triton_lowering", "medmamba_jax.ops.pallas_scan"): "Pallas loads only when a kernel is lowered",
    ("medmamba_jax", "medmamba_jax.params"): "`import medmamba_jax` stays free of Orbax and the torch converters",
    ("medmamba_jax.training.errors", "medmamba_jax.params"): "loads Orbax, which a command's --help (cli/common "
                                                             "imports errors) must not wait for",
    ("medmamba_jax.inference.loaded_model", "medmamba_jax.model_files"): "loads Orbax, which a command's --help "
                                                                         "(cli/common imports loaded_model) must "
                                                                         "not wait for",
    ("medmamba_jax.inference.loaded_model", "medmamba_jax.training.checkpointing"): "loads Orbax, as above",
    ("medmamba_jax.analysis.curves", "medmamba_jax.analysis.plots"): "matplotlib loads only when a figure is drawn",
    # What a command runs loads once its arguments parse, so its --help starts fast (the rule
    # below still refuses a function-level import of a module the command loads anyway).
    ("cli", "*"): "a command loads the library it runs only when it runs",
}


class Import(NamedTuple):
    importer: str  # module name
    imported: str  # module name
    path: str  # the importer's file, relative to ROOT
    line: int
    in_function: bool
    runs_at_import: bool  # False inside a function and under ``if TYPE_CHECKING:``


def module_files(root: str = ROOT) -> dict[str, str]:
    """{module name: file path} of every module of the package under ``root``."""
    found = {}
    for directory, _, names in os.walk(os.path.join(root, PACKAGE)):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                parts = os.path.relpath(path, root)[:-3].split(os.sep)
                found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(root: str = ROOT) -> Iterator[Import]:
    """Every import of one of the package's modules, from every module of the package."""
    modules = module_files(root)
    for module, path in sorted(modules.items()):
        tree = ast.parse(open(path).read(), path)
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        for node, in_function, runs in _import_nodes(tree, in_function=False, runs=True):
            for imported in _targets(node, package, modules):
                yield Import(module, imported, os.path.relpath(path, root), node.lineno, in_function, runs)


def _import_nodes(node: ast.AST, in_function: bool, runs: bool) -> Iterator[tuple[ast.AST, bool, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function, runs
        inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        typing_only = isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)
        yield from _import_nodes(child, inside, runs and not inside and not typing_only)


def _targets(node: ast.AST, package: str, modules: dict[str, str]) -> list[str]:
    """The package's modules that an import statement names (``from M import name`` names M.name
    when that is a module, else M)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
        return [_known(name, modules) for name in names if _known(name, modules)]
    base = node.module or ""
    if node.level:
        anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        base = f"{anchor}.{base}" if base else anchor
    if _known(base, modules) is None:
        return []
    return sorted({f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names})


def _known(name: str, modules: dict[str, str]) -> str | None:
    """``name``, or its longest prefix that is one of the package's modules."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def layer_of(module: str) -> int:
    """The index in LAYERS of ``module``'s layer; ValueError for a module no layer holds."""
    best, best_length = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or (prefix != PACKAGE and module.startswith(prefix + "."))
            if matches and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    if best is None:
        raise ValueError(f"{module} belongs to no layer: add it to LAYERS in tests/test_layers.py")
    return best


def upward(found: list[Import]) -> list[Import]:
    return [i for i in found if layer_of(i.imported) > layer_of(i.importer)]


def cycles(found: list[Import]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    graph: dict[str, set[str]] = {}
    for i in found:
        if i.importer != i.imported:
            graph.setdefault(i.importer, set()).add(i.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while (member := stack.pop()) != node:
                component.append(member)
            components.append(sorted(component + [node]))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [c for c in components if len(c) > 1]


def loaded_at_import(found: list[Import]) -> dict[str, set[str]]:
    """{module: the modules that importing it runs}: its imports that run at import time, their
    packages' __init__ modules, and theirs in turn."""
    direct: dict[str, set[str]] = {}
    for i in found:
        if i.runs_at_import:
            direct.setdefault(i.importer, set()).add(i.imported)

    def with_packages(module: str) -> list[str]:
        parts = module.split(".")
        return [".".join(parts[:k]) for k in range(1, len(parts) + 1)]

    loaded = {}
    for module in {i.importer for i in found}:
        seen, todo = set(), with_packages(module)
        while todo:
            if (nxt := todo.pop()) not in seen:
                seen.add(nxt)
                todo += [m for imported in direct.get(nxt, ()) for m in with_packages(imported)]
        loaded[module] = seen
    return loaded


def lazy_reason(i: Import) -> str | None:
    """Why ``i`` (an import inside a function) may stay there, or None."""
    layer = LAYERS[layer_of(i.importer)][0]
    return LAZY_IMPORTS.get((i.importer, i.imported)) or LAZY_IMPORTS.get((layer, "*"))


def _where(i: Import) -> str:
    return f"{i.path}:{i.line}: {i.importer} imports {i.imported}"


def test_every_module_has_a_layer():
    for module in module_files():
        layer_of(module)


def test_no_import_goes_up_a_layer():
    found = list(imports())
    problems = [f"{_where(i)}: upward import, from layer {LAYERS[layer_of(i.importer)][0]} to "
                f"{LAYERS[layer_of(i.imported)][0]} (layers: {' -> '.join(name for name, _ in LAYERS)})"
                for i in upward(found)]
    assert not problems, "\n".join(problems)


def test_no_modules_import_each_other_in_a_cycle():
    found = list(imports())
    problems = []
    for component in cycles(found):
        edges = [_where(i) for i in found if i.importer in component and i.imported in component]
        problems.append(f"import cycle between {', '.join(component)}:\n  " + "\n  ".join(edges))
    assert not problems, "\n".join(problems)


def test_imports_inside_functions_are_listed_with_their_reason():
    problems = [f"{_where(i)}: import inside a function, not in LAZY_IMPORTS (move it to the top, or list it "
                "with its reason)" for i in imports() if i.in_function and lazy_reason(i) is None]
    assert not problems, "\n".join(problems)


def test_no_import_inside_a_function_hides_a_module_already_loaded():
    found = list(imports())
    loaded = loaded_at_import(found)
    problems = [f"{_where(i)}: import inside a function of a module that importing {i.importer} already loads; "
                "import it at the top" for i in found if i.in_function and i.imported in loaded[i.importer]]
    assert not problems, "\n".join(problems)


def counts(root: str) -> dict[str, int]:
    """The numbers the layering is judged by, for the checkout at ``root``."""
    found = list(imports(root))
    long_files = [p for p in module_files(root).values() if sum(1 for _ in open(p)) > 300]
    return {"import cycles (components of more than one module)": len(cycles(found)),
            "function-level imports of medmamba_jax modules": sum(i.in_function for i in found),
            "upward imports": len(upward(found)),
            "package files over 300 lines": len(long_files)}


if __name__ == "__main__":
    for name, value in counts(os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ROOT)).items():
        print(f"{value:4d}  {name}")

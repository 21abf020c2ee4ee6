"""The packages' import graph: no cycles, no module importing another's private names, and no
private attribute of another object read outside `keras_clip.compat` (where each private
Keras / TensorFlow hook is kept, with its reason)."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("keras_clip", "keras_dalle", "export")
COMPAT = "keras_clip.compat"


def _modules():
    """{dotted module name: path} of every .py file of the packages."""
    out = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    out[dotted.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _imports(path):
    """(imported project module, imported names, line) for every import statement in the file,
    at any depth (imports inside functions count too)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] in PACKAGES:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in MODULES:  # `from package import module`
                    yield sub, [], node.lineno
                else:
                    yield node.module, [alias.name], node.lineno


def _graph():
    return {name: {target for target, _, _ in _imports(path) if target in MODULES}
            for name, path in MODULES.items()}


def test_the_package_walk_finds_every_subpackage():
    for name in ("keras_dalle.vae.model", "keras_dalle.transformer.model",
                 "keras_dalle.sampling.sampler", "keras_clip.checkpoints.reader", COMPAT):
        assert name in MODULES


def test_no_import_cycles():
    graph = _graph()
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(" → ".join(c) for c in cycles)


def test_no_module_imports_another_modules_private_names():
    bad = []
    for name, path in MODULES.items():
        for target, names, line in _imports(path):
            private = [n for n in names if n.startswith("_")]
            if target.split(".")[-1].startswith("_") and not target.endswith("__init__"):
                private.append(target)
            if private:
                bad.append(f"{name}:{line} imports {', '.join(private)} from {target}")
    assert not bad, "\n".join(bad)


def _private_attribute_reads(path):
    """`x._name` where x is not self / cls / super(): another object's private attribute."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                and not node.attr.startswith("__"):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) \
                    and owner.func.id == "super":
                continue
            yield node.lineno, ast.unparse(node)


def test_private_hooks_of_other_objects_are_touched_only_in_the_compat_module():
    bad = [f"{name}:{line} {text}" for name, path in MODULES.items() if name != COMPAT
           for line, text in _private_attribute_reads(path)]
    assert not bad, "private attributes of other objects (move them to keras_clip.compat):\n" \
        + "\n".join(bad)


def test_the_compat_module_says_why_for_each_hook():
    source = open(MODULES[COMPAT], encoding="utf-8").read()
    assert "keras 3.15" in source
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            assert ast.get_docstring(node), f"{node.name} has no docstring saying why"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("keras_dalle.sampling")))
def test_the_sampler_reads_no_private_attribute_of_a_layer(name):
    assert not list(_private_attribute_reads(MODULES[name]))

"""The package layering, read from every import statement (module level and inside functions).

* ``core`` (contracts and configuration) imports nothing of Aegle's;
* ``sensors``, ``gan``, ``edge`` and ``server`` sit above it; ``edge`` and ``server`` never import each other;
  ``gan`` imports only ``core``; ``sensors`` only ``core``;
* serving (``server``) never imports a training module of ``gan``;
* ``aegle`` (the command line, the demo and the local-service harness) wires the others; only it, ``bench`` and the
  tests import it;
* across packages, only a package's public API is imported: ``from core import X`` with ``X`` in the package's
  exports (the ``_EXPORTS`` table of its ``__init__``), never ``from core.vitals import X``. Tests may import
  internals.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "sensors", "gan", "edge", "server", "aegle", "bench")
#: What each package may import besides itself.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "sensors": {"core"},
    "gan": {"core"},
    "edge": {"core", "sensors"},
    "server": {"core", "sensors", "gan"},
    "aegle": {"core", "sensors", "gan", "edge", "server"},
    "bench": {"core", "sensors", "gan", "edge", "server", "aegle"},
}
#: gan modules that train (loops, optimisers, training data preparation); serving must not import them.
TRAINING = ("gan.train", "gan.train_classifier", "gan.train_hybrid", "gan.losses", "gan.lesions", "gan.degrade")


def modules(package: str) -> Iterator[tuple[str, Path]]:
    for path in sorted((ROOT / package).rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        yield name.removesuffix(".__init__"), path


def imports(path: Path) -> Iterator[tuple[int, str, list[str]]]:
    """``(line, module, names)`` of every absolute import in the file (``names`` empty for ``import x``)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module, [alias.name for alias in node.names]


def exports(package: str) -> dict[str, str]:
    """A package's public names and the module defining each: the ``_EXPORTS`` table of its ``__init__``."""
    tree = ast.parse((ROOT / package / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign | ast.Assign) and isinstance(node.value, ast.Dict):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in targets):
                return {k.value: v.value for k, v in zip(node.value.keys, node.value.values, strict=True)
                        if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)}  # fmt: skip
    return {}


def is_training(module: str) -> bool:
    return any(module == t or module.startswith(t + ".") for t in TRAINING)


def first_party(module: str) -> str | None:
    top = module.split(".")[0]
    return top if top in PACKAGES else None


ALL_IMPORTS = [(pkg, name, path, line, module, names) for pkg in PACKAGES for name, path in modules(pkg)
               for line, module, names in imports(path)]  # fmt: skip


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_the_layers_below_it(package: str) -> None:
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {module}"
             for pkg, _, path, line, module, _ in ALL_IMPORTS if pkg == package
             if (other := first_party(module)) not in (None, package) and other not in ALLOWED[pkg]]  # fmt: skip
    assert not wrong, "\n".join(wrong)


def test_serving_never_imports_training() -> None:
    gan = exports("gan")
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {target}"
             for pkg, _, path, line, module, names in ALL_IMPORTS if pkg == "server" and first_party(module) == "gan"
             for target in (module, *(gan.get(n, f"{module}.{n}") for n in names)) if is_training(target)]  # fmt: skip
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("package", PACKAGES)
def test_other_packages_import_only_the_public_api(package: str) -> None:
    public = exports(package) if package != "bench" else set()
    wrong = []
    for pkg, _, path, line, module, names in ALL_IMPORTS:
        if pkg == package or first_party(module) != package:
            continue
        if module != package:
            wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module} (use `from {package} import …`)")
        else:
            wrong += [f"{path.relative_to(ROOT)}:{line} imports {package}.{n}, not in its exports"
                      for n in names if n not in public]  # fmt: skip
    assert not wrong, "\n".join(wrong)

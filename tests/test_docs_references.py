"""Every repository path and every Aegle module or name cited in README.md and docs/*.md exists.

Checked, in backticks and in plain text:
* paths under the repository's top-level directories (core/, sensors/, gan/, edge/, server/, aegle/, bench/,
  tests/, docs/, scripts/, .ci/), with an optional ``::test_name`` or ``:function`` suffix (the test or function
  must be defined in that file);
* Markdown links to local files (relative to the document);
* Markdown links' #anchors against the target's headings (GitHub's slugs);
* no "DESIGN §…" / "DESIGN.md" citation and no "issue N" label;
* dotted names starting with an Aegle package (``server.study.pipeline``, ``gan.triage.interpret``,
  ``python -m bench.ingest``): the module must exist, and a trailing attribute must be defined in it
  (``def``/``class``/assignment) or be in its package's ``_EXPORTS``.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP = ("core", "sensors", "gan", "edge", "server", "aegle", "bench", "tests", "docs", "scripts", ".ci")
PACKAGES = ("core", "sensors", "gan", "edge", "server", "aegle", "bench", "tests")
_TOP_ALTERNATIVES = "|".join(map(re.escape, TOP))
PATH_RE = re.compile(
    rf"(?<![\w/-])(?:\./)?((?:{_TOP_ALTERNATIVES})/[\w./{{}}|*<>-]*[\w/}}*>])((?:::|:)[A-Za-z_]\w*)?"
)
DOTTED_RE = re.compile(rf"(?<![\w./-])((?:{'|'.join(PACKAGES)})(?:\.[A-Za-z_]\w*)+)(?![\w/-])")
#: Not code: MQTT topics, logger names, placeholders.
NOT_CODE_PATHS = ("aegle/v1",)  # MQTT topic scheme (core/topics.py)
NOT_CODE_NAMES = {"aegle.pipeline": "logger name", "bench.NAME": "placeholder"}
#: A backticked top-level directory (`deploy/`) must exist, unless it is one of these relative/runtime directories.
DIR_RE = re.compile(r"`([\w.-]+)/`")
RELATIVE_DIRS = {"tmp", "ready", "given-up", "var", ".venv"}
LINK_RE = re.compile(r"\]\(([^)#\s]*)(?:#([^)]*))?\)")
#: Labels that must not appear in README.md or docs/: a design file that is not in the repository, issue numbers.
FORBIDDEN_RE = re.compile(r"DESIGN(?:\.md| §)|\b[Ii]ssues? ?[0-9]|issue-[0-9]")


def slugs(doc: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    fenced = False
    for line in doc.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if fenced or not line.startswith("#"):
            continue
        text = line.lstrip("#").strip()
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def defined_names(path: Path) -> set[str]:
    names: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom):
            names.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    if path.name == "__init__.py":
        src = path.read_text()
        names.update(re.findall(r'"([A-Za-z_]\w*)":\s*"', src))  # _EXPORTS keys
    return names


def module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def check_dotted(name: str) -> str | None:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        f = module_file(parts[:i])
        if f is None:
            continue
        rest = parts[i:]
        if not rest:
            return None
        if rest[0] in defined_names(f):
            return None  # attributes of attributes (methods) are not followed
        return f"{'.'.join(parts[:i])} has no name {rest[0]!r}"
    return "no such module"


def expand(path: str) -> list[str]:
    """`a/{b,c}/d` and `a/b|c` style alternatives are expanded; placeholders make the path a directory check."""
    m = re.search(r"\{([^{}]*,[^{}]*)\}", path)
    if m:
        return [x for alt in m.group(1).split(",") for x in expand(path[: m.start()] + alt + path[m.end():])]
    return [path]


def check_path(path: str, suffix: str | None) -> str | None:
    for p in expand(path):
        p = p.rstrip(".")
        if re.search(r"[{}<>*|]", p):  # a pattern: check the directory before the first placeholder
            p = re.split(r"[{}<>*|]", p)[0].rsplit("/", 1)[0]
        target = ROOT / p
        if not target.exists():
            return f"{p} does not exist"
        if (suffix and target.is_file() and target.suffix == ".py"
                and suffix.lstrip(":") not in defined_names(target)):  # fmt: skip
            return f"{p} defines no {suffix.lstrip(':')!r}"
    return None


def test_every_path_module_and_link_in_the_docs_exists() -> None:
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    problems: list[str] = []
    checked = 0
    for doc in docs:
        text = doc.read_text()
        rel = doc.relative_to(ROOT)
        for lineno, line in enumerate(text.splitlines(), 1):
            found: list[tuple[str, str | None]] = []
            for m in PATH_RE.finditer(line):
                if m.group(1).startswith(NOT_CODE_PATHS):
                    continue
                checked += 1
                err = check_path(m.group(1), m.group(2))
                if err:
                    found.append((m.group(0), err))
            for m in DIR_RE.finditer(line):
                if m.group(1) in RELATIVE_DIRS or m.group(1) in TOP:
                    continue  # TOP directories are checked by PATH_RE
                checked += 1
                if not (ROOT / m.group(1)).is_dir():
                    found.append((m.group(0), "no such directory in the repository"))
            for m in LINK_RE.finditer(line):
                target, anchor = m.group(1), m.group(2)
                if "://" in target or target.startswith("mailto:"):
                    continue
                checked += 1
                path = doc if not target else doc.parent / target
                if not path.exists():
                    found.append((target, "link target does not exist"))
                elif anchor is not None and path.suffix == ".md" and anchor not in slugs(path):
                    found.append((m.group(0), f"no heading with anchor #{anchor} in {path.relative_to(ROOT)}"))
            for m in FORBIDDEN_RE.finditer(line):
                checked += 1
                found.append((m.group(0), "label that points nowhere for a reader"))
            for m in DOTTED_RE.finditer(line):
                name = m.group(1)
                if name in NOT_CODE_NAMES or re.match(r"[\w]+\.(md|py|json|toml|conf|png|dcm|sqlite|onnx)$", name):
                    continue
                checked += 1
                err = check_dotted(name)
                if err:
                    found.append((name, err))
            problems += [f"{rel}:{lineno}: {ref}: {err}" for ref, err in found]
    assert checked > 300, f"only {checked} references found: is the pattern still right?"
    assert not problems, "\n".join(problems)

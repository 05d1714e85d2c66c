"""Loading a user's `.py` file from a watched folder as a module of its folder's package.

A file in a folder that belongs to an importable package (e.g. `acc/tasks` is `acc.tasks`)
becomes `acc.tasks.<stem>`, so both `from .helpers import f` and `from acc.tasks.helpers import f`
work; a file in any other folder lives in a synthetic package `acc_ext_<hash>` whose `__path__`
is that folder. The sibling modules a file imports are read from its syntax tree, and a failure
is turned into the line in that file and a one-line message.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.machinery
import importlib.util
import logging
import sys
import types
from pathlib import Path

log = logging.getLogger(__name__)

_ACC_DIR = Path(__file__).resolve().parent
_SKIPPED_STEMS = {"__init__", "base"}  # base classes are imported normally, never reloaded


def is_source_file(path: Path) -> bool:
    """True for a file name the registry loads: `<identifier>.py`, not `base.py`/`__init__.py`.

    The identifier rule also rejects hidden files (`.x.py`, `.#x.py`), `#x.py#`, `x.tmp.py`;
    backups and swap files (`x.py~`, `x.swp`, `x.tmp`) fail the `.py` suffix test.
    """
    return path.suffix == ".py" and path.stem.isidentifier() and path.stem not in _SKIPPED_STEMS


def package_name(folder: Path) -> str | None:
    """The dotted name under which `folder` is importable as a package, or None.

    Candidates come from the chain of parents holding `__init__.py` (longest first) and, for
    namespace packages, from the folder's place inside `acc/`; one is accepted only when
    importing it yields a package whose `__path__` contains `folder`.
    """
    parts: list[str] = []
    d = folder
    while (d / "__init__.py").is_file():
        parts.insert(0, d.name)
        d = d.parent
    candidates = [".".join(parts[i:]) for i in range(len(parts))]
    if folder.is_relative_to(_ACC_DIR):
        candidates.append(".".join(folder.relative_to(_ACC_DIR.parent).parts))
    for name in candidates:
        if not all(p.isidentifier() for p in name.split(".")):
            continue
        try:
            pkg = importlib.import_module(name)
        except Exception as e:  # a broken or unrelated package: try the next candidate
            log.debug("registry: %s is not importable as %s: %s", folder, name, e)
            continue
        if any(Path(p).resolve() == folder for p in getattr(pkg, "__path__", [])):
            return name
    return None


def synthetic_package(folder: Path) -> str:
    """Create (once) a package module whose `__path__` is `folder`; return its name."""
    name = "acc_ext_" + hashlib.sha256(str(folder).encode()).hexdigest()[:8]
    if name not in sys.modules:
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(folder)]
        pkg = importlib.util.module_from_spec(spec)
        pkg.__path__ = [str(folder)]
        sys.modules[name] = pkg
    return name


def execute_module(path: Path, name: str, package: str,
                   source: bytes) -> tuple[types.ModuleType, ast.Module]:
    """Run `source` as module `name`; return it and its syntax tree."""
    tree = ast.parse(source, filename=str(path))
    code = compile(tree, str(path), "exec")  # the real filename, so tracebacks show it
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)  # sets __file__, __package__, __spec__
    previous = sys.modules.get(name)
    sys.modules[name] = module  # dataclasses, pydantic and pickle look classes up here
    try:
        exec(code, module.__dict__)
    except BaseException:
        if previous is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = previous
        raise
    # `from pkg import stem` reads the package attribute before sys.modules: keep it current.
    setattr(sys.modules[package], path.stem, module)
    return module, tree


def sibling_imports(tree: ast.Module, module_name: str) -> set[str]:
    """Stems of the sibling modules that a module imports, relatively or absolutely.

    Read from the syntax tree rather than from the module's globals, so that
    `from .helpers import LIMIT` (an int, which has no `__module__`) is seen too.
    """
    package, _, own = module_name.rpartition(".")
    prefix = package + "."
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(module_name.split(".")[:-node.level])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target == package:  # `from . import helpers`: the names may be modules
                imported.update(f"{prefix}{alias.name}" for alias in node.names)
            else:
                imported.add(target)
    stems = {name[len(prefix):].split(".")[0] for name in imported if name.startswith(prefix)}
    return stems - {own}


def error_line(exc: BaseException, path: Path) -> int | None:
    """The line in `path` where `exc` happened: its syntax error line or deepest frame there."""
    if isinstance(exc, SyntaxError) and exc.filename == str(path):
        return exc.lineno
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == str(path):
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def error_message(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):  # str() would repeat the file and line
        return f"{type(exc).__name__}: {exc.msg}"
    return f"{type(exc).__name__}: {exc}"


def source_digest(source: bytes) -> str:
    """sha256 of a file's bytes: a file is executed again only when they change."""
    return hashlib.sha256(source).hexdigest()

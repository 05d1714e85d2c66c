"""One generic hot-reloading registry of user classes (tasks, generators, recipes).

A `Registry[T]` watches a few folders of plain Python files. Every top-level `*.py` file is
compiled and executed into a fresh module object; the non-abstract strict subclasses of `base`
that the file defines are registered under their class name. When a file is saved, renamed onto,
or deleted, a watcher thread (`watchfiles`) re-scans the folder and applies the difference:

- a changed file is executed again into a new module; its classes replace the old ones, so
  instances built from the old class keep working and callers detect staleness with
  `type(obj) is registry.get(name)`;
- a file that fails (syntax error, failed import, exception at import) records a
  `RegistryError` with the line in that file; its previous good classes stay registered;
- a sibling helper module (`from .helpers import f`) that changes also re-executes the files that
  use it, so they see the new helper;
- an unchanged file (touched, or rewritten with the same bytes) is not executed again.

How a file becomes a module of its folder's package (an importable one such as `acc.tasks`, or a
synthetic `acc_ext_<hash>`) is `acc.source_modules`. `base.py`, `__init__.py`, hidden files,
editor backups and temp files are never loaded.
`start()` creates watched folders that do not exist yet (a folder it cannot create is logged
and skipped); `scan()` just skips them.
"""

from __future__ import annotations

import ast
import inspect
import logging
import sys
import threading
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

import watchfiles

from acc.source_modules import (
    error_line,
    error_message,
    execute_module,
    is_source_file,
    package_name,
    sibling_imports,
    source_digest,
    synthetic_package,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

_WATCH_STEP_MS = 20  # quiet time that ends a batch of file events
_WATCH_DEBOUNCE_MS = 200  # longest a batch may keep growing before it is handled
_WATCH_TIMEOUT_MS = 100  # how often the watcher wakes without events


@dataclass(frozen=True)
class RegistryError:
    """Why one file could not be (fully) loaded."""

    file: str
    line: int | None
    message: str


@dataclass(frozen=True)
class RegistryChange:
    """What one scan or watcher batch changed."""

    added: list[str]
    updated: list[str]
    removed: list[str]
    errors: list[RegistryError]
    files: list[str]


@dataclass
class _FileState:
    """What the registry knows about one source file."""

    path: Path
    module_name: str
    digest: str = ""  # sha256 of the bytes last executed (or attempted)
    module: types.ModuleType | None = None  # last module that executed without error
    classes: dict[str, type] = field(default_factory=dict)  # names this file owns
    deps: set[Path] = field(default_factory=set)  # sibling files it uses
    error: RegistryError | None = None


def _first_paragraph(cls: type) -> str:
    doc = cls.__dict__.get("__doc__")
    if not isinstance(doc, str):
        return ""
    paragraph = inspect.cleandoc(doc).split("\n\n", 1)[0]
    return " ".join(line.strip() for line in paragraph.splitlines())


class Registry(Generic[T]):
    """Hot-reloading registry of the concrete subclasses of `base` found in `folders`."""

    def __init__(self, kind: str, base: type[T], folders: list[Path]) -> None:
        self.kind = kind
        self.base = base
        self.folders = [Path(f).resolve() for f in folders]
        self.version = 0
        self._files: dict[Path, _FileState] = {}
        self._classes: dict[str, type[T]] = {}
        self._owner: dict[str, Path] = {}  # class name -> file that registered it
        self._packages: dict[Path, str] = {}  # folder -> package name of its modules
        self._subscribers: list[Callable[[RegistryChange], None]] = []
        self._lock = threading.RLock()  # guards the state above; held only briefly
        self._changed = threading.Condition(self._lock)
        self._scan_lock = threading.RLock()  # one scan at a time (watcher or caller)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ----- reading -------------------------------------------------------------------------

    def get(self, name: str) -> type[T]:
        """The class registered as `name`; KeyError naming the known classes otherwise."""
        with self._lock:
            if name not in self._classes:
                raise KeyError(self._unknown(name))
            return self._classes[name]

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._classes

    def names(self) -> list[str]:
        """Registered class names, sorted."""
        with self._lock:
            return sorted(self._classes)

    def items(self) -> dict[str, type[T]]:
        """A snapshot of name -> class."""
        with self._lock:
            return dict(self._classes)

    def file_of(self, name: str) -> str:
        """Absolute path of the file that defines `name`."""
        with self._lock:
            if name not in self._owner:
                raise KeyError(self._unknown(name))
            return str(self._owner[name])

    def describe(self) -> list[dict[str, Any]]:
        """[{name, doc, params, file}] for every class, sorted by name (for the API and UI)."""
        with self._lock:
            entries = [(n, self._classes[n], str(self._owner[n])) for n in sorted(self._classes)]
        out = []
        for name, cls, file in entries:
            params: dict[str, Any] = {}
            schema = getattr(cls, "params_schema", None)
            if callable(schema):
                try:
                    params = schema()
                except Exception:  # user code: a broken schema must not break the listing
                    log.exception("registry %s: %s.params_schema() failed", self.kind, name)
            out.append({"name": name, "doc": _first_paragraph(cls), "params": params, "file": file})
        return out

    @property
    def errors(self) -> list[RegistryError]:
        """Current errors of all files, sorted by file."""
        with self._lock:
            return [s.error for _, s in sorted(self._files.items()) if s.error is not None]

    def _unknown(self, name: str) -> str:
        known = ", ".join(sorted(self._classes)) or "none"
        return f"no {self.kind} named {name!r}; known: {known}"

    # ----- notification --------------------------------------------------------------------

    def subscribe(self, callback: Callable[[RegistryChange], None]) -> Callable[[], None]:
        """Call `callback(change)` after every change; returns a function that unsubscribes."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def wait_for(self, predicate: Callable[[Registry[T]], bool], timeout: float) -> bool:
        """Block until `predicate(self)` holds (re-checked on each change); False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)

    # ----- scanning ------------------------------------------------------------------------

    def scan(self) -> RegistryChange:
        """Load new and changed files and drop deleted ones, in every folder, synchronously."""
        with self._scan_lock:
            present: dict[Path, bytes] = {}
            for folder in self.folders:
                present.update(self._read_folder(folder))
            changed = [p for p, src in present.items()
                       if p not in self._files or self._files[p].digest != source_digest(src)]
            gone = [p for p in self._files if p not in present]
            return self._apply(changed, gone, present)

    def _read_folder(self, folder: Path) -> dict[Path, bytes]:
        if not folder.is_dir():
            return {}
        out = {}
        for path in sorted(folder.iterdir()):
            if not is_source_file(path) or not path.is_file():
                continue
            try:
                out[path] = path.read_bytes()
            except FileNotFoundError:  # deleted between listing and reading: it is gone
                continue
            except OSError as e:
                log.warning("registry %s: cannot read %s: %s", self.kind, path, e)
        return out

    def _apply(self, changed: list[Path], gone: list[Path],
               present: dict[Path, bytes]) -> RegistryChange:
        """Remove `gone`, execute `changed` and their dependents, report and notify."""
        before = {p: s.error for p, s in self._files.items()}
        before_classes = self.items()
        touched: set[Path] = set()
        for path in gone:
            self._remove(path)
            touched.add(path)
        # Dependents of changed or deleted files run again, after what they depend on.
        todo = self._with_dependents(set(changed) | set(gone)) - set(gone)
        for path in self._dependency_order(todo & present.keys()):
            self._load(path, present[path])
            touched.add(path)
        # Files in error may now succeed: a missing sibling appeared or a duplicate name freed.
        freed = before_classes.keys() - self.items().keys()
        if gone or freed or any(p not in before for p in changed):
            retry = [p for p, s in self._files.items()
                     if s.error is not None and p not in touched and p in present]
            for path in self._dependency_order(set(retry)):
                self._load(path, present[path])
                touched.add(path)
        return self._report(touched, before, before_classes)

    def _report(self, touched: set[Path], before: dict[Path, RegistryError | None],
                before_classes: dict[str, type]) -> RegistryChange:
        with self._lock:
            after = self._classes
            change = RegistryChange(
                added=sorted(n for n in after if n not in before_classes),
                updated=sorted(n for n in after
                               if n in before_classes and after[n] is not before_classes[n]),
                removed=sorted(n for n in before_classes if n not in after),
                errors=[self._files[p].error for p in sorted(touched)  # type: ignore[misc]
                        if p in self._files and self._files[p].error is not None],
                files=[str(p) for p in sorted(touched)],
            )
            errors_changed = any(
                before.get(p) != (self._files[p].error if p in self._files else None)
                for p in touched)
            altered = bool(change.added or change.updated or change.removed or errors_changed)
            if altered:
                self.version += 1
                self._changed.notify_all()
            subscribers = list(self._subscribers)
        if altered:
            for callback in subscribers:
                try:
                    callback(change)
                except Exception:  # a subscriber's bug must never break the registry
                    log.exception("registry %s: subscriber %r failed", self.kind, callback)
            with self._changed:  # wake waiters again: predicates may depend on subscribers
                self._changed.notify_all()
        return change

    # ----- loading one file ----------------------------------------------------------------

    def _package_for(self, folder: Path) -> str:
        if folder not in self._packages:
            self._packages[folder] = package_name(folder) or synthetic_package(folder)
        return self._packages[folder]

    def _load(self, path: Path, source: bytes) -> None:
        """Execute `path` into a fresh module and register its classes (or record its error)."""
        package = self._package_for(path.parent)
        name = f"{package}.{path.stem}"
        state = self._files.get(path) or _FileState(path, name)
        state.digest = source_digest(source)
        try:
            module, tree = execute_module(path, name, package, source)
        except (Exception, SystemExit) as e:  # user code: record, keep the last good version
            error = RegistryError(str(path), error_line(e, path), error_message(e))
            if error != state.error:  # retries of a broken file do not repeat the warning
                log.warning("registry %s: %s:%s: %s", self.kind, path, error.line, error.message)
            with self._lock:
                state.error = error
                self._files[path] = state
            return
        state.module = module
        state.deps = {path.parent / f"{stem}.py" for stem in sibling_imports(tree, name)}
        lines = {n.name: n.lineno for n in tree.body if isinstance(n, ast.ClassDef)}
        self._register(state, self._classes_in(module), lines)

    def _classes_in(self, module: types.ModuleType) -> dict[str, type[T]]:
        found: dict[str, type[T]] = {}
        for obj in list(vars(module).values()):
            if not isinstance(obj, type) or obj.__module__ != module.__name__:
                continue
            try:
                if obj is self.base or not issubclass(obj, self.base):  # type: ignore[arg-type]
                    continue
            except TypeError:  # exotic metaclasses
                continue
            if inspect.isabstract(obj) or obj.__dict__.get("abstract", False):
                continue
            found[obj.__name__] = obj
        return found

    def _register(self, state: _FileState, found: dict[str, type[T]],
                  lines: dict[str, int]) -> None:
        """Replace the classes of `state.path` by `found`; a name another file owns is an error."""
        path = state.path
        with self._lock:
            for name in state.classes:
                if self._owner.get(name) == path:
                    del self._classes[name], self._owner[name]
            state.classes = {}
            state.error = None
            for name, cls in sorted(found.items()):
                other = self._owner.get(name)
                if other is not None and other != path:
                    state.error = RegistryError(
                        str(path), lines.get(name),
                        f"DuplicateName: class {name!r} is already defined in {other}")
                    continue
                state.classes[name] = cls
                self._classes[name] = cls
                self._owner[name] = path
            self._files[path] = state

    def _remove(self, path: Path) -> None:
        """Forget a deleted file: its classes, its error and its module."""
        with self._lock:
            state = self._files.pop(path)
            for name in state.classes:
                if self._owner.get(name) == path:
                    del self._classes[name], self._owner[name]
        if state.module is not None and sys.modules.get(state.module_name) is state.module:
            del sys.modules[state.module_name]
        package = sys.modules.get(state.module_name.rpartition(".")[0])
        if state.module is not None and getattr(package, path.stem, None) is state.module:
            delattr(package, path.stem)

    # ----- helper dependencies -------------------------------------------------------------

    def _with_dependents(self, roots: set[Path]) -> set[Path]:
        """`roots` plus every file that depends on them, transitively."""
        found, frontier = set(roots), list(roots)
        while frontier:
            path = frontier.pop()
            for other, state in self._files.items():
                if path in state.deps and other not in found:
                    found.add(other)
                    frontier.append(other)
        return found

    def _dependency_order(self, paths: set[Path]) -> list[Path]:
        """`paths` sorted so that a file comes after the files it depends on (cycles: by name)."""
        order: list[Path] = []
        seen: set[Path] = set()

        def visit(path: Path) -> None:
            if path in seen:
                return
            seen.add(path)
            state = self._files.get(path)
            for dep in sorted(state.deps if state else ()):
                if dep in paths:
                    visit(dep)
            order.append(path)

        for path in sorted(paths):
            visit(path)
        return order

    # ----- watching ------------------------------------------------------------------------

    def start(self) -> None:
        """Scan once, then watch the folders from a daemon thread until `stop()`.

        Returns once the watcher is listening, so a file written right after is never missed.
        """
        if self._thread is not None and self._thread.is_alive():
            return
        for folder in self.folders:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                log.warning("registry %s: cannot create %s, not watching it: %s",
                            self.kind, folder, e)
        self.scan()
        self._stop = threading.Event()
        listening = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(self._stop, listening),
                                        name=f"registry-{self.kind}", daemon=True)
        self._thread.start()
        listening.wait(timeout=2.0)

    def stop(self) -> None:
        """Stop the watcher thread (returns within about a second); safe to call twice."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        self._thread = None

    def _watch(self, stop: threading.Event, listening: threading.Event) -> None:
        """Rescan on every batch of events; survive anything until `stop` is set."""
        folders = [f for f in self.folders if f.is_dir()]
        if not folders:
            listening.set()
            return
        while not stop.is_set():
            try:
                # The short rust timeout only makes the first (empty) batch arrive as soon as
                # the watch is set up: that is when `start()` may return.
                for changes in watchfiles.watch(
                        *folders, watch_filter=self._relevant, step=_WATCH_STEP_MS,
                        debounce=_WATCH_DEBOUNCE_MS, stop_event=stop, recursive=False,
                        rust_timeout=_WATCH_TIMEOUT_MS, yield_on_timeout=True,
                        raise_interrupt=False):
                    if not listening.is_set():
                        listening.set()
                        self._rescan_safely()  # files saved between start()'s scan and now
                    elif changes:
                        self._rescan_safely()
            except Exception:
                log.exception("registry %s: watcher failed; restarting it", self.kind)
                if not stop.wait(0.5):
                    self._rescan_safely()  # catch what happened while the watcher was down

    def _rescan_safely(self) -> None:
        try:
            self.scan()
        except Exception:
            log.exception("registry %s: rescan failed", self.kind)

    def _relevant(self, change: watchfiles.Change, path: str) -> bool:
        # Every event for a candidate file triggers a full rescan of the folders, which is
        # robust to any order of create/rename/delete events an editor may produce.
        p = Path(path)
        return is_source_file(p) and p.parent in self.folders

"""Tests for acc.registry: loading, errors, helpers, editor saves and the watcher thread."""

from __future__ import annotations

import logging
import os
import sys
import textwrap
import threading
import time
import types
import uuid
from pathlib import Path

import pytest

from acc.registry import Registry, RegistryChange


class Thing:
    """Base class of the test plugins (user files import it from `regtest_base`)."""

    @classmethod
    def params_schema(cls) -> dict:
        return {"type": "object"}


LOADS: list[str] = []  # module names, appended by test files that record their execution

RECORD = "import regtest_base; regtest_base.LOADS.append(__name__)\n"


@pytest.fixture(autouse=True)
def base_module(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("regtest_base")
    module.Thing = Thing  # type: ignore[attr-defined]
    module.LOADS = LOADS  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "regtest_base", module)
    LOADS.clear()


@pytest.fixture
def make_registry():
    made: list[Registry] = []

    def make(*folders: Path) -> Registry[Thing]:
        registry = Registry("thing", Thing, list(folders))
        made.append(registry)
        return registry

    yield make
    for registry in made:
        registry.stop()


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def atomic_write(path: Path, text: str, tmp_name: str | None = None) -> None:
    tmp = path.with_name(tmp_name or path.name + ".tmp")
    write(tmp, text)
    os.replace(tmp, path)


def plugin(name: str, value: object = 1, extra: str = "") -> str:
    return f"from regtest_base import Thing\n\nclass {name}(Thing):\n    value = {value!r}\n{extra}"


# ----- loading ----------------------------------------------------------------------------


def test_scan_registers_concrete_subclasses(tmp_path: Path, make_registry) -> None:
    write(tmp_path / "shapes.py", '''
        import abc
        from regtest_base import Thing

        class Circle(Thing):
            """A round thing.

            More detail that is not part of the summary.
            """

        class Partial(Thing):
            abstract = True

        class Abstract(Thing, abc.ABC):
            @abc.abstractmethod
            def area(self): ...

        class Square(Partial):
            pass

        class Unrelated:
            pass
        ''')
    registry = make_registry(tmp_path)
    change = registry.scan()

    assert registry.names() == ["Circle", "Square"]
    assert change.added == ["Circle", "Square"] and change.files == [str(tmp_path / "shapes.py")]
    assert "Circle" in registry and "Thing" not in registry
    assert registry.file_of("Circle") == str(tmp_path / "shapes.py")
    assert registry.items()["Square"].__module__.startswith("acc_ext_")
    assert registry.describe()[0] == {"name": "Circle", "doc": "A round thing.",
                                      "params": {"type": "object"},
                                      "file": str(tmp_path / "shapes.py")}
    assert registry.describe()[1]["doc"] == ""
    with pytest.raises(KeyError, match="known: Circle, Square"):
        registry.get("Triangle")


def test_changed_file_replaces_class_and_old_instances_keep_working(
        tmp_path: Path, make_registry) -> None:
    write(tmp_path / "a.py", plugin("A", 1))
    registry = make_registry(tmp_path)
    registry.scan()
    old = registry.get("A")()
    write(tmp_path / "a.py", plugin("A", 2))
    change = registry.scan()

    assert change.updated == ["A"] and registry.get("A").value == 2
    assert old.value == 1 and type(old) is not registry.get("A")


def test_unchanged_content_is_not_reloaded(tmp_path: Path, make_registry) -> None:
    path = write(tmp_path / "a.py", RECORD + plugin("A"))
    registry = make_registry(tmp_path)
    registry.scan()
    version = registry.version
    os.utime(path, (time.time() + 5, time.time() + 5))
    path.write_text(path.read_text())

    change = registry.scan()
    assert change.files == [] and registry.version == version and len(LOADS) == 1


def test_ignored_files_are_never_loaded(tmp_path: Path, make_registry) -> None:
    for name in ["base.py", "__init__.py", ".hidden.py", "x.py~", "#x.py#", ".#x.py",
                 "x.swp", "x.tmp", "x.py.tmp", "x.tmp.py", "notes.txt"]:
        write(tmp_path / name, RECORD + plugin("Ignored"))
    (tmp_path / "__pycache__").mkdir()
    write(tmp_path / "__pycache__" / "cached.py", RECORD + plugin("Cached"))
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "nested.py", RECORD + plugin("Nested"))
    write(tmp_path / "real.py", RECORD + plugin("Real"))
    registry = make_registry(tmp_path)
    registry.scan()

    assert registry.names() == ["Real"] and registry.errors == []
    assert [m.rpartition(".")[2] for m in LOADS] == ["real"]


def test_missing_folder_is_skipped_by_scan_and_created_by_start(
        tmp_path: Path, make_registry) -> None:
    folder = tmp_path / "later"
    registry = make_registry(folder)
    assert registry.scan().files == [] and registry.names() == []
    registry.start()
    assert folder.is_dir()
    write(folder / "a.py", plugin("A"))
    assert registry.wait_for(lambda r: "A" in r, timeout=2)


# ----- errors -----------------------------------------------------------------------------


def test_syntax_error_keeps_previous_version_and_fix_clears_it(
        tmp_path: Path, make_registry) -> None:
    path = write(tmp_path / "a.py", plugin("A", 1))
    registry = make_registry(tmp_path)
    registry.scan()
    version = registry.version

    write(path, "from regtest_base import Thing\n\nclass A(Thing)\n    value = 2\n")
    change = registry.scan()
    [error] = registry.errors
    assert (error.file, error.line) == (str(path), 3)
    assert error.message.startswith("SyntaxError:")
    assert change.errors == [error] and registry.version == version + 1
    assert registry.get("A").value == 1

    write(path, plugin("A", 3))
    change = registry.scan()
    assert registry.errors == [] and change.errors == [] and registry.get("A").value == 3


def test_import_error_and_exception_at_import_are_recorded(
        tmp_path: Path, make_registry) -> None:
    write(tmp_path / "imports.py", "x = 1\nimport nope_missing_module\n")
    write(tmp_path / "raises.py", '''\
        def fail():
            return undefined_name

        fail()
        ''')
    write(tmp_path / "exits.py", "import sys\nsys.exit(3)\n")
    write(tmp_path / "good.py", plugin("Good"))
    registry = make_registry(tmp_path)
    registry.scan()

    errors = {Path(e.file).name: e for e in registry.errors}
    assert errors["imports.py"].line == 2
    assert errors["imports.py"].message == (
        "ModuleNotFoundError: No module named 'nope_missing_module'")
    assert errors["raises.py"].line == 2  # the deepest frame in that file
    assert errors["raises.py"].message.startswith("NameError:")
    assert errors["exits.py"].message == "SystemExit: 3"
    assert registry.names() == ["Good"]


def test_duplicate_class_name_is_an_error_until_the_first_goes(
        tmp_path: Path, make_registry) -> None:
    first = write(tmp_path / "a_first.py", plugin("Same", 1))
    second = write(tmp_path / "b_second.py", "\n" + plugin("Same", 2) + plugin("Other"))
    registry = make_registry(tmp_path)
    registry.scan()

    [error] = registry.errors
    assert error.file == str(second) and error.line == 4 and str(first) in error.message
    assert registry.get("Same").value == 1 and "Other" in registry

    first.unlink()
    change = registry.scan()
    assert registry.errors == [] and registry.get("Same").value == 2
    assert "Same" in change.updated and registry.file_of("Same") == str(second)


def test_delete_removes_classes_error_and_module(tmp_path: Path, make_registry) -> None:
    good = write(tmp_path / "a.py", plugin("A"))
    bad = write(tmp_path / "bad.py", "oops(\n")
    registry = make_registry(tmp_path)
    registry.scan()
    module_name = registry.get("A").__module__
    assert module_name in sys.modules and len(registry.errors) == 1

    good.unlink()
    bad.unlink()
    change = registry.scan()
    assert change.removed == ["A"] and registry.names() == [] and registry.errors == []
    assert module_name not in sys.modules


# ----- helper modules ---------------------------------------------------------------------


def test_helper_change_reaches_dependents(tmp_path: Path, make_registry) -> None:
    helper = write(tmp_path / "helpers.py", "def scale():\n    return 2\n")
    write(tmp_path / "uses.py", "from .helpers import scale\n" + plugin("Uses", extra=(
        "    factor = scale()\n")))
    write(tmp_path / "chain.py", "from .uses import Uses\n\nclass Chain(Uses):\n    pass\n")
    registry = make_registry(tmp_path)
    registry.scan()
    assert registry.get("Uses").factor == 2 and registry.get("Chain").factor == 2

    write(helper, "def scale():\n    return 5\n")
    change = registry.scan()
    assert change.updated == ["Chain", "Uses"]
    assert registry.get("Uses").factor == 5 and registry.get("Chain").factor == 5
    assert issubclass(registry.get("Chain"), registry.get("Uses"))


def test_missing_helper_that_appears_later_fixes_the_dependent(
        tmp_path: Path, make_registry) -> None:
    write(tmp_path / "uses.py", "from .helpers import scale\n" + plugin("Uses"))
    registry = make_registry(tmp_path)
    registry.scan()
    assert registry.errors[0].message.startswith("ModuleNotFoundError") and "Uses" not in registry

    write(tmp_path / "helpers.py", "def scale():\n    return 1\n")
    registry.scan()
    assert registry.errors == [] and "Uses" in registry


def test_package_folder_supports_relative_and_absolute_helper_imports(
        tmp_path: Path, make_registry, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = "regpkg_" + uuid.uuid4().hex[:8]
    folder = tmp_path / pkg / "sub"
    folder.mkdir(parents=True)
    write(tmp_path / pkg / "__init__.py", "")
    write(folder / "__init__.py", "")
    write(folder / "base.py", "from regtest_base import Thing\n")
    helper = write(folder / "helpers.py", "x = 1\n")
    write(folder / "rel.py", "from .helpers import x\n" + plugin("Rel", extra="    got = x\n"))
    write(folder / "absolute.py", f"from {pkg}.sub.helpers import x\nfrom {pkg}.sub.base "
          "import Thing\n\nclass Abs(Thing):\n    got = x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = make_registry(folder)
    registry.scan()

    assert registry.errors == []
    assert registry.get("Rel").__module__ == f"{pkg}.sub.rel"
    assert registry.get("Abs").__module__ == f"{pkg}.sub.absolute"
    assert registry.get("Rel").got == 1 and registry.get("Abs").got == 1

    write(helper, "x = 2\n")
    registry.scan()
    assert registry.get("Rel").got == 2 and registry.get("Abs").got == 2
    assert sys.modules[f"{pkg}.sub"].helpers is sys.modules[f"{pkg}.sub.helpers"]
    for name in [m for m in sys.modules if m.startswith(pkg)]:
        monkeypatch.delitem(sys.modules, name)


# ----- subscribers ------------------------------------------------------------------------


def test_subscribe_and_unsubscribe(tmp_path: Path, make_registry) -> None:
    registry = make_registry(tmp_path)
    seen: list[RegistryChange] = []
    unsubscribe = registry.subscribe(seen.append)
    write(tmp_path / "a.py", plugin("A"))
    registry.scan()
    assert [c.added for c in seen] == [["A"]]

    unsubscribe()
    (tmp_path / "a.py").unlink()
    registry.scan()
    assert len(seen) == 1 and registry.names() == []


def test_raising_subscriber_is_logged_and_harmless(
        tmp_path: Path, make_registry, caplog: pytest.LogCaptureFixture) -> None:
    registry = make_registry(tmp_path)
    seen: list[RegistryChange] = []

    def broken(change: RegistryChange) -> None:
        raise RuntimeError("subscriber bug")

    registry.subscribe(broken)
    registry.subscribe(seen.append)
    registry.start()
    with caplog.at_level(logging.ERROR, logger="acc.registry"):
        write(tmp_path / "a.py", plugin("A"))
        assert registry.wait_for(lambda r: "A" in r, timeout=2)
        write(tmp_path / "b.py", plugin("B"))
        assert registry.wait_for(lambda r: "B" in r, timeout=2)
    assert registry.wait_for(lambda r: len(seen) == 2, timeout=2)
    assert "subscriber bug" in caplog.text


# ----- watcher ----------------------------------------------------------------------------


def test_watcher_picks_up_new_changed_and_deleted_files(tmp_path: Path, make_registry) -> None:
    registry = make_registry(tmp_path)
    registry.start()
    path = write(tmp_path / "a.py", plugin("A", 1))
    assert registry.wait_for(lambda r: "A" in r, timeout=2)
    write(path, plugin("A", 2))
    assert registry.wait_for(lambda r: r.get("A").value == 2, timeout=2)
    path.unlink()
    assert registry.wait_for(lambda r: "A" not in r, timeout=2)


def test_watcher_handles_atomic_rename_and_never_loads_temp_files(
        tmp_path: Path, make_registry) -> None:
    registry = make_registry(tmp_path)
    registry.start()
    target = tmp_path / "a.py"
    for value, tmp_name in [(1, "a.py.tmp"), (2, ".a.py.swp"), (3, "a.py___jb_tmp___"),
                            (4, ".#a.py"), (5, "4913")]:
        atomic_write(target, RECORD + plugin("A", value), tmp_name)
        assert registry.wait_for(lambda r: "A" in r and r.get("A").value == value, timeout=2)

    assert registry.errors == [] and registry.names() == ["A"]
    assert {m.rpartition(".")[2] for m in LOADS} == {"a"} and len(LOADS) == 5


def test_watcher_partial_write_then_completion(tmp_path: Path, make_registry) -> None:
    registry = make_registry(tmp_path)
    registry.start()
    path = tmp_path / "part.py"
    full = plugin("Part", "done")
    with open(path, "w") as f:
        f.write(full[:40])
        f.flush()
        assert registry.wait_for(lambda r: len(r.errors) == 1, timeout=2)
        f.write(full[40:])
    assert registry.wait_for(lambda r: "Part" in r and not r.errors, timeout=2)
    assert registry.get("Part").value == "done"


def test_watcher_reloads_dependents_of_a_changed_helper(tmp_path: Path, make_registry) -> None:
    helper = write(tmp_path / "helpers.py", "LIMIT = 1\n")
    write(tmp_path / "uses.py", "from . import helpers\n" + plugin("Uses"))
    registry = make_registry(tmp_path)
    registry.start()
    assert registry.get("Uses").value == 1
    atomic_write(helper, "LIMIT = 7\n")
    assert registry.wait_for(
        lambda r: sys.modules[r.get("Uses").__module__].helpers.LIMIT == 7, timeout=2)


def test_wait_for_times_out(tmp_path: Path, make_registry) -> None:
    registry = make_registry(tmp_path)
    start = time.monotonic()
    assert registry.wait_for(lambda r: "Never" in r, timeout=0.1) is False
    assert time.monotonic() - start < 1


def test_stop_ends_the_watcher_thread_promptly(tmp_path: Path, make_registry) -> None:
    registry = make_registry(tmp_path)
    registry.start()

    def watchers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "registry-thing"]

    assert len(watchers()) == 1
    start = time.monotonic()
    registry.stop()
    assert time.monotonic() - start < 1 and watchers() == []
    registry.stop()  # idempotent

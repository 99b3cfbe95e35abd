"""Only tap.py reads the global reactor (DESIGN.md §1 (c)): every other module is handed
the reactor, typed as the interfaces it calls (fanout_tx/_reactor.py). import-linter cannot
say this: it sees external packages only whole (``twisted``), not ``twisted.internet.reactor``,
so this test reads every module's syntax tree, imports inside functions included."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

PACKAGE = Path(__file__).resolve().parent.parent / "fanout_tx"
ROOT = PACKAGE / "tap.py"


def global_reactor_imports(source: str) -> list[int]:
    """Lines that import ``twisted.internet.reactor``, in any spelling."""
    return sorted(node.lineno for node in ast.walk(ast.parse(source)) if _imports_reactor(node))


def _imports_reactor(node: ast.AST) -> bool:
    if isinstance(node, ast.Import):
        return any(alias.name == "twisted.internet.reactor" for alias in node.names)
    if isinstance(node, ast.ImportFrom):
        return node.module == "twisted.internet.reactor" or (
            node.module == "twisted.internet"
            and any(alias.name == "reactor" for alias in node.names))
    return False


def zmq_context_instances(source: str) -> list[int]:
    """Lines that call ``zmq.Context.instance()``: the process's one context is tap.py's."""
    return [node.lineno for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Attribute) and node.attr == "instance"
            and isinstance(node.value, ast.Attribute) and node.value.attr == "Context"]


class GlobalReactorTests(SynchronousTestCase):
    def offenders(self, find: Callable[[str], list[int]]) -> list[str]:
        found = []
        for path in sorted(PACKAGE.rglob("*.py")):
            if path != ROOT:
                found += [f"{path.relative_to(PACKAGE.parent)}:{line}"
                          for line in find(path.read_text())]
        return found

    def test_only_tap_imports_the_global_reactor(self) -> None:
        self.assertEqual(self.offenders(global_reactor_imports), [])

    def test_only_tap_takes_the_zmq_context(self) -> None:
        self.assertEqual(self.offenders(zmq_context_instances), [])

    def test_every_spelling_is_found(self) -> None:
        source = ("from twisted.internet import reactor\n"
                  "def f():\n    from twisted.internet import reactor as clock\n"
                  "import twisted.internet.reactor\n"
                  "from twisted.internet import task\n")
        self.assertEqual(global_reactor_imports(source), [1, 3, 4])
        self.assertEqual(zmq_context_instances("import zmq\nzmq.Context.instance()\n"), [2])
        self.assertNotEqual(global_reactor_imports(ROOT.read_text()), [])

from __future__ import annotations

import subprocess
import sys

import magistrate
from magistrate import errors


def test_public_api_is_exactly_all():
    public = {name for name in dir(magistrate) if not name.startswith("_")}
    submodules = {
        "backends",
        "batch",
        "cli",
        "completion",
        "config",
        "decision",
        "embedded",
        "engine",
        "errors",
        "evaluate",
        "harmony",
        "ids",
        "item",
        "lint",
        "pipeline",
        "policy",
        "ray",
        "prompt",
        "readout",
        "safety",
        "server",
        "store",
        "subject",
        "verdict",
    }
    assert public - submodules == set(magistrate.__all__) - {"__version__"}
    for name in magistrate.__all__:
        assert getattr(magistrate, name) is not None


def test_errors_form_one_hierarchy():
    for name in (
        "ConfigError",
        "InputError",
        "PolicyError",
        "ModelError",
        "MissingDependency",
        "BackendError",
        "BackendTimeout",
        "BackendUnavailable",
    ):
        assert issubclass(getattr(magistrate, name), magistrate.MagistrateError)
    assert issubclass(magistrate.BackendTimeout, magistrate.BackendError)


def test_importing_magistrate_loads_no_database_driver():
    """The engine depends on a recorder protocol, not on the store package."""
    code = "import magistrate, sys; assert 'sqlalchemy' not in sys.modules, 'sqlalchemy loaded'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_error_maps_to_one_http_status():
    table = {
        errors.TooLarge("x"): (413, "too_large"),
        errors.NotFound("x"): (404, None),
        errors.Forbidden("x"): (403, None),
        errors.Overloaded("x", retry_after=3): (429, "queue_full"),
        errors.InputError("x"): (422, None),
        errors.PolicyError("x"): (422, None),
        errors.StoreUnavailable("x"): (503, "store_unavailable"),
        errors.BackendTimeout("x"): (503, "backend_unavailable"),
        errors.ErrorBudgetExceeded("x"): (500, None),
        ValueError("x"): (500, None),
    }
    for exc, (status, code) in table.items():
        answer = errors.http_status(exc)
        assert (answer.status, answer.code) == (status, code), type(exc).__name__
    assert issubclass(errors.StoreUnavailable, errors.StoreError)
    assert errors.EvalAborted is errors.ErrorBudgetExceeded


def test_every_public_exception_lives_in_errors_py():
    """One exception tree: no module but errors.py defines a public exception class."""
    import ast
    from pathlib import Path

    src = Path(magistrate.__file__).parent
    found = []
    for path in src.rglob("*.py"):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
                tree = {n for n in dir(errors) if isinstance(getattr(errors, n), type)}
                if any(b.endswith(("Error", "Exception")) or b in tree for b in bases):
                    found.append(f"{path.relative_to(src)}:{node.lineno} {node.name}")
    assert found == []

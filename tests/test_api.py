from __future__ import annotations

import magistrate


def test_public_api_is_exactly_all():
    public = {name for name in dir(magistrate) if not name.startswith("_")}
    submodules = {
        "backends",
        "cli",
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
        "policy",
        "prompt",
        "server",
        "store",
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

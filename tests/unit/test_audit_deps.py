"""`scripts/audit_deps.py` (make audit-deps): what a pip-audit report turns into."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "audit_deps.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("audit_deps", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_known_vulnerability_fails_and_names_the_package_and_fix() -> None:
    report = {
        "dependencies": [
            {"name": "fastapi", "version": "0.165.0", "vulns": []},
            {"name": "h11", "version": "0.16.0", "vulns": [{"id": "GHSA-xxxx", "fix_versions": ["0.16.1"]}]},
        ]
    }
    code, lines = load_script().summarize(report)
    assert code == 1
    assert "h11==0.16.0: GHSA-xxxx (fixed in: 0.16.1)" in lines
    assert lines[-1] == "audit-deps: 2 locked packages audited, 0 not audited, 1 known vulnerabilities"


def test_a_clean_audit_passes_and_lists_what_was_not_audited() -> None:
    report = {
        "dependencies": [
            {"name": "fastapi", "version": "0.165.0", "vulns": []},
            {"name": "httpx2", "skip_reason": "Dependency not found on PyPI and could not be audited: httpx2 (2.16.2)"},
        ]
    }
    code, lines = load_script().summarize(report)
    assert code == 0
    assert lines == [
        "not audited: httpx2: Dependency not found on PyPI and could not be audited: httpx2 (2.16.2)",
        "audit-deps: 1 locked packages audited, 1 not audited, 0 known vulnerabilities",
    ]


def test_an_unreachable_advisory_service_says_so_and_passes() -> None:
    report = {"dependencies": [{"name": "fastapi", "skip_reason": "Dependency not found on PyPI and could not be audited"}]}
    code, lines = load_script().summarize(report)
    assert code == 0
    assert "nothing was audited" in lines[0]

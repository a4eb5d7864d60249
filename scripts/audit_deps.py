"""`make audit-deps`: pip-audit over the exact versions in requirements.lock.

Exit 1 only for a known vulnerability in a locked dependency. When the advisory service cannot
be reached (no network, a mirror that does not serve its JSON API), say so and exit 0: a CI run
must never turn red because of the network or a newly published advisory, so this is kept out of
`make test` and run on purpose.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
UNREACHABLE_HINTS = ("ConnectionError", "ConnectTimeout", "ReadTimeout", "Max retries exceeded", "Name or service")


def main() -> int:
    pip_audit = Path(sys.executable).with_name("pip-audit")
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "audit.json"
        # --no-deps --disable-pip: audit the pinned lines as they are, without resolving them again.
        command = [
            str(pip_audit),
            "--requirement",
            str(LOCK),
            "--no-deps",
            "--disable-pip",
            "--progress-spinner",
            "off",
            "--timeout",
            "15",
            "--format",
            "json",
            "--output",
            str(report_path),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
        report = json.loads(report_path.read_text()) if report_path.exists() else None
    if report is None:
        if any(hint in done.stderr for hint in UNREACHABLE_HINTS):
            print("audit-deps: the advisory service could not be reached; nothing was audited (exit 0)")
            return 0
        print(done.stderr, file=sys.stderr)
        print(f"audit-deps: pip-audit failed (exit {done.returncode})", file=sys.stderr)
        return 2
    code, lines = summarize(report)
    print("\n".join(lines))
    return code


def summarize(report: dict[str, Any]) -> tuple[int, list[str]]:
    """The exit status and the lines to print for a pip-audit JSON report."""
    lines: list[str] = []
    dependencies = report.get("dependencies", [])
    audited = [d for d in dependencies if "skip_reason" not in d]
    skipped = [d for d in dependencies if "skip_reason" in d]
    if not audited:
        lines.append(
            f"audit-deps: the advisory service could not be reached or knew none of the {len(dependencies)}"
            " locked packages; nothing was audited (exit 0)"
        )
        if skipped:
            lines.append(f"  first answer: {skipped[0]['skip_reason']}")
        return 0, lines
    vulnerable = [d for d in audited if d.get("vulns")]
    for dep in vulnerable:
        for vuln in dep["vulns"]:
            fixes = ", ".join(vuln.get("fix_versions") or []) or "no fixed version yet"
            lines.append(f"{dep['name']}=={dep['version']}: {vuln['id']} (fixed in: {fixes})")
    for dep in skipped:
        lines.append(f"not audited: {dep['name']}: {dep['skip_reason']}")
    lines.append(
        f"audit-deps: {len(audited)} locked packages audited, {len(skipped)} not audited,"
        f" {sum(len(d['vulns']) for d in vulnerable)} known vulnerabilities"
    )
    return (1 if vulnerable else 0), lines


if __name__ == "__main__":
    sys.exit(main())

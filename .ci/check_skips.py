"""check_skips.py JUNIT_XML: fail when a test was skipped (or xfailed) that .ci/allowed-skips does not list.

A skip passes silently in pytest's summary, so a test whose condition stops holding on CI (a missing
package, a device, a folder) would stop testing anything unnoticed. Run from the repository root."""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ALLOWED = Path(__file__).with_name("allowed-skips")


def node_id(classname: str, name: str) -> str:
    """pytest's node id (tests/test_x.py::TestClass::test_name[param]) from a JUnit testcase: the longest
    dotted prefix of the class name that is a file is the module."""
    parts = classname.split(".") if classname else name.split(".")
    rest = [name] if classname else []
    for k in range(len(parts), 0, -1):
        module = "/".join(parts[:k]) + ".py"
        if Path(module).is_file():
            return "::".join([module, *parts[k:], *rest])
    return "::".join([classname, name])


def allowed_patterns() -> list[re.Pattern]:
    """The listed node ids, `*` matching anything (and nothing else special: ids hold brackets)."""
    lines = (line.split("#", 1)[0].strip() for line in ALLOWED.read_text().splitlines())
    return [re.compile(".*".join(map(re.escape, line.split("*")))) for line in lines if line]


def main() -> int:
    cases = ET.parse(sys.argv[1]).getroot().iter("testcase")
    patterns = allowed_patterns()
    ran = skipped = 0
    refused = []
    for case in cases:
        ran += 1
        skip = case.find("skipped")
        if skip is None:
            continue
        skipped += 1
        test = node_id(case.get("classname", ""), case.get("name", ""))
        if not any(p.fullmatch(test) for p in patterns):
            kind = "xfail" if skip.get("type") == "pytest.xfail" else "skip"
            refused.append(f"  {test} ({kind}: {skip.get('message', '')})")
    if ran == 0:
        print(f"check_skips: {sys.argv[1]} lists no test", file=sys.stderr)
        return 1
    if refused:
        print(f"check_skips: {len(refused)} skipped tests are not in {ALLOWED}:", *refused, sep="\n", file=sys.stderr)
        return 1
    print(f"check_skips: {ran} tests, {skipped} skipped, all of them allowed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

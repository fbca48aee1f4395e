"""The gateway stands on other libraries' public APIs: what would break on their next release is
kept in one compatibility module, small, with its reasons and a version check.

Walks the packages' source: no private member of anything outside the module that owns it, no
attribute known to be undocumented, and nothing assigned onto another library's modules or
classes, anywhere but the compatibility module.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("config", "gateway", "protocols", "bridges")
COMPAT = ROOT / "protocols" / "compat.py"
MAX_PRIVATE_IN_COMPAT = 5
OTHER_LIBRARIES = frozenset(
    {
        "autobahn",
        "channels",
        "channels_redis",
        "daphne",
        "django",
        "paho",
        "redis",
        "twisted",
        "aiomqtt",
        "asgiref",
        "msgpack",
        "prometheus_client",
    }
)
# Attributes other libraries keep but do not document (found in earlier versions of this code).
UNDOCUMENTED = frozenset(
    {
        "dataBuffer",  # twisted's write buffer
        "offset",  # twisted's position in it
        "send_queue",  # autobahn's
        "application_instances",  # Channels' server state
        "ring_size",  # channels-redis's
        "consistent_hash",  # channels-redis's
        "crypter",  # channels-redis's serializer
        "random_prefix_length",  # channels-redis's serializer
        "brpop_timeout",  # channels-redis's
        "non_local_name",  # channels-redis's
        "client_prefix",  # channels-redis's
    }
)


def sources() -> list[Path]:
    return sorted(
        path
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if "migrations" not in path.parts
    )


def test_private_members_are_reached_only_in_the_compatibility_module() -> None:
    found = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--select",
            "SLF001",
            "--ignore-noqa",  # a suppressed finding is still a finding
            "--output-format",
            "json",
            "--exit-zero",
            *PACKAGES,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    findings = json.loads(found.stdout)
    outside = [f"{f['filename']}:{f['location']['row']}" for f in findings]
    outside = [place for place in outside if not place.startswith(str(COMPAT))]
    assert outside == []
    inside = [f for f in findings if f["filename"] == str(COMPAT)]
    assert len(inside) <= MAX_PRIVATE_IN_COMPAT
    lines = COMPAT.read_text().splitlines()
    for finding in inside:
        line = lines[finding["location"]["row"] - 1]
        # Each one says why, on its line.
        assert "noqa: SLF001" in line
        assert len(line.split("noqa: SLF001", 1)[1].strip(" -:")) >= 10, line


def _imported_names(tree: ast.Module) -> set[str]:
    """Names bound to another library's modules or objects by the module's imports."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in OTHER_LIBRARIES:
                    names.add((alias.asname or alias.name).split(".")[0])
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and node.module.split(".")[0] in OTHER_LIBRARIES
        ):
            names.update(alias.asname or alias.name for alias in node.names)
    return names


def _root_name(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_is_assigned_onto_another_librarys_modules_or_classes(path: Path) -> None:
    if path == COMPAT:
        return
    tree = ast.parse(path.read_text(), filename=str(path))
    theirs = _imported_names(tree)
    patched = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("setattr", "delattr")
            and node.args
        ):
            targets = [ast.Attribute(value=node.args[0], attr="?", ctx=ast.Store())]
        for target in targets:
            if isinstance(target, ast.Attribute) and _root_name(target) in theirs:
                patched.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(target)}")
    assert patched == []


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_undocumented_attribute_of_another_library_is_read(path: Path) -> None:
    if path == COMPAT:
        return
    tree = ast.parse(path.read_text(), filename=str(path))
    read = [
        f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in UNDOCUMENTED
    ]
    read += [
        f"{path.relative_to(ROOT)}:{node.lineno}: getattr(..., {node.args[1].value!r})"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("getattr", "hasattr")
        and len(node.args) >= 2
        and isinstance(node.args[1], ast.Constant)
        and node.args[1].value in UNDOCUMENTED
    ]
    assert read == []


def test_the_walk_finds_a_patch_and_an_undocumented_read() -> None:
    # The checks above must be able to fail: a sample of what they exist to catch.
    sample = ast.parse(
        "from daphne.server import Server\n"
        "import twisted.internet\n"
        "Server.create_application = None\n"
        "twisted.internet.reactor = None\n"
        "n = len(transport.dataBuffer)\n"
    )
    theirs = _imported_names(sample)
    assigned = [
        ast.unparse(t)
        for node in ast.walk(sample)
        if isinstance(node, ast.Assign)
        for t in node.targets
        if isinstance(t, ast.Attribute) and _root_name(t) in theirs
    ]
    assert assigned == ["Server.create_application", "twisted.internet.reactor"]
    assert [
        n.attr for n in ast.walk(sample) if isinstance(n, ast.Attribute) and n.attr in UNDOCUMENTED
    ] == ["dataBuffer"]

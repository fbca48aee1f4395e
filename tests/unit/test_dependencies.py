"""What gets installed: every distribution the code imports is declared in pyproject.toml, the
lock files in requirements/ pin what it declares (with hashes), and the Makefile and the
Dockerfile install from those lock files and from nothing else."""

import ast
import re
import shlex
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from importlib.metadata import distribution, packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
# The gateway's own packages, as pyproject.toml lists them for the wheel ("config*" -> config).
PACKAGES = [p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]]
FIRST_PARTY = {*PACKAGES, "tests", "benchmarks"}

# Each installed set: the code that needs it, the extra that adds to the runtime
# dependencies for it, and its lock file.
SETS = {
    "run": ([*PACKAGES, "manage.py"], None, "requirements/run.lock"),
    "test": (["tests"], "test", "requirements/test.lock"),
    "bench": (["benchmarks"], "bench", "requirements/bench.lock"),
}


def declared(extra: str | None) -> list[Requirement]:
    specs = PROJECT["dependencies"] + (PROJECT["optional-dependencies"][extra] if extra else [])
    return [Requirement(spec) for spec in specs]


# Imports.


def sources(paths: list[str]) -> Iterator[Path]:
    for name in paths:
        path = ROOT / name
        yield from [path] if path.is_file() else sorted(path.rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every absolute import in ``path``, at any depth (in functions and try blocks too)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
    return {m for m in modules if m.split(".")[0] not in {*sys.stdlib_module_names, *FIRST_PARTY}}


@cache
def top_level_names() -> dict[str, list[str]]:
    return packages_distributions()


@cache
def files_of(dist: str) -> frozenset[str]:
    return frozenset(str(f) for f in distribution(dist).files or ())


def provides(dist: str, stem: str) -> bool:
    """``dist`` installs the module or package ``stem`` ("twisted/internet")."""
    return any(
        f in (f"{stem}.py", f"{stem}/__init__.py")
        or (f.startswith(f"{stem}.") and f.endswith((".so", ".pyd")))
        for f in files_of(dist)
    )


def distribution_of(module: str) -> NormalizedName:
    """The distribution that installs ``module``.

    Several may put files under one top-level name (daphne and autobahn add plugins to
    ``twisted/``): the one that installs the module itself, or its closest parent, counts.
    """
    parts = module.split(".")
    candidates = sorted(set(top_level_names().get(parts[0], [])))
    if not candidates:
        # Not installed here (atheris installs on Linux x86-64 only): its distribution is
        # named as it is.
        return canonicalize_name(parts[0])
    for depth in range(len(parts), 0, -1):
        owners = [d for d in candidates if provides(d, "/".join(parts[:depth]))]
        if len(owners) == 1:
            return canonicalize_name(owners[0])
    assert len(candidates) == 1, f"cannot tell which of {candidates} installs {module}"
    return canonicalize_name(candidates[0])


def test_a_top_level_name_shared_by_distributions_goes_to_the_one_that_installs_it() -> None:
    # daphne and autobahn also ship files in twisted/ (plugins): Twisted installs the package.
    if len(top_level_names().get("twisted", [])) < 2:
        pytest.skip("only one distribution installs files in twisted/ here")
    assert distribution_of("twisted.internet.defer") == "twisted"
    assert distribution_of("yaml") == "pyyaml"


@pytest.mark.parametrize("name", SETS)
def test_every_imported_distribution_is_declared(name: str) -> None:
    paths, extra, _lock = SETS[name]
    names = {canonicalize_name(r.name) for r in declared(extra)}
    missing: dict[str, set[str]] = {}
    for path in sources(paths):
        for module in imported_modules(path):
            dist = distribution_of(module)
            if dist not in names:
                missing.setdefault(dist, set()).add(str(path.relative_to(ROOT)))
    where = f"[project.optional-dependencies] {extra}" if extra else "[project] dependencies"
    assert not missing, f"imported but not in pyproject.toml's {where}: {missing}"


# Lock files.


def lock_entries(path: Path) -> list[tuple[Requirement, list[str]]]:
    """Each requirement in a lock file, with its hashes."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    entries = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        hashes = re.findall(r"--hash=(\S+)", line)
        requirement = re.sub(r"\s*--hash=\S+", "", line)
        assert not requirement.startswith("-"), f"{path.name}: an option in a lock: {line}"
        entries.append((Requirement(requirement), hashes))
    return entries


def pins(lock: str) -> set[tuple[NormalizedName, str]]:
    """(name, version) of each entry. A name may have several, one per environment marker
    (numpy for Python 3.11 and for later ones); a lock for more packages may need one in more
    environments, so markers are not compared."""
    return {(canonicalize_name(r.name), str(r.specifier)) for r, _ in lock_entries(ROOT / lock)}


@pytest.mark.parametrize("name", SETS)
def test_a_lock_pins_every_distribution_exactly_with_hashes(name: str) -> None:
    entries = lock_entries(ROOT / SETS[name][2])
    assert entries
    for requirement, hashes in entries:
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", requirement
        assert hashes, f"{requirement} has no hash"
        assert all(h.startswith("sha256:") for h in hashes), requirement


@pytest.mark.parametrize("name", SETS)
def test_a_lock_holds_what_pyproject_declares_within_its_bounds(name: str) -> None:
    _paths, extra, lock = SETS[name]
    locked: dict[str, list[Version]] = {}
    for requirement, _ in lock_entries(ROOT / lock):
        (pin,) = requirement.specifier
        locked.setdefault(canonicalize_name(requirement.name), []).append(Version(pin.version))
    for requirement in declared(extra):
        versions = locked.get(canonicalize_name(requirement.name))
        assert versions, f"{requirement.name} is declared but not in {lock}: run `make lock`"
        for version in versions:
            assert requirement.specifier.contains(version, prereleases=True), (
                f"{lock} has {requirement.name} {version}, outside {requirement}: run `make lock`"
            )


@pytest.mark.parametrize("name", ["test", "bench"])
def test_the_test_and_bench_locks_keep_every_pin_of_the_run_lock(name: str) -> None:
    assert pins(SETS["run"][2]) <= pins(SETS[name][2])


# What an image built for PostgreSQL adds (the Dockerfile's WITH_POSTGRES, compose's ha profile).
POSTGRES_LOCK = "requirements/postgres.lock"


def test_the_postgres_lock_is_the_run_lock_and_the_driver_pinned_with_hashes() -> None:
    extra = pins(POSTGRES_LOCK) - pins(SETS["run"][2])
    assert pins(SETS["run"][2]) <= pins(POSTGRES_LOCK)
    assert {name for name, _ in extra} == {"psycopg", "psycopg-binary"}
    for requirement, hashes in lock_entries(ROOT / POSTGRES_LOCK):
        assert hashes, f"{requirement} has no hash"
    (driver,) = PROJECT["optional-dependencies"]["postgres"]
    version = next(v for n, v in extra if n == "psycopg")
    assert Requirement(driver).specifier.contains(version.removeprefix("=="))


def test_the_test_and_bench_locks_agree_where_they_overlap() -> None:
    # One virtualenv holds both after `make test` and `make bench`.
    test, bench = pins(SETS["test"][2]), pins(SETS["bench"][2])
    shared = {n for n, _ in test} & {n for n, _ in bench}
    assert {p for p in test if p[0] in shared} == {p for p in bench if p[0] in shared}


def test_the_run_lock_holds_the_releases_protocols_compat_adjusts() -> None:
    # Elsewhere the gateway runs daphne, autobahn and Twisted as they ship: slower.
    compat = pytest.importorskip("protocols.compat")
    locked = {
        canonicalize_name(r.name): Version(next(iter(r.specifier)).version)
        for r, _ in lock_entries(ROOT / SETS["run"][2])
    }
    for name, first, before in compat.WRITTEN_FOR:
        version = locked[canonicalize_name(name)]
        assert first <= version.release < before, f"{SETS['run'][2]} has {name} {version}"


# What installs from them.


def instructions(text: str, continuation: str = "\\") -> list[str]:
    """Logical lines: comments and blank lines dropped, continued lines joined."""
    lines, current = [], ""
    for raw in text.splitlines():
        if not current and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        line = raw.rstrip()
        if line.endswith(continuation):
            current += line[: -len(continuation)] + " "
            continue
        lines.append(current + line)
        current = ""
    return lines


def requirement_files(argv: list[str]) -> list[str]:
    """The ``-r`` / ``--requirement`` files of a pip command line."""
    found = []
    for i, arg in enumerate(argv):
        if arg in ("-r", "--requirement") and i + 1 < len(argv):
            found.append(argv[i + 1])
        elif arg.startswith("--requirement="):
            found.append(arg.split("=", 1)[1])
    return found


def pip_installs(command: str) -> list[list[str]]:
    """The arguments after ``pip install`` of each such command in a shell line."""
    installs = []
    for part in re.split(r"&&|;|\|\|", command):
        argv = shlex.split(part)
        for i in range(len(argv) - 1):
            if argv[i].endswith("pip") and argv[i + 1] == "install":
                installs.append(argv[i + 2 :])
    return installs


def test_the_dockerfile_installs_from_the_run_lock_with_hashes() -> None:
    lock = SETS["run"][2]
    steps = [
        (*line.split(None, 1), "")[:2] for line in instructions((ROOT / "Dockerfile").read_text())
    ]
    # COPY's sources and destination, its --chown and the like left out.
    copies = [
        (i, [a for a in shlex.split(args) if not a.startswith("--")])
        for i, (word, args) in enumerate(steps)
        if word.upper() == "COPY"
    ]
    lock_copies = [(i, argv[-1]) for i, argv in copies if lock in argv[:-1]]
    assert lock_copies, f"the Dockerfile does not COPY {lock}"
    copied_at, destination = lock_copies[0]
    assert destination in (lock, f"./{lock}"), "the lock must keep its path for `pip -r`"

    installs = [
        (i, argv)
        for i, (word, args) in enumerate(steps)
        if word.upper() == "RUN"
        for argv in pip_installs(args)
    ]
    assert installs, "the Dockerfile installs nothing with pip"
    from_lock = [i for i, argv in installs if destination in requirement_files(argv)]
    assert from_lock, f"no RUN installs {destination}"
    assert min(from_lock) > copied_at, "the lock is installed before it is copied in"
    for _, argv in installs:
        # Either a lock, every file checked against its hashes, or the gateway alone.
        if requirement_files(argv):
            assert "--require-hashes" in argv, argv
            assert requirement_files(argv) in ([destination], [POSTGRES_LOCK]), argv
        else:
            assert "--no-deps" in argv, f"{argv} would install dependencies the lock does not pin"

    base = next(args for word, args in steps if word.upper() == "FROM")
    python = re.match(r"python:(\d+\.\d+)", base)
    assert python, f"the image is not built FROM an official python image: {base}"
    assert SpecifierSet(PROJECT["requires-python"]).contains(python[1] + ".0")
    makefile = (ROOT / "Makefile").read_text()
    (minimum,) = re.findall(r"--python-version (\d+\.\d+)", makefile)
    assert Version(python[1]) >= Version(minimum), "the locks are not written for its Python"


def makefile_rules() -> dict[str, tuple[list[str], list[str]]]:
    """Each rule's target -> (prerequisites, recipe lines), with the Makefile's own ``:=``
    variables expanded."""
    text = (ROOT / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+)\s*[:?]?=\s*(.*)$", text, re.MULTILINE))

    def expand(line: str) -> str:
        for _ in range(5):
            line = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m[1], m[0]), line)
        return line

    rules: dict[str, tuple[list[str], list[str]]] = {}
    current: list[str] | None = None
    for line in instructions(text):
        if line.startswith("\t") and current is not None:
            current.append(expand(line.strip()))
        elif re.match(r"^[^\s=]+:(?!=)", line):
            target, prerequisites = line.split(":", 1)
            current = []
            rules[expand(target)] = (expand(prerequisites).split(), current)
        else:
            current = None
    return rules


@pytest.mark.parametrize("name", SETS)
def test_the_makefile_installs_each_set_from_its_lock_and_reinstalls_when_it_changes(
    name: str,
) -> None:
    lock = SETS[name][2]
    prerequisites, recipe = makefile_rules()[f".venv/.{name}-installed"]
    assert lock in prerequisites
    installs = [argv for line in recipe for argv in pip_installs(line)]
    assert installs
    for argv in installs:
        if requirement_files(argv):
            assert requirement_files(argv) == [lock], argv
            assert "--require-hashes" in argv, argv
        else:
            assert "--no-deps" in argv, argv
    assert any(requirement_files(argv) == [lock] for argv in installs)

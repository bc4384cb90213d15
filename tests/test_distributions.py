"""Three distributions from one repository (issue 16, item 1):

- the agents' client (clients/python, `agentqueue_client`): redis-py and nothing else of
  ours or of the operator's; built as a wheel, installed alone into a fresh virtualenv, it
  produces and consumes on a real redis-server;
- the operator (`agentqueue`): depends on the client for the wire contract, never imports
  the dev tooling (the image check is in test_images.py);
- the dev tooling (devtools, `agentqueue_devtools`): used by make and the tests.

The import rules are read from the sources (every import statement, at any depth).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

from .queue_harness import provision_queue

pytest_plugins = ["tests.redis_fixtures"]

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "clients" / "python"
OPERATOR = ROOT / "operator" / "agentqueue"
DEVTOOLS = ROOT / "devtools" / "agentqueue_devtools"

#: What the client may import besides the standard library and itself: redis-py, and the
#: optional extras (each only where its absence is handled).
CLIENT_MAY_IMPORT = {"redis"}
CLIENT_OPTIONAL = {"jsonschema", "orjson", "opentelemetry"}


def imports(package: Path) -> Iterator[tuple[str, str, bool]]:
    """(module file, top-level name imported, guarded) for every absolute import; guarded:
    inside a function or a try block (so an ImportError can be handled)."""
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        guarded_nodes: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Try):
                guarded_nodes |= {id(n) for n in ast.walk(node) if n is not node}
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                yield (str(path.relative_to(ROOT)), name.split(".")[0],
                       id(node) in guarded_nodes)


def test_the_client_imports_only_redis_and_the_standard_library() -> None:
    found = list(imports(CLIENT / "agentqueue_client"))
    assert found, "no imports read"
    stdlib = sys.stdlib_module_names
    wrong = [(f, n) for f, n, _ in found
             if n not in stdlib and n != "agentqueue_client"
             and n not in CLIENT_MAY_IMPORT | CLIENT_OPTIONAL]
    assert not wrong, f"the client imports outside its allow-list: {wrong}"
    unguarded = [(f, n) for f, n, guarded in found if n in CLIENT_OPTIONAL and not guarded]
    assert not unguarded, f"optional packages imported unconditionally: {unguarded}"


def test_the_operator_never_imports_the_dev_tooling() -> None:
    uses = [(f, guarded) for f, n, guarded in imports(OPERATOR) if n == "agentqueue_devtools"]
    # Only `agentqueue dev`, which says in one line that the tooling is not installed.
    assert uses == [("operator/agentqueue/cli.py", True)], uses


def test_the_dev_tooling_uses_the_operator_only_through_what_it_declares() -> None:
    project = tomllib.loads((ROOT / "devtools" / "pyproject.toml").read_text())["project"]
    import_names = {"pyyaml": "yaml"}  # distribution -> the module it installs
    declared = {import_names.get(n, n.replace("-", "_")) for n in
                (Requirement(d).name.lower() for d in project["dependencies"])}
    third_party = {n for _, n, _ in imports(DEVTOOLS)
                   if n not in sys.stdlib_module_names and n != "agentqueue_devtools"}
    assert third_party <= declared, third_party - declared


def test_each_distribution_holds_only_its_own_package() -> None:
    operator = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert operator["tool"]["setuptools"]["packages"]["find"]["where"] == ["operator"]
    assert sorted(p.name for p in (ROOT / "operator").iterdir()
                  if p.is_dir() and (p / "__init__.py").is_file()) == ["agentqueue"]
    client = tomllib.loads((CLIENT / "pyproject.toml").read_text())
    assert client["project"]["dependencies"] == ["redis>=5.0"]
    assert client["tool"]["setuptools"]["packages"] == ["agentqueue_client"]
    deps = operator["project"]["dependencies"]
    assert any(d.startswith("agentqueue-client[") and d.endswith("==0.1.0") for d in deps)


# --- the client alone, in a fresh virtualenv ----------------------------------------------

@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with the client's wheel and what pip resolves for it (redis-py)."""
    work = tmp_path_factory.mktemp("client-dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--wheel-dir", str(work / "dist"), str(CLIENT)],
                   check=True, timeout=300)
    (wheel,) = (work / "dist").glob("agentqueue_client-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                    "--disable-pip-version-check", str(wheel)], check=True, timeout=600,
                   env=clean_env(), cwd=work)
    return venv


def clean_env() -> dict[str, str]:
    """No PYTHONPATH (a source root on it would look installed to the fresh venv)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


def installed(venv: Path) -> set[str]:
    out = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json",
                          "--disable-pip-version-check"], capture_output=True, text=True,
                         check=True, timeout=120, env=clean_env(), cwd=venv).stdout
    return {d["name"].lower() for d in json.loads(out)}


def test_the_client_installs_alone_with_redis_py_only(client_venv: Path) -> None:
    wanted = {"agentqueue-client", "redis"}
    if sys.version_info < (3, 11, 3):
        wanted.add("async-timeout")  # redis-py's own requirement below 3.11.3
    assert installed(client_venv) - {"pip", "setuptools"} == wanted
    check = subprocess.run([str(client_venv / "bin" / "python"), "-m", "pip", "check"],
                           capture_output=True, text=True, timeout=120, env=clean_env(),
                           cwd=client_venv)
    assert check.returncode == 0, check.stdout


AGENT = textwrap.dedent("""
    import asyncio, importlib.util, sys
    from agentqueue_client import ConfigError, Consumer, Producer

    # Nothing of the operator, Kubernetes or the dev tooling is importable here.
    present = [m for m in ("agentqueue", "agentqueue_devtools", "kopf", "kubernetes",
                           "pydantic", "prometheus_client", "jsonschema", "cryptography")
               if importlib.util.find_spec(m)]
    assert not present, present

    async def main() -> None:
        mode = sys.argv[1]
        if mode == "produce":
            async with Producer.from_env() as producer:
                for i in range(20):
                    await producer.send({"n": i}, idempotency_key=f"k{i}")
            print("sent 20")
        elif mode == "consume":
            seen, acked = [], []
            async with Consumer.from_env(group="workers", consumer_name="c1",
                                         block_ms=200) as consumer:
                async for msg in consumer:
                    seen.append(msg.payload["n"])
                    if msg.payload["n"] == 7 and msg.deliveries == 1:
                        await msg.nack("try again", delay=0.05)  # retried, not lost
                        continue
                    await msg.ack()
                    acked.append(msg.payload["n"])
                    if len(acked) == 20:
                        break
            print("acked", sorted(acked), "deliveries", len(seen))
        else:  # a queue with a schema, without jsonschema: refused before reading
            try:
                async with Consumer.from_env(group="workers", consumer_name="c1") as c:
                    await c.start()
            except ConfigError as exc:
                print("refused:", exc)

    asyncio.run(main())
""")


def _run_agent(venv: Path, config: Any, mode: str, tmp_path: Path) -> str:
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path),
           "REDIS_URL": config.url, "REDIS_USERNAME": config.username or "",
           "REDIS_PASSWORD": config.password or "", "AQ_NAMESPACE": config.namespace,
           "AQ_QUEUE": config.queue, "AQ_QUEUE_TYPE": config.queue_type,
           "AQ_PARTITIONS": str(config.partitions)}
    out = subprocess.run([str(venv / "bin" / "python"), str(script), mode], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.strip()


async def test_the_client_alone_produces_and_consumes_on_a_real_redis(
        client_venv: Path, redis_client: Any, redis_target: Any, tmp_path: Path) -> None:
    queue = await provision_queue(redis_client, redis_target, "team-a", "jobs", "workers",
                                  partitions=2)
    assert _run_agent(client_venv, queue.producer, "produce", tmp_path) == "sent 20"
    out = _run_agent(client_venv, queue.consumer, "consume", tmp_path)
    assert out == f"acked {list(range(20))} deliveries 21", out


async def test_a_schema_queue_needs_the_schema_extra_and_says_so(
        client_venv: Path, redis_client: Any, redis_target: Any, tmp_path: Path) -> None:
    queue = await provision_queue(redis_client, redis_target, "team-a", "typed", "workers",
                                  schema={"type": "object", "required": ["n"]})
    out = _run_agent(client_venv, queue.consumer, "schema", tmp_path)
    assert out == ("refused: this queue has a JSON Schema and validating it needs "
                   "jsonschema: pip install 'agentqueue-client[schema]'"), out

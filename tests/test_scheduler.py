"""The xdist scheduler of `make test` (tests/conftest.py): each module on one worker, the
machine-changing modules as one serial unit, that unit first, and every worker runs exactly
the tests the scheduler believes it runs."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

from .conftest import MACHINE_MODULES, module_scheduling, scope_of

COLLECTION = [
    "tests/test_acl_plan.py::test_a",
    "tests/test_acl_plan.py::test_b",
    "tests/test_dev_stack.py::test_dev_up_env_down",
    "tests/test_drills_network.py::test_network_partition",
    "tests/test_e2e_pods.py::test_one",
    "tests/test_e2e_pods.py::test_two",
    "tests/test_e2e_pods.py::test_three",
    "tests/test_keys.py::test_a",
    "tests/test_keys.py::test_b",
    "tests/test_keys.py::test_c",
    "tests/test_keys.py::test_d",
    "tests/test_node.py::test_ready",
    "tests/test_redis_acl.py::test_a",
    "tests/test_zz.py::test_last",
]


class FakeWorker:
    """A worker as xdist's controller sees it: it runs the positions it is sent, in its
    own collection."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.gateway = SimpleNamespace(id=name)
        self.shutting_down = False
        self.queue: list[int] = []

    def send_runtest_some(self, indices: list[int]) -> None:
        self.queue.extend(indices)

    def shutdown(self) -> None:
        self.shutting_down = True


def _run(workers: int = 2) -> tuple[dict[str, list[str]], list[str]]:
    config = SimpleNamespace(getvalue=lambda name: [f"{workers}*popen"],
                             option=SimpleNamespace(loadscopereorder=True))
    sched = module_scheduling()(config, None)
    nodes = [FakeWorker(f"gw{i}") for i in range(workers)]
    for node in nodes:
        sched.add_node(node)
        sched.add_node_collection(node, list(COLLECTION))
    sched.schedule()
    ran: dict[str, list[str]] = defaultdict(list)
    first_units: list[str] = []
    for node in nodes:
        if node.queue:
            first_units.append(scope_of(COLLECTION[node.queue[0]]))
    # Round robin, one test per worker per turn: what the worker runs is its own
    # collection at the position it was sent.
    while any(node.queue for node in nodes):
        for node in nodes:
            if node.queue:
                index = node.queue.pop(0)
                ran[node.name].append(COLLECTION[index])
                sched.mark_test_complete(node, index)
    assert sched.tests_finished
    return ran, first_units


def test_machine_modules_run_serially_on_one_worker_and_first() -> None:
    ran, first_units = _run()
    machine_workers = {worker for worker, ids in ran.items()
                       for nodeid in ids if scope_of(nodeid) == "machine"}
    assert len(machine_workers) == 1
    worker = machine_workers.pop()
    machine = [nodeid for nodeid in COLLECTION if scope_of(nodeid) == "machine"]
    # Back to back on that worker, in collection order, nothing else in between.
    start = ran[worker].index(machine[0])
    assert ran[worker][start:start + len(machine)] == machine
    assert "machine" in first_units


def test_every_test_runs_once_and_each_module_on_one_worker() -> None:
    ran, _ = _run()
    everything = [nodeid for ids in ran.values() for nodeid in ids]
    assert sorted(everything) == sorted(COLLECTION)
    worker_of: dict[str, set[str]] = defaultdict(set)
    for worker, ids in ran.items():
        for nodeid in ids:
            worker_of[scope_of(nodeid)].add(worker)
    assert all(len(workers) == 1 for workers in worker_of.values()), worker_of


def test_machine_modules_are_the_ones_that_change_the_machine() -> None:
    changing = {"test_node", "test_e2e_pods", "test_images", "test_dev_stack",
                "test_drills_network"}
    assert changing == MACHINE_MODULES
    assert scope_of("tests/test_node.py::test_ready[x]") == "machine"
    assert scope_of("tests/test_keys.py::test_a") == "tests/test_keys.py"

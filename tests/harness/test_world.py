"""Warm worlds: results, per-rank errors with tracebacks, timeouts with stacks, crashes, restarts."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from ckptconf.harness import World, WorldError, WorldTimeout, get_world
from ckptconf.harness.world import _wait_for_text

from . import rank_functions as rf


@pytest.fixture(scope="module")
def pair():
    with World(2) as w:
        yield w


def test_results_come_back_in_rank_order(pair):
    assert pair.run(rf.rank_and_size, "x") == [(0, 2, "x"), (1, 2, "x")]
    assert pair.run(rf.all_reduce_sum) == [3.0, 3.0]


def test_an_exception_names_the_rank_with_traceback_and_output(pair):
    with pytest.raises(WorldError) as info:
        pair.run(rf.fail_on, 1)
    error = info.value
    assert error.failed_ranks == [1]
    assert error.errors[0].type_name == "KeyError"
    assert "planted failure on rank 1" in error.errors[0].message
    assert "in fail_on" in error.errors[0].traceback
    assert error.output[1].strip() == "about to check rank 1"
    assert error.results == ["ok", None]
    # the pool survives an ordinary exception
    pid_before = pair.pids
    assert pair.run(rf.rank_and_size, 1)[1] == (1, 2, 1)
    assert pair.pids == pid_before


def test_an_error_raised_on_several_ranks_is_shown_once_and_stuck_ranks_each_with_its_stack():
    from ckptconf.harness.errors import RankError

    message = "save failed on rank(s) [0, 1]:\n--- traceback of rank 0 ---\nTraceback: inner"
    raised = [RankError(r, "CheckpointError", message, f"Traceback: rank {r}\n") for r in (1, 0)]
    text = str(WorldError(raised))
    assert text.splitlines() == [
        "2 rank(s) failed: ranks 0, 1",
        "  ranks 0, 1: CheckpointError: save failed on rank(s) [0, 1]:",
        "--- ranks 0, 1 (rank 0's traceback) ---",
        "Traceback: rank 0",
    ]
    stuck = [RankError(r, "Stuck", "no reply in 5 s", f"File x, line {r}") for r in (0, 1, 2)]
    stuck.append(RankError(3, "Stuck", "no reply in 5 s", "File x, line 0"))
    lines = str(WorldTimeout(stuck, reason="timed out")).splitlines()
    assert lines == [
        "timed out: ranks 0, 1, 2, 3",
        "  ranks 0, 1, 2, 3: Stuck: no reply in 5 s",
        "--- ranks 0, 3 ---",
        "File x, line 0",
        "--- rank 1 ---",
        "File x, line 1",
        "--- rank 2 ---",
        "File x, line 2",
    ]


def test_per_call_objects_are_fresh_and_the_process_group_is_reused(pair):
    box = ["controller"]
    first = pair.run(rf.mutate_argument, box)
    second = pair.run(rf.mutate_argument, box)
    assert [r[0] for r in first] == [["controller", 0], ["controller", 1]]
    assert [r[0] for r in second] == [["controller", 0], ["controller", 1]]
    assert box == ["controller"]
    assert first[0][1] == second[0][1]  # same default process group object in rank 0


def test_an_unpicklable_result_is_an_error_not_a_hang(pair):
    with pytest.raises(WorldError, match="result not picklable"):
        pair.run(rf.unpicklable_result)


def test_a_timeout_dumps_the_stuck_ranks_stacks_and_restarts():
    with World(2) as world:
        world.run(rf.rank_and_size, 0)
        with pytest.raises(WorldTimeout) as info:
            world.run(rf.stuck_in_a_collective_on, 1, timeout=5)
        error = info.value
        assert error.failed_ranks == [0, 1]  # rank 1 waits in recv, rank 0 in the closing barrier
        stack = error.errors[1].traceback
        assert "most recent call first" in stack and "stuck_in_a_collective_on" in stack
        assert "most recent call first" in error.errors[0].traceback
        assert not world.alive
        assert world.run(rf.rank_and_size, "again") == [(0, 2, "again"), (1, 2, "again")]
        assert world.restarts == 1


@pytest.mark.parametrize(
    "how, expected", [("exit", "exit code 3"), ("sigkill", "killed by SIGKILL")]
)
def test_a_dead_rank_is_reported_with_its_exit_and_the_pool_restarts(how, expected):
    with World(2) as world:
        world.run(rf.rank_and_size, 0)
        with pytest.raises(WorldError) as info:
            if how == "exit":
                world.run(rf.exit_on, 1, 3, timeout=60)
            else:
                world.run(rf.sigkill_on, 1, timeout=60)
        assert "rank 1 died during call of" in str(info.value)
        assert expected in str(info.value)
        assert world.run(rf.rank_and_size, "after") == [(0, 2, "after"), (1, 2, "after")]


def test_a_rank_without_a_log_file_does_not_break_a_call():
    with World(2) as world:
        world.start()
        os.remove(world._logs()[1])  # as when a rank is killed before it opens its log
        assert world.run(rf.rank_and_size, "x") == [(0, 2, "x"), (1, 2, "x")]


def test_cuda_modes_skip_cleanly_without_a_gpu(world_factory):
    import torch

    if torch.cuda.is_available():
        assert world_factory(1, "cuda-shared").run(rf.cuda_shared_local_value) == [0.0]
    else:
        with pytest.raises(pytest.skip.Exception, match="CUDA is not available"):
            world_factory(2, "cuda")


@pytest.mark.parametrize("world", [1, 2, 4], indirect=True)
def test_worlds_of_several_sizes_from_the_fixture(world):
    n = world.size
    assert world.run(rf.all_reduce_sum) == [n * (n + 1) / 2] * n
    assert [r[:2] for r in world.run(rf.rank_and_size, None)] == [(r, n) for r in range(n)]


def test_get_world_reuses_the_warm_pool():
    a, b = get_world(1), get_world(1)
    assert a is b
    assert a.run(rf.rank_and_size, "solo") == [(0, 1, "solo")]


def _state(pid: int) -> str | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return None
    return next(line.split()[1] for line in text.splitlines() if line.startswith("State:"))


def _wait_for_exit(pid: int, timeout: float) -> None:
    """Block until process ``pid`` exits (a pidfd becomes readable then), or ``timeout``."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        select.select([fd], [], [], timeout)
    finally:
        os.close(fd)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_a_stopped_controller_leaves_no_orphan_ranks(tmp_path, sig):
    script = tmp_path / "interrupt_me.py"
    script.write_text(
        textwrap.dedent(
            f"""
        import faulthandler, signal, sys
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test asks on a hang
        # as in a terminal: Python keeps an inherited SIG_IGN for SIGINT, so a pytest worker
        # ignoring it (some test or plugin may) would make this script ignore Ctrl-C
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from ckptconf.harness import World
        from tests.harness import rank_functions as rf
        if __name__ == "__main__":
            world = World(2)
            world.run(rf.rank_and_size, 0)
            print(" ".join(map(str, world.pids)), flush=True)
            world.run(rf.stuck_in_a_collective_on, 1, timeout=600)
        """
        )
    )
    stderr = tmp_path / "stderr.txt"  # a file: the ranks inherit it, and would hold a pipe open
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=stderr.open("w"),
        text=True,
        start_new_session=True,
    )
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2 and all(_state(p) not in (None, "Z") for p in pids)
    if sig == signal.SIGINT:
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C reaches the whole group
    else:
        proc.kill()  # the controller alone, with no chance to clean up
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGUSR1)  # its stacks, to say where it hangs
        _wait_for_text(str(stderr), 0, "most recent call first", 10)
        proc.kill()
        pytest.fail(
            f"the controller did not exit within 60 s of {sig.name} (this worker's SIGINT "
            f"handler: {signal.getsignal(signal.SIGINT)!r}); its stderr and stacks:\n"
            + stderr.read_text()
        )
    assert code != 0
    for pid in pids:
        _wait_for_exit(pid, timeout=30)
    survivors = [p for p in pids if _state(p) not in (None, "Z")]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert survivors == []


def test_a_rank_that_dies_before_its_log_exists_is_reported_as_died(tmp_path):
    """A controller read from stdin: its ranks cannot re-import ``__main__`` and die before
    opening their logs; the error says they died, it is not a missing-log-file error."""
    script = (
        "import os\n"
        "from ckptconf.harness import World\n"
        "try:\n"
        "    World(2).run(os.getpid)\n"
        "except Exception as exc:\n"
        "    print('raised', type(exc).__name__, exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-"],
        input=script,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert "raised WorldError" in result.stdout, result.stdout + result.stderr
    assert "died during start" in result.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ranks_come_from_the_forkserver_unless_spawn_is_asked():
    with pytest.raises(ValueError, match="start_method must be 'spawn' or 'forkserver'"):
        World(1, start_method="fork")
    for method in ("spawn", None):
        with World(1, start_method=method) as world:
            (pid,) = world.run(os.getpid)
            status = Path(f"/proc/{pid}/status").read_text()
        parent = int(status.split("PPid:")[1].split()[0])
        assert (parent == os.getpid()) == (method == "spawn"), method

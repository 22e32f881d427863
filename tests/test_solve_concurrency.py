"""The compiled solve under concurrency: several Python threads at once, and DataLoader workers
forked after the solve ran OpenMP threads (libgomp's thread pool does not survive fork: such a
child used to hang in its next parallel region)."""

import os
import signal
import subprocess
import sys
import threading

import pytest
import torch

from normflows_emerging import _solve
from normflows_emerging.solve import solve_autoregressive
from normflows_emerging.solve.wavefront import solve_wavefront
from solve_cases import random_causal_kernel

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.timeout(300)
def test_solves_from_several_python_threads_at_once():
    """Eight Python threads, each running every schedule (OpenMP regions inside) on its own data."""
    cases = []
    for seed in range(8):
        generator = torch.Generator().manual_seed(seed)
        batch = 3 if seed % 2 else 9
        kernel = random_causal_kernel(5, 1 + seed % 3, torch.float64, generator=generator)
        y = torch.randn(batch, 5, 6, 7, dtype=torch.float64, generator=generator)
        cases.append((y, kernel, solve_wavefront(y, kernel)))
    finished = []
    barrier = threading.Barrier(len(cases))

    def work(y, kernel, expected):
        barrier.wait()
        kind = "batch" if y.shape[0] >= 8 else "image"
        units = "over-blocks" if kind == "batch" else "over-images"
        for _ in range(5):
            for schedule in ("serial", units, "over-diagonals"):
                out = torch.full_like(y, float("nan"))
                _solve.solve_causal_float64(
                    y.numpy(), kernel.numpy(), out.numpy(), 1, 2, f"{kind}/{schedule}"
                )
                torch.testing.assert_close(out, expected)
            torch.testing.assert_close(solve_autoregressive(y, kernel, 1, "compiled"), expected)
        finished.append(True)  # only reached when every result was right

    threads = [threading.Thread(target=work, args=case) for case in cases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert not any(thread.is_alive() for thread in threads), "a solve thread hangs"
    assert len(finished) == len(cases), "a solve thread got a wrong result (see its traceback)"


DATALOADER_SCRIPT = """
import torch
from torch.utils.data import DataLoader, Dataset
from normflows_emerging import _solve
from normflows_emerging.solve.wavefront import solve_wavefront
import sys
sys.path.insert(0, "tests")
from solve_cases import random_causal_kernel

kernel = random_causal_kernel(4, 2, torch.float32)
y = torch.randn(2, 4, 9, 7)


def solve(schedule):
    out = torch.empty_like(y)
    ran = _solve.solve_causal_float32(y.numpy(), kernel.numpy(), out.numpy(), 1, 2, schedule)
    return out, ran


class Solves(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return solve("image/over-images" if index % 2 else "image/over-diagonals")


parent, ran = solve("image/over-images")  # start libgomp's threads before forking
assert ran == "image/over-images", ran
loader = DataLoader(Solves(), batch_size=None, num_workers=2, multiprocessing_context="fork")
expected = solve_wavefront(y, kernel)
for out, ran in loader:
    assert ran == "image/serial", ran  # forked after OpenMP ran: serial, not a hang
    torch.testing.assert_close(out, expected)
torch.testing.assert_close(parent, expected)
print("ok")
"""


@pytest.mark.skipif(not _solve.has_openmp(), reason="built without OpenMP")
def test_dataloader_workers_forked_after_openmp_solve_correctly_without_hanging():
    # In its own process group, so that hung workers are killed with it.
    process = subprocess.Popen(
        [sys.executable, "-c", DATALOADER_SCRIPT],
        cwd=REPOSITORY,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("DataLoader workers forked after an OpenMP solve hang")
    assert process.returncode == 0 and stdout.strip() == "ok", stderr[-3000:]

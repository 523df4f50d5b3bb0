"""examples/engine_loop.py runs to the end and finds the plain API's outputs: eagerly on the CPU,
and with its decode step in a CUDA graph where there is a GPU (skipped without PyTorch)."""

import os
import subprocess
import sys

import pytest

import dsattn

torch = pytest.importorskip("torch")

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "engine_loop.py")


def run_example(*args):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(dsattn.__file__)), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, EXAMPLE, *args], env=env, capture_output=True,
                          text=True, timeout=600)


def test_engine_loop_on_the_cpu():
    r = run_example("--device", "cpu", "--small", "--shared-prefix", "64", "--prompt", "20",
                    "--steps", "3")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "identical to the plain API bit for bit" in r.stdout
    assert "pages free at the end: 5 of 5" in r.stdout


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or not dsattn.built_with_cuda(),
                    reason="needs a CUDA GPU and a CUDA build of dsattn")
@pytest.mark.parametrize("kv_cache", ["bf16", "fp8"])
def test_engine_loop_replays_a_cuda_graph(kv_cache):
    r = run_example("--device", "cuda", "--kv-cache", kv_cache, "--steps", "6")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "one CUDA graph, replayed" in r.stdout
    assert "identical to the plain API bit for bit" in r.stdout

"""The kernel tests again with ``NUMBA_DISABLE_JIT=1`` (GUIDE practice 8).

Run as plain Python, every kernel still works (a reader can step through it
in a debugger), and an index past the end of an array raises ``IndexError``
where compiled code would silently write beyond it.  This is how a
one-output-row im2col case that wrote up to W+1 cells past its block was
found (kernels/conv.py ``_shift_run``).  The tests run in a child process
because Numba reads the variable once, at import.
"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL_TESTS = ["tests/test_conv.py", "tests/test_pooling_window.py", "tests/test_pool_adaptive.py",
                "tests/test_pool_random.py", "tests/test_dense_relu_shape.py", "tests/test_fusion.py",
                "tests/test_conv_sparse.py"]


def test_kernel_tests_pass_as_plain_python():
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider", "-x",
                          *KERNEL_TESTS],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and " failed" not in out.stdout

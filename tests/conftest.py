"""Test setup: CPU only, 4 fake devices (so sharded code paths run), quiet TensorFlow.

The suite's time is mostly XLA:CPU compiling tiny steps: at backend optimisation level 0
(no LLVM optimisation of the generated kernels; the convolutions and matmuls are library
calls either way) two method test files took 104 s instead of 200 s on the 2-core CPU.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tempfile  # pylint: disable=g-import-not-at-top,wrong-import-position

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

# End-to-end tests compile the same small steps many times (new closures each run); the
# persistent cache turns every compile after the first into a lookup.
jax.config.update("jax_compilation_cache_dir",
                  os.path.join(tempfile.gettempdir(), "jaxsemiseg-test-compilation-cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

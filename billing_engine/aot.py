"""Builds the ahead-of-time billing kernel: ``python -m billing_engine.aot OUT_DIR MODULE_NAME``.

Run by `kernels.build_aot` in a child process, so that Numba's compiler never stays resident in
the daemon. `numba.pycc` compiles `kernel.bill_batch` (and the njit helpers it calls) under the
same explicit signature as the JIT into an extension module exporting ``bill_batch``. The module
is written to a temporary file in ``OUT_DIR`` and renamed into place, so a process loading it
concurrently sees the whole module or none.

The target CPU is left generic rather than ``host``: a card image built on one board may boot on
another, and this integer kernel gains little from wider vector units.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from pathlib import Path


def build(out_dir: Path, name: str) -> Path:
    """Compile the kernel as module ``name`` into ``out_dir``; returns the module's path."""
    with warnings.catch_warnings():
        # Numba warns that pycc is pending deprecation; `kernels.py` falls back when it goes.
        warnings.simplefilter("ignore")
        from numba.pycc.cc import CC  # noqa: PLC0415 - only this child process loads the compiler

    from billing_engine import kernel  # noqa: PLC0415

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".build-") as tmp:
        cc = CC(name, source_module=kernel)  # type: ignore[no-untyped-call]
        cc.output_dir = tmp
        python_source = getattr(kernel.bill_batch, "py_func", kernel.bill_batch)
        cc.export("bill_batch", kernel.BILL_BATCH_SIGNATURE)(python_source)  # type: ignore[no-untyped-call]
        cc.compile()
        output = str(cc.output_file)
        os.replace(Path(tmp) / output, out_dir / output)
    return out_dir / output


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: python -m billing_engine.aot OUT_DIR MODULE_NAME\n")
        return 2
    sys.stdout.write(f"{build(Path(argv[0]), argv[1])}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Run the native fuzz test against a build of the kernels with AddressSanitizer and
UndefinedBehaviorSanitizer: any out-of-bounds access, use after free, signed overflow, bad shift or
division by zero in the kernels then ends the run with the sanitizer's report.

    python tools/fuzz_sanitized.py [--cases N] [--seed S] [--keep DIR]

The sanitized library is built (from the same sources and generated header as
`analog-onnx kernels build`, plus the sanitizer flags) into a temporary folder, never into the
kernel cache; python is not instrumented, so the ASan runtime is preloaded (LD_PRELOAD) before
onnxruntime loads the library. Leak checking is off (the interpreter keeps memory to its end) and
an allocation too large for ASan returns null (so the kernels see std::bad_alloc, as they would
see a failing malloc). The test of an allocation failure under a memory rlimit is left out: ASan
reserves terabytes of address space for its shadow.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from analog_onnx.cache import cache_dir
from analog_onnx.ops.native import build, headers
from analog_onnx.runtime import REQUIRE_NATIVE_ENV, native_library_path

ROOT = Path(__file__).resolve().parent.parent
SANITIZE = ("-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g")
FINDINGS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer")


def runtime(compiler: str, name: str) -> str:
    found = subprocess.run([compiler, f"-print-file-name={name}"], capture_output=True, text=True, check=True)
    path = found.stdout.strip()
    if not Path(path).is_file():
        sys.exit(f"the compiler has no {name} (install the sanitizer runtime, e.g. libasan)")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=300, help="fuzz cases per op (default 300)")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--keep", help="build the sanitized library into this folder and keep it")
    args = parser.parse_args()
    compiler = build.compiler() or sys.exit("no C++ compiler (set CXX)")
    if native_library_path() is None:  # the tests' gate asks for the regular build, or skips them all
        sys.exit("the native kernels of these sources are not built: run `analog-onnx kernels build` first")
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="analog-onnx-asan-"))
    folder.mkdir(parents=True, exist_ok=True)
    library = folder / build.LIBRARY_NAME
    started = time.monotonic()
    build.compile_library(compiler, headers.include_dir(cache_dir()), library, SANITIZE)
    print(f"built {library} in {time.monotonic() - started:.0f} s", flush=True)
    env = {**os.environ, REQUIRE_NATIVE_ENV: "1",  # a skipped test fails: no "0 findings" from nothing run
           "ANALOG_ONNX_FUZZ_LIBRARY": str(library), "ANALOG_ONNX_FUZZ_CASES": str(args.cases),
           "ANALOG_ONNX_FUZZ_SEED": str(args.seed),
           "LD_PRELOAD": ":".join(runtime(compiler, name) for name in ("libasan.so", "libubsan.so")),
           "ASAN_OPTIONS": "detect_leaks=0:allocator_may_return_null=1:abort_on_error=1",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    command = [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
               str(ROOT / "tests" / "test_native_fuzz.py"), "-k", "not allocation_failure"]
    started = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    elapsed = time.monotonic() - started
    output = done.stdout + done.stderr
    findings = [line for line in output.splitlines() if any(mark in line for mark in FINDINGS)]
    print(output[-3000:])
    print(f"{args.cases} cases per op, seed {args.seed}: pytest exit {done.returncode} in {elapsed:.0f} s; "
          f"{len(findings)} sanitizer findings")
    for line in findings[:20]:
        print("  " + line)
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    sys.exit(1 if done.returncode or findings else 0)


if __name__ == "__main__":
    main()

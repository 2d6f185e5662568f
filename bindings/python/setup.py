"""Build step of the fluxion Python package: puts libfluxion.so inside the package.

Where the library comes from, in order:
  1. FLUXION_LIBRARY: a path to an already built libfluxion.so (copied as is);
  2. FLUXION_BUILD_DIR, or the repository's build/ directory, when it holds a libfluxion.so newer
     than every C source, header and CMakeLists.txt (tools/test builds build/ first);
  3. otherwise CMake builds the library only (no tests, examples or benchmarks) in a private
     build directory: with the CUDA backend when nvcc is found, CPU-only otherwise
     (FLUXION_CMAKE_ARGS adds arguments, FLUXION_JOBS sets the parallel jobs, default 2).
The C extension fluxion._fast (src/_fast.c, abi3) comes from the same build directory
(<build>/python/fluxion/_fast.abi3.so, CMake target fluxion_python) when current, else CMake builds
that one target; FLUXION_NO_EXTENSION=1 leaves it out (the package then uses ctypes only).
fluxion/_capi.py and _capi.pyi are regenerated from include/fluxion/fluxion.h into the build.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent  # the fluxion repository (bindings/python/..)


def _newest_source_mtime() -> float:
    newest = 0.0
    for pattern in ("runtime/**/*.c", "runtime/**/*.h", "kernels/*", "include/fluxion/*.h"):
        for p in ROOT.glob(pattern):
            newest = max(newest, p.stat().st_mtime)
    cm = ROOT / "CMakeLists.txt"
    if cm.exists():
        newest = max(newest, cm.stat().st_mtime)
    return newest


def _real(p: Path) -> Path:
    return p.resolve()


def _prebuilt() -> Path | None:
    env = os.environ.get("FLUXION_LIBRARY")
    if env:
        p = Path(env)
        if not p.is_file():
            raise RuntimeError(f"FLUXION_LIBRARY={env} is not a file")
        return p
    dirs = []
    if os.environ.get("FLUXION_BUILD_DIR"):
        dirs.append(Path(os.environ["FLUXION_BUILD_DIR"]))
    dirs.append(ROOT / "build")
    newest = _newest_source_mtime()
    for d in dirs:
        lib = d / "libfluxion.so"
        if lib.exists() and _real(lib).stat().st_mtime >= newest:
            return lib
    return None


def _cmake_build(build_temp: Path) -> Path:
    if not (ROOT / "CMakeLists.txt").exists():
        raise RuntimeError(
            f"fluxion: no C sources at {ROOT} (install from the repository's bindings/python, "
            "or set FLUXION_LIBRARY to a built libfluxion.so)")
    cmake = shutil.which("cmake")
    if not cmake:
        raise RuntimeError("fluxion: cmake is needed to build libfluxion (or set FLUXION_LIBRARY)")
    bdir = build_temp / "libfluxion"
    bdir.mkdir(parents=True, exist_ok=True)
    args = [cmake, "-S", str(ROOT), "-B", str(bdir), "-DCMAKE_BUILD_TYPE=Release",
            "-DFLX_BUILD_TESTS=OFF", "-DFLX_BUILD_EXAMPLES=OFF", "-DFLX_BUILD_BENCHMARKS=OFF"]
    if shutil.which("ninja") and not (bdir / "CMakeCache.txt").exists():
        args += ["-G", "Ninja"]
    nvcc = shutil.which("nvcc") or next(
        (c for c in ("/usr/local/cuda/bin/nvcc", "/opt/cuda/bin/nvcc") if os.access(c, os.X_OK)), None)
    args.append("-DFLX_CUDA=ON" if nvcc else "-DFLX_CUDA=OFF")
    args += os.environ.get("FLUXION_CMAKE_ARGS", "").split()
    subprocess.check_call(args)
    jobs = os.environ.get("FLUXION_JOBS", "2")
    subprocess.check_call([cmake, "--build", str(bdir), "--target", "fluxion", "-j", jobs])
    lib = bdir / "libfluxion.so"
    if not lib.exists():
        raise RuntimeError(f"fluxion: the build did not produce {lib}")
    return lib


EXT_SOURCE = HERE / "src" / "_fast.c"
EXT_NAME = "_fast.abi3.so"


def _prebuilt_extension(lib: Path) -> Path | None:
    """The CMake-built extension next to a prebuilt library (<build>/python/fluxion/), when it
    is newer than its source."""
    ext = lib.parent / "python" / "fluxion" / EXT_NAME
    if ext.exists() and ext.stat().st_mtime >= EXT_SOURCE.stat().st_mtime:
        return ext
    return None


def _cmake_extension(build_temp: Path) -> Path | None:
    """Builds only the fluxion_python target (it does not link libfluxion, so this compiles one
    C file) for the Python running this build. None (and a note) when that fails: the package
    then runs on its pure-ctypes path."""
    cmake = shutil.which("cmake")
    if not cmake or not (ROOT / "CMakeLists.txt").exists():
        return None
    bdir = build_temp / "libfluxion"
    try:
        if not (bdir / "CMakeCache.txt").exists():
            args = [cmake, "-S", str(ROOT), "-B", str(bdir), "-DCMAKE_BUILD_TYPE=Release",
                    "-DFLX_BUILD_TESTS=OFF", "-DFLX_BUILD_EXAMPLES=OFF",
                    "-DFLX_BUILD_BENCHMARKS=OFF", "-DFLX_CUDA=OFF"]
            if shutil.which("ninja"):
                args += ["-G", "Ninja"]
            subprocess.check_call(args + [f"-DPython3_EXECUTABLE={sys.executable}"])
        else:
            subprocess.check_call([cmake, f"-DPython3_EXECUTABLE={sys.executable}", str(bdir)])
        subprocess.check_call([cmake, "--build", str(bdir), "--target", "fluxion_python"])
    except (subprocess.CalledProcessError, OSError) as e:
        print(f"fluxion: the C extension was not built ({e}); using the ctypes path")
        return None
    ext = bdir / "python" / "fluxion" / EXT_NAME
    return ext if ext.exists() else None


def _generate_declarations(dest_pkg: Path) -> None:
    """Regenerates the ctypes declarations and stubs from the repository's fluxion.h into the
    package being built, so a wheel always matches the library it carries."""
    header = ROOT / "include" / "fluxion" / "fluxion.h"
    if not header.exists():
        return
    sys.path.insert(0, str(HERE / "tools"))
    try:
        import gen_capi
    finally:
        sys.path.pop(0)
    try:
        files = gen_capi.generate(header)
    except ValueError as e:
        # keep the committed declarations: the package still works for every function they
        # know, and tests/test_capi.py reports the parser's message
        print(f"fluxion: WARNING: could not regenerate the C declarations ({e}); packaging the "
              "committed fluxion/_capi.py")
        return
    for path, text in files.items():
        (dest_pkg / path.name).write_text(text)


class BuildPyWithLibrary(build_py):
    def run(self):
        super().run()
        temp = Path(self.get_finalized_command("build").build_temp).resolve()
        lib = _prebuilt()
        if lib is None:
            lib = _cmake_build(temp)
        pkg = Path(self.build_lib) / "fluxion"
        pkg.mkdir(parents=True, exist_ok=True)
        dest = pkg / "libfluxion.so"
        shutil.copyfile(_real(lib), dest)  # the real file, not the SONAME symlink
        print(f"fluxion: packaged {_real(lib)} as {dest}")
        _generate_declarations(pkg)
        if os.environ.get("FLUXION_NO_EXTENSION", "") not in ("", "0"):
            return
        ext = _prebuilt_extension(_real(lib)) or _prebuilt_extension(lib)
        if ext is None:
            ext = _cmake_extension(temp)
        if ext is not None:
            shutil.copyfile(ext, pkg / EXT_NAME)
            print(f"fluxion: packaged {ext} as {pkg / EXT_NAME}")


class BinaryDistribution(Distribution):
    """The wheel carries a native library: tag it for the platform."""

    def has_ext_modules(self):
        return True


# The extension uses the limited API and the rest is ctypes: one wheel per platform for every
# CPython >= 3.9 (tag cp39-abi3).
setup(cmdclass={"build_py": BuildPyWithLibrary}, distclass=BinaryDistribution,
      options={"bdist_wheel": {"py_limited_api": "cp39"}})

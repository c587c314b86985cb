"""Build of fastnorm._core: the Cython glue, the baseline C sources and one object per ISA tier.

Why a build_ext subclass: per-source flags.  Only the kernel translation units named
*_avx2.c / *_avx512.c / *_avx512bf16.c get ISA flags; everything else (dispatch.c, api_*.c,
the glue) is compiled for the baseline x86-64, so nothing outside a kernel can execute an instruction
the CPU lacks.  The subclass sees the compiler type (unix/msvc), which decides the flag
spelling, and can probe the compiler before using a flag.  Never -march: wheels must run
on every x86-64 machine, and dispatch.c picks the kernels at import.

Environment knobs (each decision is printed as one "[fastnorm] ..." line; pip shows
them with -v):
  FASTNORM_NO_OPENMP=1       build without OpenMP (single-threaded)
  FASTNORM_DISABLE_AVX2=1    leave the AVX2 kernels out
  FASTNORM_DISABLE_AVX512=1  leave the AVX-512 kernels out
  FASTNORM_DISABLE_AVX512BF16=1  leave out their AVX512-BF16 build
  FASTNORM_CYTHON_DEBUG=1    Cython bounds/wraparound/initialization checks on
  FASTNORM_SANITIZE=1        -fsanitize=address,undefined at -O1 on every source (CI's ASan run;
                             load with LD_PRELOAD=$(gcc -print-file-name=libasan.so))
  FASTNORM_BUILD_JOBS=N      compile N sources at a time (default: the usable cores)

A build of an unchanged tree with the same configuration compiles nothing
(build_ext._up_to_date).
"""
import contextlib
import os
import platform
import struct
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from glob import glob

import Cython
import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext as _build_ext

C_DIR = os.path.join("src", "fastnorm_c")

# tier -> flags by compiler family.  The only place ISA flags appear.
ISA_FLAGS = {
    "avx2": {"unix": ["-mavx2", "-mfma", "-mf16c"], "msvc": ["/arch:AVX2"]},
    "avx512": {
        "unix": ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mfma", "-mf16c"],
        "msvc": ["/arch:AVX512"],
    },
    # the AVX-512 family again, converting bfloat16 with AVX512-BF16 (kernels_avx512bf16.c)
    "avx512bf16": {
        "unix": ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mfma", "-mf16c",
                 "-mavx512bf16"],
        "msvc": ["/arch:AVX512"],
    },
}
# Flags for the ISA kernel TUs beside their ISA flags.  No basic-block vectorizer: a row's
# bits must not depend on the rows beside it, and GCC 12's SLP pass, packing the float64
# finishes of rows_short's 4-row block into one vector (the register form, since replaced),
# gave bfloat16 means one float32 ulp away from the same row's computed alone (AVX512-BF16
# build, rows of 20 and 24 values; Zen 5, tests/test_row_norms.py); row-by-row float64 code
# remains in every kernel source.  The kernels are intrinsics: an A/B of 22 shapes moved 0.91-1.03.
KERNEL_FLAGS = {"unix": ["-fno-tree-slp-vectorize"], "msvc": []}
# A tier built only beside the tier it extends (its objects are a variant of that family).
ISA_REQUIRES = {"avx512bf16": "avx512"}
# A few intrinsics of each tier: the probe proves the compiler has the flags *and* headers.
ISA_PROBES = {
    "avx2": "#include <immintrin.h>\n"
    "__m256 f(__m256 a, __m128i h) { return _mm256_fmadd_ps(a, a, _mm256_cvtph_ps(h)); }\n",
    "avx512": "#include <immintrin.h>\n"
    "__m512 f(__m512 a, __m256i h, __m512i b) {\n"
    "  __mmask16 m = _mm512_cmpeq_epi32_mask(_mm512_add_epi16(b, b), b);\n"
    "  return _mm512_maskz_fmadd_ps(m, a, a, _mm512_cvtph_ps(h)); }\n",
    "avx512bf16": "#include <immintrin.h>\n"
    "__m512i f(__m512 a, __m512 b) { return (__m512i)_mm512_cvtne2ps_pbh(a, b); }\n",
}
ISA_SOURCES = {tier: sorted(glob(os.path.join(C_DIR, f"*_{tier}.c"))) for tier in ISA_FLAGS}
BASE_SOURCES = sorted(
    set(glob(os.path.join(C_DIR, "*.c"))) - {s for sources in ISA_SOURCES.values() for s in sources}
)
HEADERS = sorted(glob(os.path.join(C_DIR, "*.h")) + glob(os.path.join("include", "fastnorm", "*.h")))

# No -ffast-math: NaN/inf must propagate as IEEE says (the contract's NaN rule).
BASE_CFLAGS = {
    "unix": ["-O3", "-std=c11", "-fvisibility=hidden", "-fno-math-errno"],
    "msvc": ["/O2", "/std:c11"],
}
# -O1 (after the base -O3, so it wins), as the sanitizers' documentation suggests: at -O3
# the instrumented AVX-512 file alone took 6.7 min to compile on a busy 2-core VM, at -O1
# 3.1 min, and CI's sanitizer stage had grown to 20 of its 36 minutes.
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                  "-fno-omit-frame-pointer", "-g", "-O1"]

OPENMP_PROBE = (
    "#include <omp.h>\n"
    "int main(void) { int n = 0;\n"
    "#pragma omp parallel reduction(+:n)\n"
    "  n += 1;\n"
    "  return n > 0 && omp_get_max_threads() > 0 ? 0 : 1; }\n"
)


def env_flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def log(message):
    print(f"[fastnorm] {message}", flush=True)


def is_x86_64():
    machine = platform.machine().lower()
    return machine in ("x86_64", "amd64", "x64") and struct.calcsize("P") == 8


@contextlib.contextmanager
def quiet():
    """Silence the compiler while probing: a failed probe is an expected answer, not an error."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def compiles(compiler, code, compile_args, link_args=None):
    """Whether `code` compiles with `compile_args` (and links with `link_args` if given)."""
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "probe.c")
        with open(source, "w") as f:
            f.write(code)
        try:
            with quiet():
                objects = compiler.compile([source], output_dir=tmp, extra_postargs=compile_args)
                if link_args is not None:
                    compiler.link_executable(objects, "probe", output_dir=tmp, extra_postargs=link_args)
        except Exception:  # CompileError, LinkError, or a missing compiler
            return False
    return True


def openmp_flags(compiler, family):
    """(compile args, link args) for OpenMP, or ([], []) when disabled or unavailable."""
    if env_flag("FASTNORM_NO_OPENMP"):
        log("openmp: off (FASTNORM_NO_OPENMP=1), kernels run on one thread")
        return [], []
    if family == "msvc":
        candidates = [(["/openmp:llvm"], []), (["/openmp"], [])]
    elif sys.platform == "darwin":  # Apple clang has no driver flag; libomp comes from Homebrew
        candidates = [(["-Xpreprocessor", "-fopenmp"], ["-lomp"]), (["-fopenmp"], ["-fopenmp"])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"])]
    for compile_args, link_args in candidates:
        if compiles(compiler, OPENMP_PROBE, compile_args, link_args):
            log(f"openmp: on (compile {' '.join(compile_args)}, link {' '.join(link_args) or '-'})")
            return compile_args, link_args
    log("openmp: NOT AVAILABLE (no working OpenMP flag found); building single-threaded. "
        "Install an OpenMP runtime (libgomp/libomp) for multi-threaded kernels.")
    return [], []


def build_jobs(family):
    """How many sources compile at a time: each ISA tier takes 50-60 s (gcc 12), so two
    cores halve the build.  MSVC's compiler object sets itself up on first use, unguarded."""
    if family == "msvc":
        return 1
    jobs = os.environ.get("FASTNORM_BUILD_JOBS", "").strip()
    if jobs:
        if not jobs.isdigit():
            raise SystemExit(f"[fastnorm] FASTNORM_BUILD_JOBS must be a whole number, got {jobs!r}")
        return max(1, int(jobs))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class build_ext(_build_ext):
    def build_extension(self, ext):
        family = "msvc" if self.compiler.compiler_type == "msvc" else "unix"
        base = list(BASE_CFLAGS[family])
        link = []
        if env_flag("FASTNORM_SANITIZE"):
            if family == "msvc":
                raise SystemExit("[fastnorm] FASTNORM_SANITIZE=1 needs gcc or clang")
            base += SANITIZE_FLAGS
            link += SANITIZE_FLAGS
            log(f"sanitizers: on ({' '.join(SANITIZE_FLAGS)})")

        # Every probe before any compile job starts: a probe silences the process's output,
        # which would hide a job's compiler messages.
        tiers = []
        for tier in ISA_FLAGS:
            reason = self._isa_skip_reason(tier, family, base, tiers)
            if reason:
                log(f"{tier}: skipped ({reason})")
            else:
                tiers.append(tier)
        omp_compile, omp_link = openmp_flags(self.compiler, family)
        if not omp_compile and family == "unix":
            omp_compile = ["-Wno-unknown-pragmas"]  # the `omp` pragmas are simply ignored

        # Rebuilt from scratch on every call, so a second build never duplicates objects.
        ext.extra_objects = []
        ext.define_macros = [m for m in ext.define_macros if not m[0].startswith("FASTNORM_HAVE_")]
        ext.define_macros += [(f"FASTNORM_HAVE_{tier.upper()}", "1") for tier in tiers]
        ext.extra_compile_args = base + omp_compile
        ext.extra_link_args = link + omp_link
        config = self._configuration(ext, family, tiers, base, link)
        if self._up_to_date(ext, config):
            log(f"up to date: {self.get_ext_fullpath(ext.name)} (no source newer, same configuration)")
            return
        jobs = build_jobs(family)
        log(f"compiling {jobs} source(s) at a time (FASTNORM_BUILD_JOBS)")
        serial_compile = self.compiler.compile
        with ThreadPoolExecutor(jobs) as pool:
            tier_jobs = [
                pool.submit(serial_compile, ISA_SOURCES[tier], output_dir=self.build_temp,
                            include_dirs=ext.include_dirs,
                            extra_postargs=base + ISA_FLAGS[tier][family] + KERNEL_FLAGS[family],
                            depends=ext.depends)
                for tier in tiers
            ]

            def compile_with_tiers(sources, **kwargs):
                """The extension's own sources, a job each beside the tiers' jobs; returns once
                every job is done, with the tiers' objects in ext.extra_objects for the link."""
                own = [pool.submit(serial_compile, [source], **kwargs) for source in sources]
                objects = [obj for job in own for obj in job.result()]
                for tier, job in zip(tiers, tier_jobs):
                    ext.extra_objects += job.result()
                    log(f"{tier}: compiled {', '.join(os.path.basename(s) for s in ISA_SOURCES[tier])} "
                        f"with {' '.join(ISA_FLAGS[tier][family])}")
                return objects

            self.compiler.compile = compile_with_tiers
            try:
                super().build_extension(ext)
            finally:
                del self.compiler.compile  # the class's own method again
        with open(self._config_path(), "w") as stamp:
            stamp.write(config)

    # A build of an unchanged tree with the same configuration compiles nothing: CI's second
    # `pip install` (README's test command after its bench command) rebuilt everything,
    # about 3 minutes on 2 cores.  The environment knobs above are invisible to file times,
    # so the configuration each build used is kept beside its objects.
    def _config_path(self):
        return os.path.join(self.build_temp, "fastnorm-build-config.txt")

    def _configuration(self, ext, family, tiers, base, link):
        compiler = getattr(self.compiler, "compiler_so", None) or self.compiler.compiler_type
        return "\n".join(repr(item) for item in (
            compiler, family, base, link, ext.extra_compile_args, ext.extra_link_args,
            ext.define_macros, {tier: ISA_FLAGS[tier][family] for tier in tiers},
            KERNEL_FLAGS[family], CYTHON_DIRECTIVES, sys.version, numpy.__version__,
            Cython.__version__)) + "\n"

    def _up_to_date(self, ext, config):
        """Whether the built extension is newer than every project file it is built from and
        was built with `config`.  The .c that cythonize regenerates on every run stands for
        its .pyx (a dependency); the NumPy headers cythonize adds to the dependencies lie in
        pip's fresh build environment, newer on every run, and stand in the configuration
        as NumPy's version."""
        target = self.get_ext_fullpath(ext.name)
        if self.force or not os.path.exists(target) or not os.path.exists(self._config_path()):
            return False
        with open(self._config_path()) as stamp:
            if stamp.read() != config:
                return False
        inputs = [source for source in ext.sources
                  if not os.path.exists(os.path.splitext(source)[0] + ".pyx")]
        inputs += [path for path in ext.depends if not os.path.isabs(path)]
        inputs.append(os.path.abspath(__file__))
        built = os.path.getmtime(target)
        return all(os.path.getmtime(path) < built for path in inputs)

    def _isa_skip_reason(self, tier, family, base, built):
        """Why `tier` is left out, or None; `built`: the tiers that will be built."""
        if not is_x86_64():
            return f"not an x86-64 build ({platform.machine()}, {8 * struct.calcsize('P')}-bit)"
        if env_flag(f"FASTNORM_DISABLE_{tier.upper()}"):
            return f"FASTNORM_DISABLE_{tier.upper()}=1"
        required = ISA_REQUIRES.get(tier)
        if required and required not in built:
            return f"the {required} tier it extends is not built"
        if not ISA_SOURCES[tier]:
            return f"no src/fastnorm_c/*_{tier}.c sources"
        if not compiles(self.compiler, ISA_PROBES[tier], base + ISA_FLAGS[tier][family]):
            return f"compiler rejects {' '.join(ISA_FLAGS[tier][family])}"
        return None

    def run(self):
        super().run()
        # `pip install .` builds in a temporary build/ tree and installs from there.  Also
        # place the extension next to the sources, so that commands run from the checkout
        # root (`python -m fastnorm ...`, `python -m pytest`), where Python imports the
        # source-tree package ahead of the installed one, find a working fastnorm._core.
        if not self.inplace and os.path.isfile(os.path.join("fastnorm", "_core.pyx")):
            self.copy_extensions_to_source()
            log("copied the built fastnorm._core into the source tree (fastnorm/) as well")


debug = env_flag("FASTNORM_CYTHON_DEBUG")
log(f"cython: {'debug checks on' if debug else 'checks off'} (FASTNORM_CYTHON_DEBUG)")
CYTHON_DIRECTIVES = dict(
    language_level=3,
    boundscheck=debug,
    wraparound=debug,
    initializedcheck=debug,
    cdivision=True,
    embedsignature=True,
)

core = Extension(
    "fastnorm._core",
    sources=[os.path.join("fastnorm", "_core.pyx"), *BASE_SOURCES],
    # NumPy's headers: the one-step paths of _core.pyx read arrays through its C API.
    include_dirs=["include", C_DIR, numpy.get_include()],
    # The oldest NumPy the extension may run on: pyproject's runtime dependency.
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
                   ("NPY_TARGET_VERSION", "NPY_1_25_API_VERSION")],
    # The ISA sources are compiled by build_ext itself; listing them here makes a change
    # to one of them relink the extension.  Everything listed also goes into the sdist
    # (cythonize replaces the .pyx source by the generated .c, so it is listed too).
    depends=HEADERS + [s for sources in ISA_SOURCES.values() for s in sources]
    + [os.path.join("fastnorm", name) for name in ("_core.pyx", "_cfastnorm.pxd", "_output_cache.h")],
)

setup(
    ext_modules=cythonize(
        [core],
        compiler_directives=CYTHON_DIRECTIVES,
        # Always regenerate: the directives above depend on the environment, which
        # Cython's timestamp check cannot see.  The module is small.
        force=True,
        quiet=True,
    ),
    cmdclass={"build_ext": build_ext},
)

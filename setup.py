"""Builds the Cython extension ``normflows_emerging._solve``.

``-O3`` always; OpenMP (``-fopenmp``) only when the compiler accepts it, otherwise a plain
single-threaded build. The extension is optional: without a working C compiler the package still
installs, and the solves fall back to the torch wavefront with a warning. Everything else about
the package lives in pyproject.toml.
"""

import os
import tempfile

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP_FLAG = "-fopenmp"


def compiler_has_openmp(compiler):
    """True if ``compiler`` compiles and links a program that uses OpenMP."""
    source = "#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "check_openmp.c")
        with open(path, "w") as f:
            f.write(source)
        try:
            objects = compiler.compile([path], output_dir=tmp, extra_postargs=[OPENMP_FLAG])
            compiler.link_executable(
                objects, "check_openmp", output_dir=tmp, extra_postargs=[OPENMP_FLAG]
            )
        except Exception:
            return False
    return True


class BuildExtWithOptionalOpenMP(build_ext):
    def build_extensions(self):
        openmp = compiler_has_openmp(self.compiler)
        if not openmp:
            print(
                "normflows-emerging: compiler has no OpenMP, building the inverse single-threaded"
            )
        for ext in self.extensions:
            ext.extra_compile_args = ["-O3"] + ([OPENMP_FLAG] if openmp else [])
            ext.extra_link_args = [OPENMP_FLAG] if openmp else []
        super().build_extensions()


extensions = cythonize(
    [
        Extension(
            "normflows_emerging._solve",
            ["ext/_solve.pyx"],
            include_dirs=["ext"],
            depends=["ext/kernels.h"],
        )
    ],
    language_level=3,
)
for extension in extensions:
    extension.optional = True  # cythonize does not carry the flag over

setup(
    ext_modules=extensions,
    cmdclass={"build_ext": BuildExtWithOptionalOpenMP},
)

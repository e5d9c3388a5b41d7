"""Build hook: the package carries anchor_core/gear.py, generated at build time.

The gear table is pyfastcdc's data, not kept in this repository (docs/decisions.md, "The gear
table"); tools/gen_gear.py reads it out of pyfastcdc, which pyproject.toml's build-system
requires at the pinned version. A checkout run with `make setup` generates the same file in
the tree instead (an editable install does not build).
"""
import os
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class build_py_with_gear(build_py):
    def run(self):
        build_py.run(self)
        out = subprocess.run([sys.executable, os.path.join(HERE, "tools", "gen_gear.py")],
                             check=True, capture_output=True).stdout
        target = os.path.join(self.build_lib, "anchor_core", "gear.py")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target + ".tmp", "wb") as f:
            f.write(out)
        os.replace(target + ".tmp", target)


setup(cmdclass={"build_py": build_py_with_gear})

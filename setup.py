"""Declares the console scripts; everything else is in pyproject.toml.

Why a setup.py: one source tree builds two wheels. From a checkout it has both packages, `edged` (the
daemon) and `tools` (the training package), and both commands. deploy/install.sh builds the device's
wheel from a clean copy without tools/, and then `edged-train` must not be declared either: pyproject's
static [project.scripts] cannot leave an entry out, so `scripts` is dynamic and set here from what the
tree holds (setuptools' package discovery already finds only what is there). One distribution with
the same name and version keeps pip's upgrade and uninstall simple; two distributions would need a
second project directory for tools/, which setuptools cannot build from outside it.
"""

from pathlib import Path

from setuptools import setup

SCRIPTS = ["edged = edged.cli:main"]
if (Path(__file__).resolve().parent / "tools" / "__init__.py").is_file():
    SCRIPTS.append("edged-train = tools.cli:main")

setup(entry_points={"console_scripts": SCRIPTS})

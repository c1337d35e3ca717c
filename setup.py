"""Packaging for depthstudy: metadata and requirements come from settings.ini (nbdev's single source)."""
import shutil
from configparser import ConfigParser
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

here = Path(__file__).parent
cfg = ConfigParser(delimiters=["="])
cfg.read(here / "settings.ini", encoding="utf-8")
c = cfg["DEFAULT"]


class build_py_with_lessons(build_py):
    "Ship the lesson notebooks (nbs/lessons) inside the package, so `depthstudy run` works after `pip install`."

    def run(self):
        super().run()
        src = here / "nbs" / "lessons"
        if src.is_dir():
            dst = Path(self.build_lib) / c["lib_path"] / "lessons"
            dst.mkdir(parents=True, exist_ok=True)
            for nb in src.glob("*.ipynb"):
                shutil.copy2(nb, dst / nb.name)


readme = here / "README.md"
setup(
    name=c["lib_name"],
    version=c["version"],
    description=c["description"],
    long_description=readme.read_text(encoding="utf-8") if readme.exists() else c["description"],
    long_description_content_type="text/markdown",
    author=c["author"],
    author_email=c["author_email"],
    url=c["git_url"],
    license="Apache-2.0",
    keywords=c["keywords"].split(),
    python_requires=f">={c['min_python']}",
    packages=find_packages(include=[c["lib_path"], c["lib_path"] + ".*"]),
    include_package_data=True,
    package_data={c["lib_path"]: ["data/*", "data/*/*"]},
    install_requires=c["requirements"].split(),
    extras_require={
        "dev": c["dev_requirements"].split(),
        "hub": ["datasets>=2.14"],
    },
    entry_points={"console_scripts": c["console_scripts"].split()},
    cmdclass={"build_py": build_py_with_lessons},
    zip_safe=False,
)

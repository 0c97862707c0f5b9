"""Production settings are strict: no start without a real secret, and `check --deploy` is clean."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REAL_SECRET = "k3J9-q8Zr2mVx7Lp1Tn6Wb4Yc0Hd5Gf8Rs2Qe9Uo3Ia7Kj1Ml6Np4Bv0Cx5Zw_"


def run_django(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, **env}
    for name in [name for name, value in env.items() if value is None]:
        environment.pop(name, None)
    return subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        cwd=ROOT,
        env={key: value for key, value in environment.items() if value is not None},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_refuses_to_start_without_secret_key():
    result = run_django("pass", DEBUG="0", SECRET_KEY=None, DJANGO_SETTINGS_MODULE="config.settings")
    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG=0" in result.stderr


@pytest.mark.parametrize("weak", ["short", "django-insecure-" + "x" * 60, "a" * 80])
def test_production_refuses_an_insecure_secret_key(weak):
    result = run_django("pass", DEBUG="0", SECRET_KEY=weak, DJANGO_SETTINGS_MODULE="config.settings")
    assert result.returncode != 0
    assert "SECRET_KEY is insecure" in result.stderr


def test_production_refuses_to_start_without_a_key_pepper():
    result = run_django("pass", DEBUG="0", SECRET_KEY=REAL_SECRET, API_KEY_PEPPER=None)
    assert result.returncode != 0
    assert "API_KEY_PEPPER must be set when DEBUG=0" in result.stderr


def test_debug_flag_is_parsed_strictly():
    result = run_django("pass", DEBUG="maybe", DJANGO_SETTINGS_MODULE="config.settings")
    assert result.returncode != 0


def test_check_deploy_is_clean_in_production():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={**os.environ, "DEBUG": "0", "SECRET_KEY": REAL_SECRET, "API_KEY_PEPPER": REAL_SECRET[::-1]},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNINGS" not in result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_every_environment_variable_is_documented_in_the_readme():
    sources = [
        ROOT / "config" / "settings.py",
        ROOT / "config" / "gunicorn.conf.py",
        ROOT / "config" / "devstack.py",
    ]
    names = set()
    for source in sources:
        text = source.read_text()
        names |= set(re.findall(r'env(?:\.\w+)?\(\s*"([A-Z_]+)"', text))
        names |= set(re.findall(r'os\.environ(?:\.get)?[\(\[]"([A-Z_]+)"', text))
        names |= set(re.findall(r'_required_url\("([A-Z_]+)"', text))
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", readme, flags=re.MULTILINE))
    assert names, "no variables found: the pattern above is out of date"
    assert names - documented - {"PATH"} == set()

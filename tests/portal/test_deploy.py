"""Production configuration: check --deploy is clean, compose.yaml is coherent, .env.example is complete."""

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_check_deploy_is_clean_with_production_settings(tmp_path):
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(64),
        "ALLOWED_HOSTS": "portal.example.org",
        "PORTAL_VAR_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret_key(tmp_path):
    env = {
        "PATH": os.environ.get("PATH", ""),
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "DEBUG": "0",
        "PORTAL_VAR_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0 and "SECRET_KEY" in result.stderr


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_compose_has_every_role(compose):
    assert {"postgres", "redis", "web", "worker-cpu", "worker-gpu-4090", "worker-gpu-a100", "beat"} <= set(
        compose["services"]
    )


def test_compose_runs_every_role_from_one_image(compose):
    services = compose["services"]
    app_roles = ["migrate", "web", "worker-cpu", "worker-gpu-4090", "worker-gpu-a100", "beat"]
    assert {services[r]["image"] for r in app_roles} == {"llm-efficiency-portal:latest"}
    assert all(services[r]["build"] == "." for r in app_roles)
    assert "gunicorn" in services["web"]["command"]


def test_compose_gpu_workers_reserve_an_nvidia_gpu_and_take_their_track_queue(compose):
    for track in ("4090", "a100"):
        service = compose["services"][f"worker-gpu-{track}"]
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        command = service["command"]
        assert command[command.index("-Q") + 1] == f"gpu-{track}"
        assert command[command.index("--concurrency") + 1] == "1"
    assert "deploy" not in compose["services"]["worker-cpu"]


def test_env_example_lists_every_variable_the_settings_read():
    source = "".join((ROOT / "portal" / name).read_text() for name in ("env.py", "settings.py"))
    read = set(re.findall(r'env_(?:str|bool|int|list|required)\(\s*"([A-Z0-9_]+)"', source))
    read |= set(re.findall(r'os\.environ(?:\.get)?\(\s*"([A-Z0-9_]+)"', source))
    listed = set(re.findall(r"^([A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.MULTILINE))
    assert read, "found no variables: the pattern is out of date"
    assert read - listed == set(), "add these to .env.example"

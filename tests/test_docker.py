"""The container files agree with the project: services, shared environment, commands and the image.

No Docker engine is needed: compose.yaml is read with PyYAML, the Dockerfile with a small parser, and
every command the containers run is checked against the code that would answer it.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER_DIR = ROOT / "docker"
COMPOSE_FILE = DOCKER_DIR / "compose.yaml"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

APP_SERVICES = ("migrate", "mlflow-prepare", "web", "worker", "worker-pool-cpu", "beat")
EXPECTED_SERVICES = {"postgres", "redis", "mlflow", *APP_SERVICES}
EXTRA_ALLOWED_VARIABLES: set[str] = set()
READ_PATTERNS = (
    re.compile(r'env(?:\.\w+)?\(\s*"([A-Z_]+)"'),
    re.compile(r'os\.environ(?:\.get)?[\(\[]"([A-Z_]+)"'),
    re.compile(r'_required_url\(\s*"([A-Z_]+)"'),
)
SOURCES_READ = (ROOT / "config" / "settings.py", ROOT / "config" / "gunicorn.conf.py")
TEST_SECRET = "k3J9-q8Zr2mVx7Lp1Tn6Wb4Yc0Hd5Gf8Rs2Qe9Uo3Ia7Kj1Ml6Np4Bv0Cx5Zw_"
TEST_PEPPER = "test-pepper-0123456789abcdefghijklmnopqrstuv"
WEB_ENTRY = ["gunicorn", "-c", "config/gunicorn.conf.py"]


# --- compose.yaml ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def argv_of(service: dict) -> list[str]:
    command = service["command"]
    return shlex.split(command if isinstance(command, str) else shlex.join(command))


def option_values(argv: list[str], *names: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in names]


def depends_on(service: dict) -> dict[str, str]:
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def interpolate(value: str, given: dict[str, str]) -> str:
    """Compose's `${NAME}`, `${NAME:-default}` and `${NAME:?error}`."""

    def replace(match: re.Match) -> str:
        name, operator, argument = match.groups()
        if name in given:
            return given[name]
        if operator == ":?":
            raise KeyError(f"{name}: {argument}")
        return argument if operator == ":-" else ""

    return re.sub(r"\$\{([A-Z_][A-Z0-9_]*)(?:(:[-?])([^}]*))?\}", replace, str(value))


def rendered_env(service: dict, **given: str) -> dict[str, str]:
    return {name: interpolate(value, given) for name, value in service["environment"].items()}


def mlflow_server_argv(service: dict) -> list[str]:
    argv = argv_of(service)
    assert argv[:2] == ["sh", "-c"]
    server = shlex.split(argv[2].split("&&")[-1])
    assert server[:3] == ["exec", "mlflow", "server"]
    return server


def django_settings(service: dict, *names: str) -> dict:
    """Settings as Django loads them in a service's container environment."""
    env = {
        "PATH": os.environ["PATH"],
        **rendered_env(service, SECRET_KEY=TEST_SECRET, API_KEY_PEPPER=TEST_PEPPER),
    }
    env["DJANGO_SETTINGS_MODULE"] = "config.settings"
    code = (
        "import json, django; django.setup(); from django.conf import settings; "
        f"print(json.dumps({{name: getattr(settings, name) for name in {list(names)!r}}}, default=str))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def variables_the_project_reads() -> set[str]:
    names = set()
    for source in SOURCES_READ:
        text = source.read_text()
        for pattern in READ_PATTERNS:
            names.update(pattern.findall(text))
    return names


def test_compose_defines_every_service(services):
    assert set(services) >= EXPECTED_SERVICES, EXPECTED_SERVICES - set(services)


def test_app_services_share_one_image_and_one_environment(compose, services):
    shared_env = compose["x-portal-env"]
    builds = {json.dumps(services[name].get("build"), sort_keys=True) for name in APP_SERVICES}
    images = {services[name].get("image") for name in APP_SERVICES}
    assert len(builds) == 1, builds
    assert len(images) == 1, images
    build = services["web"]["build"]
    assert (DOCKER_DIR / build["context"]).resolve() == ROOT
    assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE
    for name in APP_SERVICES:
        assert services[name]["environment"] == shared_env, name


def test_app_environment_names_are_read_by_the_project(services):
    known = variables_the_project_reads() | EXTRA_ALLOWED_VARIABLES
    assert {"DEBUG", "SECRET_KEY", "DATABASE_URL", "REDIS_URL", "GUNICORN_BIND"} <= known
    for name in APP_SERVICES:
        unknown = set(services[name]["environment"]) - known
        assert not unknown, f"{name} sets variables nothing reads: {sorted(unknown)}"


def test_app_environment_is_production_and_needs_a_real_secret(services):
    env = services["web"]["environment"]
    assert str(env["DEBUG"]) == "0"
    assert env["GUNICORN_BIND"] == "0.0.0.0:8000"
    with pytest.raises(KeyError, match="SECRET_KEY"):
        rendered_env(services["web"])
    assert (
        rendered_env(services["web"], SECRET_KEY=TEST_SECRET, API_KEY_PEPPER=TEST_PEPPER)["SECRET_KEY"] == TEST_SECRET
    )


def test_database_and_redis_urls_point_at_the_compose_services(services):
    env = rendered_env(services["web"], SECRET_KEY=TEST_SECRET, API_KEY_PEPPER=TEST_PEPPER)
    database = urlparse(env["DATABASE_URL"])
    postgres_env = services["postgres"]["environment"]
    assert database.hostname == "postgres"
    assert database.port in (None, 5432)
    assert database.password == postgres_env["POSTGRES_PASSWORD"]
    assert database.path.lstrip("/") == postgres_env["POSTGRES_DB"]
    redis = urlparse(env["REDIS_URL"])
    assert redis.scheme == "redis"
    assert redis.hostname == "redis"
    assert redis.hostname in services
    mlflow_store = urlparse(env["MLFLOW_DATABASE_URL"])
    server_store = urlparse(option_values(mlflow_server_argv(services["mlflow"]), "--backend-store-uri")[0])
    assert mlflow_store.hostname == server_store.hostname == "postgres"
    assert mlflow_store.path == server_store.path  # the portal and MLflow's UI share one store
    assert env["MLFLOW_ARTIFACT_ROOT"] == "/mlartifacts"
    for name in APP_SERVICES:
        assert "mlartifacts:/mlartifacts" in services[name]["volumes"], name
    assert "mlartifacts:/mlartifacts" in services["mlflow"]["volumes"]


def test_depends_on_names_existing_services_and_health_conditions_have_healthchecks(services):
    for name, service in services.items():
        for dependency, condition in depends_on(service).items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            assert dependency != name
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
            if condition == "service_completed_successfully":
                assert services[dependency].get("restart", "no") == "no", dependency
    web = depends_on(services["web"])
    assert web.get("postgres") == "service_healthy"
    assert web.get("migrate") == "service_completed_successfully"
    for name in ("worker", "beat"):
        assert depends_on(services[name]).get("migrate") == "service_completed_successfully", name


def test_web_runs_gunicorn_with_the_project_config(services):
    argv = argv_of(services["web"])
    assert argv[0] == "gunicorn"
    assert option_values(argv, "-c", "--config") == ["config/gunicorn.conf.py"]
    assert argv == WEB_ENTRY  # the application (ASGI or WSGI) follows the worker class, in the config file
    assert "8000:8000" in [str(port) for port in services["web"]["ports"]]


def test_worker_runs_celery_worker_on_the_default_queue(services):
    argv = argv_of(services["worker"])
    assert argv[:4] == ["celery", "-A", "config", "worker"]
    queues = ",".join(option_values(argv, "-Q", "--queues")).split(",")
    loaded = django_settings(services["worker"], "CELERY_TASK_DEFAULT_QUEUE")
    assert loaded["CELERY_TASK_DEFAULT_QUEUE"] in queues


def test_an_inference_worker_serves_a_gpu_pools_queue(services):
    argv = argv_of(services["worker-pool-cpu"])
    assert argv[:4] == ["celery", "-A", "config", "worker"]
    assert option_values(argv, "-Q", "--queues") == ["pool.cpu"]
    assert depends_on(services["worker-pool-cpu"]).get("migrate") == "service_completed_successfully"


def test_beat_runs_celery_beat_with_a_writable_schedule(services):
    argv = argv_of(services["beat"])
    assert argv[:4] == ["celery", "-A", "config", "beat"]
    schedule = option_values(argv, "-s", "--schedule")
    assert len(schedule) == 1
    assert schedule[0].startswith("/tmp/")  # noqa: S108


def test_migrate_runs_migrate_schemas_once(services):
    argv = argv_of(services["migrate"])
    assert argv[:3] == ["python", "manage.py", "migrate_schemas"]
    assert "--noinput" in argv
    assert services["migrate"].get("restart") == "no"


def test_mlflow_server_matches_the_client_and_has_its_database(services):
    mlflow = services["mlflow"]
    image, _, tag = mlflow["image"].rpartition(":")
    assert image == "ghcr.io/mlflow/mlflow"
    assert tag == f"v{version('mlflow')}"
    script = argv_of(mlflow)[2]
    assert script.index("pip install") < script.index("psycopg2-binary") < script.index("mlflow server")
    server = mlflow_server_argv(mlflow)
    backend = urlparse(option_values(server, "--backend-store-uri")[0])
    assert backend.scheme == "postgresql"
    assert backend.hostname == "postgres"
    assert option_values(server, "--host") == ["0.0.0.0"]  # noqa: S104
    allowed_hosts = ",".join(option_values(server, "--allowed-hosts")).split(",")
    assert "mlflow:5000" in allowed_hosts
    database = backend.path.lstrip("/")
    init_scripts = [
        DOCKER_DIR / str(volume).split(":")[0]
        for volume in services["postgres"]["volumes"]
        if str(volume).split(":")[1].startswith("/docker-entrypoint-initdb.d")
    ]
    created = " ".join(path.read_text() for path in init_scripts if path.is_file())
    assert re.search(rf"CREATE\s+DATABASE\s+\"?{database}\"?\s*;", created, re.IGNORECASE)


def test_bind_mounted_files_exist(services):
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith((".", "/")):
                assert (DOCKER_DIR / source).exists(), f"{name} mounts missing {source}"


# --- Dockerfile ------------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [rest for key, rest in self.instructions if key == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    logical, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    if current:
        logical.append(current)
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = [word for word in rest.split() if not word.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            stages.append(Stage(base=words[0], name=name))
        else:
            assert stages, f"{keyword} before any FROM"
            stages[-1].instructions.append((keyword, rest))
    return stages


def words_of(rest: str) -> list[str]:
    return json.loads(rest) if rest.startswith("[") else shlex.split(rest)


def env_of(rest: str) -> dict[str, str]:
    words = shlex.split(rest)
    if "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


@dataclass
class Copy:
    sources: list[str]
    destination: str
    from_stage: str | None


def copies_of(stage: Stage) -> list[tuple[Copy, str]]:
    """Every COPY/ADD of a stage, with the WORKDIR it ran in."""
    result, workdir = [], "/"
    for keyword, rest in stage.instructions:
        if keyword == "WORKDIR":
            workdir = str(PurePosixPath(workdir) / rest)
        if keyword in ("COPY", "ADD"):
            words = words_of(rest)
            flags = [word for word in words if word.startswith("--")]
            paths = [word for word in words if not word.startswith("--")]
            from_stage = next((flag.split("=", 1)[1] for flag in flags if flag.startswith("--from=")), None)
            result.append((Copy(paths[:-1], paths[-1], from_stage), workdir))
    return result


def dockerignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def dockerignored(relative: str) -> bool:
    parts = PurePosixPath(relative).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in dockerignore_patterns():
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        alternatives = [pattern]
        if pattern.startswith("**/"):
            alternatives.append(pattern[3:])
        if any(fnmatch.fnmatch(c, p) for c in candidates for p in alternatives):
            ignored = not negated
    return ignored


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final(stages) -> Stage:
    return stages[-1]


def image_path(final: Stage, repo_path: str) -> str | None:
    """Where a repository file lands in the final image, or None if it is not copied there."""
    for copy, workdir in copies_of(final):
        if copy.from_stage:
            continue
        destination = PurePosixPath(workdir) / copy.destination
        for source in copy.sources:
            source = source.rstrip("/") or "."
            if (ROOT / source).is_dir():
                inside = source == "." or repo_path.startswith(source + "/")
                if inside:
                    return str(destination / PurePosixPath(repo_path).relative_to(source))
            elif source == repo_path:
                many = len(copy.sources) > 1 or copy.destination.endswith("/")
                return str(destination / PurePosixPath(source).name if many else destination)
    return None


def test_final_stage_is_based_on_a_slim_image(stages, final):
    names = {stage.name: stage for stage in stages if stage.name}
    base = final.base
    while base in names:
        base = names[base].base
    assert re.fullmatch(r"[\w./-]+:[\w.]*-slim[\w.-]*", base), base


def test_image_runs_as_a_non_root_user(final):
    users = final.all("USER")
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    if not user.isdigit():
        assert any(re.search(rf"useradd\b.*\b{user}\b", run) for run in final.all("RUN")), user


def test_image_exposes_8000_and_binds_gunicorn_to_every_interface(final):
    exposed = [port.split("/")[0] for rest in final.all("EXPOSE") for port in rest.split()]
    assert "8000" in exposed
    env = {}
    for rest in final.all("ENV"):
        env.update(env_of(rest))
    assert env.get("GUNICORN_BIND") == "0.0.0.0:8000"
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PYTHONUNBUFFERED") == "1"


def test_image_default_command_runs_gunicorn_with_the_project_config(final, services):
    entrypoint = [words_of(rest) for rest in final.all("ENTRYPOINT")]
    command = [words_of(rest) for rest in final.all("CMD")]
    argv = (entrypoint[-1] if entrypoint else []) + (command[-1] if command else [])
    assert argv == WEB_ENTRY
    assert argv == argv_of(services["web"])


def test_image_installs_the_project_from_pyproject(stages):
    for stage in stages:
        instructions = stage.instructions
        for index, (keyword, rest) in enumerate(instructions):
            words = shlex.split(rest) if keyword == "RUN" else []
            if "pip" in words and "install" in words and "." in words and "--no-cache-dir" in words:
                copied_before = [
                    source
                    for key, earlier in instructions[:index]
                    if key == "COPY"
                    for source in words_of(earlier)[:-1]
                ]
                assert "pyproject.toml" in copied_before
                return
    pytest.fail("no `pip install --no-cache-dir .` in the Dockerfile")


def test_every_copied_path_exists_and_is_in_the_build_context(stages):
    stage_names = {stage.name for stage in stages} | {str(i) for i in range(len(stages))}
    checked = 0
    for stage in stages:
        for copy, _ in copies_of(stage):
            if copy.from_stage:
                assert copy.from_stage in stage_names, copy.from_stage
                continue
            for source in copy.sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                if source.strip("/") not in ("", "."):
                    assert not dockerignored(source.strip("/")), f"COPY {source}: excluded by .dockerignore"
                checked += 1
    assert checked


def test_dockerignore_keeps_local_state_out_of_the_context():
    for path in (".venv", "var", ".git", "apps/portal/__pycache__", "config/settings.cpython-311.pyc"):
        assert dockerignored(path), path
    for path in ("manage.py", "pyproject.toml", "config/settings.py", "apps/portal/views.py"):
        assert not dockerignored(path), path


def test_build_time_settings_are_dummies_scoped_to_collectstatic(final, tmp_path):
    for keyword in ("ENV", "ARG"):
        for rest in final.all(keyword):
            assert not {"SECRET_KEY", "DATABASE_URL", "REDIS_URL"} & set(env_of(rest)), rest
    runs = [segment for run in final.all("RUN") for segment in run.split("&&") if "collectstatic" in segment]
    assert len(runs) == 1
    words = shlex.split(runs[0])
    assignments = dict(word.split("=", 1) for word in words if re.fullmatch(r"[A-Z_]+=.*", word))
    argv = [word for word in words if not re.fullmatch(r"[A-Z_]+=.*", word)]
    assert argv[:3] == ["python", "manage.py", "collectstatic"]
    assert "--noinput" in argv
    assert assignments["DEBUG"] == "0"
    assert len(assignments["SECRET_KEY"]) >= 60
    assert not assignments["SECRET_KEY"].startswith("django-insecure")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **assignments}
    env["STATIC_ROOT"] = str(tmp_path / "static")
    result = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "static" / "staticfiles.json").is_file()


# --- commands against the code ---------------------------------------------------------------------


def module_file(module: str) -> Path:
    base = ROOT.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def defines(path: Path, name: str) -> bool:
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(target, ast.Name) and target.id == name for target in targets):
                return True
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name == name:
            return True
    return False


def files_and_probe(argv: list[str]) -> tuple[list[str], str]:
    """The repository files a command needs, and Python that fails unless its entry point loads."""
    if argv[0] == "gunicorn":
        # The application and the worker class come from the config file (ASGI or WSGI, chosen together).
        config = option_values(argv, "-c", "--config")[0]
        probe = (
            f"import importlib, runpy; conf = runpy.run_path({config!r}); "
            "module, _, attribute = conf['wsgi_app'].partition(':'); "
            "assert callable(getattr(importlib.import_module(module), attribute)); "
            "importlib.import_module(conf['worker_class'].rpartition('.')[0] or 'gunicorn.workers.sync')"
        )
        return [config, "config/asgi.py", "config/wsgi.py"], probe
    if argv[0] == "celery":
        target = option_values(argv, "-A", "--app")[0]
        package = module_file(target)
        celery_module = ROOT.joinpath(*target.split("."), "celery.py")
        assert defines(package, "app") or (celery_module.is_file() and defines(celery_module, "app"))
        probe = (
            "from celery import Celery; from celery.app.utils import find_app; "
            f"assert isinstance(find_app({target!r}), Celery)"
        )
        return [str(package.relative_to(ROOT)), str(celery_module.relative_to(ROOT))], probe
    if argv[:2] == ["python", "manage.py"]:
        probe = (
            "import django; django.setup(); from django.core.management import get_commands; "
            f"assert {argv[2]!r} in get_commands()"
        )
        return ["manage.py"], probe
    pytest.fail(f"unknown command {argv}")


@pytest.mark.parametrize("name", APP_SERVICES)
def test_each_command_names_code_that_is_in_the_image_and_loads(name, services, final):
    argv = argv_of(services[name])
    files, probe = files_and_probe(argv)
    assert final.all("WORKDIR")[-1] == "/app"
    for relative in files:
        assert (ROOT / relative).is_file(), relative
        assert image_path(final, relative) == f"/app/{relative}", f"{relative} is not copied to /app"
    env = {
        "PATH": os.environ["PATH"],
        **rendered_env(services[name], SECRET_KEY=TEST_SECRET, API_KEY_PEPPER=TEST_PEPPER),
    }
    env["DJANGO_SETTINGS_MODULE"] = "config.settings"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_compose_environment_gives_production_settings(services):
    loaded = django_settings(
        services["web"],
        "DEBUG",
        "DATABASES",
        "CACHES",
        "CELERY_BROKER_URL",
        "ALLOWED_HOSTS",
        "SECURE_SSL_REDIRECT",
        "SESSION_COOKIE_SECURE",
    )
    assert loaded["DEBUG"] is False
    assert loaded["DATABASES"]["default"]["HOST"] == "postgres"
    assert urlparse(loaded["CACHES"]["default"]["LOCATION"]).hostname == "redis"
    assert urlparse(loaded["CELERY_BROKER_URL"]).hostname == "redis"
    assert "localhost" in loaded["ALLOWED_HOSTS"]
    assert loaded["SECURE_SSL_REDIRECT"] is False
    assert loaded["SESSION_COOKIE_SECURE"] is False

"""deploy/: the container image and the compose file, checked without a container engine.

The compose file is parsed and checked against the settings and the CLI it configures;
the Dockerfile is parsed and its health probe run against the real app. If a Compose CLI
happens to be installed, it validates the file too (optional: skipped when absent).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml
from sqlalchemy.engine import make_url

from carebridge.app import create_app
from carebridge.cli import build_parser
from carebridge.db import make_engine
from carebridge.keyring import Keyring
from carebridge.runtime import Runtime
from carebridge.settings import PREFIX, Settings, load_settings
from tests.realparts import require

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

BASE_IMAGE = "python:3.11-slim-bookworm"
APP_SERVICES = ("carebridge", "migrate", "worker")
LONG_RUNNING = ("carebridge", "worker")
KNOWN_SETTINGS = {PREFIX + name.upper() for name in Settings.model_fields}
# Inside a container the service must listen on every interface, and write only to /tmp.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104
TMP = "/tmp"  # noqa: S108

# What an operator would export before `docker compose up` (see deploy/compose.yaml).
OPERATOR_VARIABLES = {
    "POSTGRES_PASSWORD": "0123456789abcdef",
    "CAREBRIDGE_ISSUER": "https://id.example.org",
    "CAREBRIDGE_FORWARDED_ALLOW_IPS": "172.18.0.1",
    "CAREBRIDGE_METRICS_TOKEN": "fedcba9876543210fedcba9876543210",
    "CAREBRIDGE_SMTP_URL": "smtps://carebridge:0123456789abcdef@smtp.example.org:465",
}

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}
_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's variable substitution, for the forms the compose file uses."""

    def substitute(match: re.Match[str]) -> str:
        name, op = match["name"], match["op"] or ""
        if variables.get(name):
            return variables[name]
        if op.endswith("-"):
            return match["arg"]
        if op.endswith("?"):
            raise KeyError(f"{name} is required: {match['arg']}")
        return ""

    return _VARIABLE.sub(substitute, value)


# The compose file


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def test_compose_defines_the_five_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {"carebridge", "migrate", "worker", "postgres", "redis"}


def test_compose_has_no_obsolete_version_key(compose: dict[str, Any]) -> None:
    assert "version" not in compose


def test_app_services_share_one_image_built_from_the_dockerfile(
    services: dict[str, dict[str, Any]],
) -> None:
    images = {services[name]["image"] for name in APP_SERVICES}
    assert len(images) == 1
    for name in APP_SERVICES:
        build = services[name]["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert context == ROOT, name
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE, name


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_run_in_production_mode_on_postgresql(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    env = services[name]["environment"]
    assert env["CAREBRIDGE_ENV"] == "production"
    assert env["CAREBRIDGE_SMS_BACKEND"] == "twilio"
    assert env["CAREBRIDGE_EMAIL_BACKEND"] == "smtp"
    assert env["CAREBRIDGE_DATABASE_URL"].startswith("postgresql://")
    assert "sqlite" not in env["CAREBRIDGE_DATABASE_URL"]
    # Required values fail the deployment loudly instead of falling back to a default.
    assert env["CAREBRIDGE_ISSUER"].startswith("${CAREBRIDGE_ISSUER:?")
    assert "${POSTGRES_PASSWORD:?" in env["CAREBRIDGE_DATABASE_URL"]


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_set_only_real_settings(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    env = services[name]["environment"]
    assert isinstance(env, dict), "environment as a mapping keeps names checkable"
    unknown = {key for key in env if key.startswith(PREFIX)} - KNOWN_SETTINGS
    assert not unknown, f"not settings (the service would refuse to start): {sorted(unknown)}"


def test_compose_variables_with_the_settings_prefix_are_settings() -> None:
    # An operator exports these in a shell; a CAREBRIDGE_* name that is not a setting
    # would then make every host-side `carebridge` command fail as an unknown setting.
    names = {m["name"] for m in _VARIABLE.finditer(COMPOSE_FILE.read_text(encoding="utf-8"))}
    assert {"POSTGRES_PASSWORD", "CAREBRIDGE_ISSUER"} <= names
    assert {name for name in names if name.startswith(PREFIX)} <= KNOWN_SETTINGS


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_environment_passes_the_production_checks(
    services: dict[str, dict[str, Any]], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in services[name]["environment"].items():
        monkeypatch.setenv(key, interpolate(str(value), OPERATOR_VARIABLES))
    settings = load_settings()
    assert settings.production_problems() == []
    assert settings.effective_database_url.startswith("postgresql+psycopg://")
    assert settings.issuer == OPERATOR_VARIABLES["CAREBRIDGE_ISSUER"]


def test_required_variables_stop_the_deployment(services: dict[str, dict[str, Any]]) -> None:
    environment = "\n".join(map(str, services["carebridge"]["environment"].values()))
    assert interpolate(environment, OPERATOR_VARIABLES)
    for missing in (
        "POSTGRES_PASSWORD",
        "CAREBRIDGE_ISSUER",
        "CAREBRIDGE_METRICS_TOKEN",
        "CAREBRIDGE_SMTP_URL",
    ):
        variables = {k: v for k, v in OPERATOR_VARIABLES.items() if k != missing}
        with pytest.raises(KeyError, match=missing):
            interpolate(environment, variables)


def test_app_services_reach_the_compose_postgres_and_redis(
    services: dict[str, dict[str, Any]],
) -> None:
    postgres_env = {
        key: interpolate(str(value), OPERATOR_VARIABLES)
        for key, value in services["postgres"]["environment"].items()
    }
    for name in APP_SERVICES:
        env = services[name]["environment"]
        url = make_url(interpolate(env["CAREBRIDGE_DATABASE_URL"], OPERATOR_VARIABLES))
        assert (url.host, url.port) == ("postgres", 5432), name
        assert url.username == postgres_env["POSTGRES_USER"], name
        assert url.password == postgres_env["POSTGRES_PASSWORD"], name
        assert url.database == postgres_env["POSTGRES_DB"], name
        assert env["CAREBRIDGE_REDIS_URL"].startswith("redis://redis:6379/"), name


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_read_the_keyring_from_a_compose_secret(
    compose: dict[str, Any], services: dict[str, dict[str, Any]], name: str
) -> None:
    keyring_file = services[name]["environment"]["CAREBRIDGE_KEYRING_FILE"]
    assert keyring_file.startswith("/run/secrets/")
    secret = keyring_file.removeprefix("/run/secrets/")
    mounted = {
        s if isinstance(s, str) else s.get("target", s["source"]) for s in services[name]["secrets"]
    }
    assert secret in mounted
    assert "file" in compose["secrets"][secret]


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_long_running_services_wait_for_healthy_backends_and_migrations(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    depends_on = services[name]["depends_on"]
    assert depends_on["postgres"]["condition"] == "service_healthy"
    assert depends_on["redis"]["condition"] == "service_healthy"
    assert depends_on["migrate"]["condition"] == "service_completed_successfully"


def test_migrate_runs_once_after_postgres_is_healthy(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    assert migrate["command"] == ["db", "upgrade"]
    assert migrate["restart"] == "no"  # the string: a bare `no` is YAML for false
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"


@pytest.mark.parametrize(("name", "probe"), [("postgres", "pg_isready"), ("redis", "redis-cli")])
def test_backing_services_have_healthchecks(
    services: dict[str, dict[str, Any]], name: str, probe: str
) -> None:
    healthcheck = services[name]["healthcheck"]
    assert not healthcheck.get("disable", False)
    assert healthcheck["test"][0] in ("CMD", "CMD-SHELL")
    assert probe in " ".join(healthcheck["test"][1:])


def test_postgres_keeps_its_data_in_a_named_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    (mount,) = [v for v in services["postgres"]["volumes"] if "/var/lib/postgresql" in v]
    volume = mount.split(":", 1)[0]
    assert volume in compose["volumes"]


@pytest.mark.parametrize("name", ["migrate", "worker"])
def test_services_without_http_turn_off_the_image_healthcheck(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    assert services[name]["healthcheck"] == {"disable": True}


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_are_locked_down(services: dict[str, dict[str, Any]], name: str) -> None:
    service = services[name]
    assert service["read_only"] is True
    assert TMP in service["tmpfs"]
    assert "no-new-privileges:true" in service["security_opt"]
    assert service["cap_drop"] == ["ALL"]
    assert "privileged" not in service
    assert "cap_add" not in service


def parse_cli(argv: list[str]) -> Any:
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"'carebridge {' '.join(argv)}' is not a command the CLI accepts")


@pytest.mark.parametrize(
    ("name", "command"),
    [
        ("carebridge", ["serve", "--host", ALL_INTERFACES, "--port", "8000"]),
        ("migrate", ["db", "upgrade"]),
        ("worker", ["worker"]),
    ],
)
def test_app_services_run_real_cli_commands(
    services: dict[str, dict[str, Any]], name: str, command: list[str]
) -> None:
    assert services[name]["command"] == command
    assert callable(parse_cli(command).handler)


def test_the_service_listens_on_the_published_port(services: dict[str, dict[str, Any]]) -> None:
    args = parse_cli(services["carebridge"]["command"])
    assert args.host == ALL_INTERFACES
    container_ports = {str(p).rsplit(":", 1)[-1] for p in services["carebridge"]["ports"]}
    assert container_ports == {str(args.port)}


# The Dockerfile


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Instructions per build stage, as (INSTRUCTION, arguments), continuations joined."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    stages: list[list[tuple[str, str]]] = [[]]
    for line in logical:
        instruction, _, arguments = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append([])
        stages[-1].append((instruction, arguments.strip()))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[list[tuple[str, str]]]:
    return dockerfile_stages()


@pytest.fixture(scope="module")
def final_stage(stages: list[list[tuple[str, str]]]) -> list[tuple[str, str]]:
    return stages[-1]


def arguments(stage: list[tuple[str, str]], instruction: str) -> list[str]:
    return [args for name, args in stage if name == instruction]


def exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list), f"not exec (JSON) form: {value}"
    assert all(isinstance(item, str) for item in parsed)
    return parsed


def test_dockerfile_is_multi_stage_on_the_pinned_base(stages: list[list[tuple[str, str]]]) -> None:
    build_args = dict(a.split("=", 1) for a in arguments(stages[0], "ARG") if "=" in a)
    froms = [stage[0][1].split()[0] for stage in stages[1:]]
    assert len(froms) >= 2
    for image in froms:
        resolved = re.sub(r"\$\{(\w+)\}", lambda m: build_args[m[1]], image)
        assert resolved == BASE_IMAGE


def test_dependencies_come_from_the_hashed_lock_only(stages: list[list[tuple[str, str]]]) -> None:
    runs = [args for stage in stages for args in arguments(stage, "RUN")]
    (lock_install,) = [r for r in runs if "-r requirements.lock" in r]
    assert "--require-hashes" in lock_install
    assert "--no-deps" in lock_install
    (project_install,) = [r for r in runs if re.search(r"pip install [^&]*--no-build-isolation", r)]
    assert "--no-deps" in project_install
    assert re.search(r"--no-build-isolation \.(\s|$)", project_install)
    # Without build isolation the build backend must come from the lock, pinned by hash.
    assert re.search(r"^setuptools==\S+ \\$", (ROOT / "requirements.lock").read_text(), re.M)


def test_final_stage_runs_as_a_fixed_non_root_user(final_stage: list[tuple[str, str]]) -> None:
    users = arguments(final_stage, "USER")
    assert users, "the final stage must drop root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit(), "a numeric uid lets orchestrators verify it is not root"
    assert int(uid) != 0
    assert not gid or int(gid) != 0


def test_final_stage_environment_ports_and_command(final_stage: list[tuple[str, str]]) -> None:
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(arguments(final_stage, "ENV"))))
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert {name for name in env if name.startswith(PREFIX)} <= KNOWN_SETTINGS
    assert "8000" in " ".join(arguments(final_stage, "EXPOSE")).split()
    assert exec_form(arguments(final_stage, "ENTRYPOINT")[-1]) == ["carebridge"]
    args = parse_cli(exec_form(arguments(final_stage, "CMD")[-1]))
    assert (args.host, args.port) == (ALL_INTERFACES, 8000)


def test_final_stage_installs_no_build_tools(final_stage: list[tuple[str, str]]) -> None:
    runs = " ".join(arguments(final_stage, "RUN"))
    for tool in ("apt-get install", "build-essential", "gcc", "pip install"):
        assert tool not in runs


def healthcheck_command(final_stage: list[tuple[str, str]]) -> list[str]:
    (healthcheck,) = arguments(final_stage, "HEALTHCHECK")
    match = re.search(r"\bCMD\s+(\[.*\])\s*$", healthcheck)
    assert match, "HEALTHCHECK CMD in exec form"
    return exec_form(match[1])


def test_healthcheck_probes_healthz_with_python(final_stage: list[tuple[str, str]]) -> None:
    command = healthcheck_command(final_stage)
    assert command[:2] == ["python", "-c"]  # slim images have no curl or wget
    assert "http://127.0.0.1:8000/healthz" in command[2]


@pytest.fixture
def production_app_port() -> Iterator[int]:
    """The real app, production settings, served by uvicorn on a free loopback port."""
    settings = Settings(
        env="production",
        issuer="https://id.example.org",
        database_url="sqlite:///:memory:",
        sms_backend="twilio",
        keyring_file=Path("/run/secrets/keyring"),
    )
    runtime = Runtime(settings, make_engine("sqlite://"), Keyring.generate(development=False))
    config = uvicorn.Config(create_app(runtime), log_config=None, access_log=False)
    server = uvicorn.Server(config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped before it started serving"
        assert time.monotonic() < deadline, "uvicorn did not start within 15 s"
        time.sleep(0.05)
    yield sock.getsockname()[1]
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def test_healthcheck_probe_against_the_production_app(
    final_stage: list[tuple[str, str]], production_app_port: int
) -> None:
    # Production accepts only the issuer's Host on pages; the probe sends 127.0.0.1.
    probe = healthcheck_command(final_stage)[2].replace(
        "127.0.0.1:8000", f"127.0.0.1:{production_app_port}"
    )
    env = {
        "PATH": os.environ.get("PATH", ""),
        # A proxy in the environment must not capture the loopback probe.
        "http_proxy": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
    }
    result = subprocess.run(
        [sys.executable, "-c", probe],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    broken = probe.replace("/healthz", "/")  # a page, where the Host check applies
    result = subprocess.run(
        [sys.executable, "-c", broken], check=False, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "400" in result.stderr


def copy_sources(stages: list[list[tuple[str, str]]]) -> list[str]:
    sources = []
    for stage in stages:
        for args in arguments(stage, "COPY"):
            parts = args.split()
            if any(p.startswith("--from=") for p in parts):
                continue
            sources += [p for p in parts[:-1] if not p.startswith("--")]
    return sources


def test_every_copied_file_exists_and_reaches_the_build_context(
    stages: list[list[tuple[str, str]]],
) -> None:
    sources = copy_sources(stages)
    assert "requirements.lock" in sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
        assert not dockerignore_excludes(source), f"COPY {source}: excluded by .dockerignore"


def test_image_gets_everything_the_project_build_reads(
    stages: list[list[tuple[str, str]]],
) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {
        path.name
        for path in ROOT.iterdir()
        if (path / "__init__.py").is_file()
        and any(re.fullmatch(p.replace("*", ".*"), path.name) for p in patterns)
    }
    assert "carebridge" in packages
    copied = {source.rstrip("/") for source in copy_sources(stages)}
    missing = (packages | {"pyproject.toml", project["project"]["readme"]}) - copied
    assert not missing, f"the image build would miss {sorted(missing)}"


# .dockerignore (Docker's rules: last match wins, `!` re-includes, a matched directory
# excludes everything under it, `*` stays within one path segment, `**` spans several)


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out.append(pattern[i : end + 1])
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def dockerignore_excludes(path: str) -> bool:
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        regex = _dockerignore_regex(os.path.normpath(line.lstrip("!").strip("/")))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def test_dockerignore_matcher_follows_docker_rules() -> None:
    assert _dockerignore_regex("**/__pycache__").fullmatch("__pycache__")
    assert _dockerignore_regex("**/__pycache__").fullmatch("carebridge/cli/__pycache__")
    assert not _dockerignore_regex("*.md").fullmatch("docs/operations.md")
    assert _dockerignore_regex("**/*.py[cod]").fullmatch("carebridge/app.pyc")


@pytest.mark.parametrize(
    "path",
    [
        ".git/config",
        ".venv/bin/python",
        "var/carebridge.db",
        "var/keyring.json",
        "deploy/keyring.json",
        "deploy/.env",
        ".env",
        "carebridge/__pycache__/app.cpython-311.pyc",
        ".pytest_cache/README.md",
        "node_modules/x/index.js",
    ],
)
def test_dockerignore_keeps_local_state_and_secrets_out_of_the_context(path: str) -> None:
    assert dockerignore_excludes(path)


# Optional: a real Compose CLI, when one is installed


def compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, check=False, timeout=30
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_cli_accepts_the_file(tmp_path: Path) -> None:
    cli = compose_cli()
    if cli is None:
        require(
            "docker compose",
            False,
            "neither 'docker compose' nor 'docker-compose' is installed "
            "(.ci/run installs Debian's docker-compose)",
        )
        return
    keyring = tmp_path / "keyring.json"
    keyring.write_text("{}", encoding="utf-8")
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("", encoding="utf-8")
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in OPERATOR_VARIABLES and not k.startswith(("CAREBRIDGE_", "COMPOSE_"))
    }
    command = [*cli, "--env-file", str(empty_env_file), "-f", str(COMPOSE_FILE), "config", "-q"]

    def run(variables: dict[str, str]) -> subprocess.CompletedProcess[str]:
        env = {**base, **variables, "KEYRING_PATH": str(keyring)}
        return subprocess.run(
            command, env=env, capture_output=True, text=True, check=False, timeout=120
        )

    accepted = run(OPERATOR_VARIABLES)
    assert accepted.returncode == 0, accepted.stderr
    without_password = {k: v for k, v in OPERATOR_VARIABLES.items() if k != "POSTGRES_PASSWORD"}
    refused = run(without_password)
    assert refused.returncode != 0
    assert "POSTGRES_PASSWORD" in refused.stderr

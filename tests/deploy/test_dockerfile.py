"""The Dockerfile: multi-stage, non-root, PostgreSQL client at a pinned major that can dump the
sources, and commands (its own, the chart's, Compose's) that name entry points which exist."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser

from tests.deploy.chart import argv, production_values, render
from tests.deploy.compose import REPO, as_argv, check_entry_point, compose, shell_commands

DOCKERFILE = REPO / "Dockerfile"


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    return DockerfileParser(path=str(DOCKERFILE))


def stages(parser: DockerfileParser) -> list[list[dict[str, Any]]]:
    """Instructions grouped by build stage (everything before the first FROM is dropped)."""
    out: list[list[dict[str, Any]]] = []
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            out.append([])
        if out and instruction["instruction"] != "COMMENT":
            out[-1].append(instruction)
    return out


def exec_form(instruction: dict[str, Any]) -> list[str]:
    value = instruction["value"].strip()
    assert value.startswith("["), f"{instruction['instruction']} must use the exec (JSON) form"
    return json.loads(value)


def test_image_is_multi_stage_and_runs_as_a_numeric_non_root_user(
        dockerfile: DockerfileParser) -> None:
    build, runtime = stages(dockerfile)[-2:]
    assert len(stages(dockerfile)) >= 2
    assert re.search(r"\bAS build\b", build[0]["value"])
    copies = [i["value"] for i in runtime if i["instruction"] == "COPY"]
    assert any(c.startswith("--from=build ") for c in copies)
    users = [i["value"] for i in runtime if i["instruction"] == "USER"]
    assert users, "the final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, users[-1]
    # the chart runs pods as the same user
    assert render({}).values["podSecurityContext"]["runAsUser"] == int(uid)


def test_postgresql_clients_cover_every_major_up_to_the_newest_source(
        dockerfile: DockerfileParser) -> None:
    majors = [int(m) for m in dockerfile.args["PG_MAJORS"].strip('"').split()]
    runtime = stages(dockerfile)[-1]
    installs = " ".join(i["value"] for i in runtime if i["instruction"] == "RUN")
    assert "postgresql-client-$major" in installs and "${PG_MAJORS}" in installs
    assert "mariadb-client" in installs  # mariadb-dump and mariadb, for the mysql sources
    # no pin: the tools are chosen per server major (regionvault.sources.pgtools), and a pin
    # would make every server use one major's tools
    assert "REGIONVAULT_PG_BIN" not in dockerfile.envs
    # the comment above the list says why the majors matter
    text = DOCKERFILE.read_text()
    assert re.search(r"#.*pg_dump.*\n(#.*\n)*ARG PG_MAJORS=", text)
    # pg_dump must be at least as new as every server it dumps: the compose stack's PostgreSQL
    server = compose()["services"]["postgres"]["image"]
    server_major = int(re.fullmatch(r"postgres:(\d+)(\.\d+)?(-.*)?", server).group(1))
    assert server_major in majors and max(majors) >= server_major >= 18
    assert majors == sorted(set(majors))


def test_entrypoint_and_cmd_name_programs_that_exist(dockerfile: DockerfileParser) -> None:
    runtime = stages(dockerfile)[-1]
    (entrypoint,) = [exec_form(i) for i in runtime if i["instruction"] == "ENTRYPOINT"]
    (cmd,) = [exec_form(i) for i in runtime if i["instruction"] == "CMD"]
    # tini is installed by the same stage that makes it the entrypoint
    assert entrypoint == ["/usr/bin/tini", "--"]
    installs = " ".join(i["value"] for i in runtime if i["instruction"] == "RUN")
    assert re.search(r"apt-get install [^&]*\btini\b", installs)
    # the default command is a console script of this package
    assert check_entry_point(cmd) == "regionvault"
    assert dockerfile.envs["PATH"].startswith("/opt/regionvault/bin")


def test_every_command_given_to_the_image_is_an_entry_point() -> None:
    """The chart's and Compose's commands for this image: celery -A workers ..., regionvault."""
    commands: list[list[str]] = []
    rendered = render(production_values())
    for deployment in rendered.of_kind("Deployment"):
        for c in deployment["spec"]["template"]["spec"]["containers"]:
            commands.append(argv(c))
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                script = c.get(probe, {}).get("exec", {}).get("command")
                if script:
                    assert script[:2] == ["sh", "-c"]
                    commands.extend(shell_commands(script[2]))
    for svc in compose()["services"].values():
        if svc.get("image") == "regionvault:dev":
            commands.append(as_argv(svc["command"]))
    found = {check_entry_point(command) for command in commands}
    assert found == {"celery worker", "celery beat", "regionvault", "celery inspect"}


def test_build_copies_every_module_the_package_installs(dockerfile: DockerfileParser) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    build = stages(dockerfile)[0]
    copied = {part.rstrip("/") for i in build if i["instruction"] == "COPY"
              for part in i["value"].split()[:-1] if not part.startswith("--")}
    setuptools = project["tool"]["setuptools"]
    wanted = {f"{m}.py" for m in setuptools.get("py-modules", [])}
    wanted |= {p.rstrip("*") for p in setuptools["packages"]["find"]["include"]
               if p.endswith("*") and "." not in p}
    wanted |= {"pyproject.toml", project["project"]["readme"]}
    assert wanted <= copied, wanted - copied
    runs = " ".join(i["value"] for i in build if i["instruction"] == "RUN")
    assert re.search(r"pip install \.(\s|$)", runs)  # a regular install, not --editable
    # .dockerignore keeps none of them out of the build context
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for path in wanted:
        assert not any(fnmatch.fnmatch(path, pattern) for pattern in ignored), path

"""The service definitions in deploy/: systemd template units and the Kubernetes example.

Each is parsed as its tool would, checked for least privilege (an unprivileged user, or a
drop to one, with CAP_NET_RAW the only capability left), and its command line is put to
the command it starts: a flag the command does not accept fails here, not on a host.
``systemd-analyze verify`` checks the units where it is installed.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is in the test extra: pip install -e '.[test]'")

from tcpcopy.intercept import main as intercept_main   # noqa: E402
from tcpcopy.session import main as tcpcopy_main       # noqa: E402

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
MODULE_UNITS = {"tcpcopy-owner@.service": "tcpcopy.session.owner",
                "tcpcopy-capture@.service": "tcpcopy.capture.worker",
                "tcpcopy-intercept@.service": "tcpcopy.intercept.main"}


def read_unit(path: Path) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str   # systemd keys are case-sensitive
    unit.read(path)
    return unit


def read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def exec_argv(command: str, env: dict[str, str]) -> list[str]:
    """ExecStart's words as systemd makes them: $VAR split at spaces, ${VAR} one word."""
    words = []
    for word in command.split():
        braced = re.fullmatch(r"\$\{(\w+)\}", word)
        plain = re.fullmatch(r"\$(\w+)", word)
        if braced:
            words.append(env[braced.group(1)])
        elif plain:
            words.extend(env[plain.group(1)].split())
        else:
            words.append(word.replace("%i", "0"))
    return words


def test_there_is_a_unit_for_every_role() -> None:
    assert {u.name for u in UNITS} == {"tcpcopy@.service", "intercept@.service", *MODULE_UNITS}


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_each_unit_runs_unprivileged_with_cap_net_raw_alone(path: Path) -> None:
    service = read_unit(path)["Service"]
    assert service["User"] == "tcpcopy" and service["Group"] == "tcpcopy"
    assert service["AmbientCapabilities"] == service["CapabilityBoundingSet"] == "CAP_NET_RAW"
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"   # SIGHUP reopens log files
    assert "AF_PACKET" in service["RestrictAddressFamilies"]    # the captures
    assert read_unit(path)["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.parametrize("name,parse,env_file", [
    ("tcpcopy@.service", tcpcopy_main.parse_args, "tcpcopy-example.env"),
    ("intercept@.service", intercept_main.parse_args, "intercept-example.env")])
def test_the_commands_accept_the_units_flags(name: str, parse, env_file: str) -> None:
    service = read_unit(DEPLOY / "systemd" / name)["Service"]
    argv = exec_argv(service["ExecStart"], read_env(DEPLOY / "systemd" / env_file))
    assert Path(argv[0]).name == name.partition("@")[0]
    parse(argv[1:])   # exits 2 naming the flag when one is wrong


@pytest.mark.parametrize("name,module", sorted(MODULE_UNITS.items()))
def test_the_cluster_units_run_one_shard_each_with_flags_their_module_takes(name: str, module: str) -> None:
    service = read_unit(DEPLOY / "systemd" / name)["Service"]
    argv = exec_argv(service["ExecStart"], {})
    assert argv[1:3] == ["-m", module] and argv[-2:] == ["--shard", "0"]
    usage = subprocess.run([sys.executable, "-m", module, "-h"], capture_output=True, text=True, timeout=30).stdout
    assert all(flag in usage for flag in argv[3:] if flag.startswith("--"))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_finds_nothing(tmp_path: Path) -> None:
    """Each template as an instance, its programs pointed at this interpreter's."""
    bin_dir = Path(sys.executable).parent
    for unit in UNITS:
        text = unit.read_text().replace("/opt/tcpcopy/bin/", f"{bin_dir}/")
        (tmp_path / unit.name.replace("@", "@0")).write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", *sorted(map(str, tmp_path.glob("*.service")))],
                          capture_output=True, text=True, timeout=60)
    ours = [line for line in done.stderr.splitlines() if str(tmp_path) in line or "@0.service" in line]
    assert done.returncode == 0 and not ours, done.stderr


# ------------------------------------------------------------------------ Kubernetes

def k8s_documents() -> list[dict]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / "k8s" / "tcpcopy.yaml").read_text()) if doc]


def daemonsets() -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in k8s_documents() if doc["kind"] == "DaemonSet"}


def test_the_kubernetes_example_has_a_host_network_daemonset_per_role() -> None:
    sets = daemonsets()
    assert set(sets) == {"intercept", "tcpcopy"}
    for daemonset in sets.values():
        pod = daemonset["spec"]["template"]["spec"]
        assert pod["hostNetwork"] is True and pod["automountServiceAccountToken"] is False
        assert daemonset["spec"]["selector"]["matchLabels"].items() <= daemonset["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("name", ["intercept", "tcpcopy"])
def test_each_container_keeps_net_raw_and_drops_to_a_user_at_once(name: str) -> None:
    container, = daemonsets()[name]["spec"]["template"]["spec"]["containers"]
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
    assert context["capabilities"]["drop"] == ["ALL"]
    assert "NET_RAW" in context["capabilities"]["add"]
    assert set(context["capabilities"]["add"]) <= {"NET_RAW", "SETUID", "SETGID", "CHOWN"}
    args = container["args"]
    assert args[args.index("--user") + 1] == "nobody"


@pytest.mark.parametrize("name,parse", [("intercept", intercept_main.parse_args), ("tcpcopy", tcpcopy_main.parse_args)])
def test_the_commands_accept_the_containers_flags(name: str, parse) -> None:
    container, = daemonsets()[name]["spec"]["template"]["spec"]["containers"]
    assert Path(container["command"][0]).name == name
    parse(container["args"])

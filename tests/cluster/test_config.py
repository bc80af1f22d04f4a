"""The cluster config as an operator writes it: every mistake is a ConfigError that names the
file, the key path and the fix; nothing unknown or mistyped passes silently."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcpcopy.cluster.options import capture_filter
from tcpcopy.cluster.ops import main as cli
from tcpcopy.cluster.config import (INTERCEPT_MAX_ANSWER_BYTES, INTERCEPT_MAX_PAYLOAD, INTERCEPT_WATCH_MAX,
                                    ConfigError, InterceptAddress, Mapping, load_config)

SAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "cluster-sample.toml"

BASE = {"copy.mappings": '["80-198.18.0.2:8080"]', "copy.intercepts": '["198.18.2.1:36524"]'}


def toml(changes: dict[str, str | None] | None = None) -> str:
    """BASE with ``{"section.key": rhs}`` set (None: removed), as TOML text."""
    keys = {**BASE, **(changes or {})}
    sections: dict[str, list[str]] = {}
    for path, rhs in keys.items():
        section, _, key = path.partition(".")
        if rhs is not None:
            sections.setdefault(section, []).append(f"{key} = {rhs}")
    return "".join(f"[{section}]\n" + "\n".join(lines) + "\n\n" for section, lines in sections.items())


def load(tmp_path, changes=None, text=None):
    path = tmp_path / "cluster.toml"
    path.write_text(text if text is not None else toml(changes))
    return load_config(path)


def error(tmp_path, changes=None, text=None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, changes, text)
    exc = caught.value
    assert str(exc).startswith(f"{tmp_path / 'cluster.toml'}: "), "the message names the file"
    assert exc.fix and str(exc).endswith(exc.fix), "the message ends with the fix"
    return exc


# ------------------------------------------------------------------------------ loads

def test_the_sample_config_loads():
    config = load_config(SAMPLE)
    assert config.path == str(SAMPLE)
    assert config.copy.mappings == (Mapping(None, 80, "198.18.0.2", 8080),)
    assert config.copy.intercepts == (InterceptAddress("198.18.2.1", 36524), InterceptAddress("198.18.2.1", 36525))
    assert config.copy.client_pool[0] == "198.18.3.1" and len(config.copy.client_pool) == 254
    assert (config.capture.workers, config.owners.count, config.intercept.count) == (2, 2, 2)
    assert config.capture.interface == "eth0" and config.intercept.interfaces == ("eth0",)
    assert config.intercept.filter == "tcp and src port 8080"
    assert config.supervisor.dir == "/run/tcpcopy-cluster"
    assert config.owner_endpoints() == ("ipc:///run/tcpcopy/owner-0.sock", "ipc:///run/tcpcopy/owner-1.sock")
    assert config.intercept_endpoint(1) == "tcp://0.0.0.0:36525"


def test_only_mappings_and_intercepts_are_required(tmp_path):
    config = load(tmp_path)
    copy = config.copy
    assert (copy.copies, copy.port_offset, copy.sample_percent, copy.client_pool) == (1, 0, 100, ())
    assert (copy.session_timeout, copy.keepalive_timeout, copy.memory_limit_mb) == (600.0, 720.0, None)
    assert (copy.only_full_sessions, copy.no_wait, copy.lonely, copy.mtu, copy.fake_syn_mss) == (
        False, False, False, 1500, 1460)
    assert (config.capture.workers, config.capture.interface, config.capture.filter) == (1, "any", "")
    assert config.intercept.count == 1   # as many as copy.intercepts lists
    assert config.intercept.filter == "tcp and ((src host 198.18.0.2 and src port 8080))"
    assert config.capture_bpf() == capture_filter(config.copy.mappings)   # pure ACKs left out


def test_keepalive_defaults_to_session_timeout_plus_120(tmp_path):
    assert load(tmp_path, {"copy.session_timeout": "30"}).copy.keepalive_timeout == 150.0


def test_a_whole_number_is_a_valid_duration(tmp_path):
    timeout = load(tmp_path, {"copy.session_timeout": "30"}).copy.session_timeout
    assert timeout == 30.0 and isinstance(timeout, float)


def test_relative_directories_are_taken_from_the_config_file(tmp_path):
    config = load(tmp_path, {"owners.run_dir": '"run"', "supervisor.dir": '"sv"'})
    assert config.owners.run_dir == str(tmp_path / "run")
    assert config.role_dir("online") == str(tmp_path / "sv" / "online")


def test_user_capture_filter_is_anded_with_the_mapping_filter(tmp_path):
    config = load(tmp_path, {"capture.filter": '"not src net 198.18.9.0/24"'})
    assert config.capture_bpf() == f"({capture_filter(config.copy.mappings)}) and (not src net 198.18.9.0/24)"


def test_all_acks_keeps_the_clients_pure_acks_in_the_capture(tmp_path):
    config = load(tmp_path, {"capture.all_acks": "true"})
    assert config.capture_bpf() == "tcp and (((dst port 80)))"


def test_several_intercepts_on_one_assistant_host(tmp_path):
    config = load(tmp_path, {"copy.intercepts": '["198.18.2.1:40000", "198.18.2.1:40001"]',
                             "intercept.base_port": "40000", "intercept.bind": '"198.18.2.1"'})
    assert config.intercept.count == 2
    assert config.intercept_endpoint(1) == "tcp://198.18.2.1:40001"


def test_payload_limit_is_the_intercepts():
    from tcpcopy.intercept.worker import MAX_PAYLOAD
    assert INTERCEPT_MAX_PAYLOAD == MAX_PAYLOAD


def test_answer_bytes_limit_and_watch_max_default_are_the_intercepts(tmp_path):
    from tcpcopy.intercept.routes import DEFAULT_MAX_WATCHED
    from tcpcopy.intercept.worker import MAX_ANSWER_BYTES
    assert (INTERCEPT_MAX_ANSWER_BYTES, INTERCEPT_WATCH_MAX) == (MAX_ANSWER_BYTES, DEFAULT_MAX_WATCHED)
    section = load(tmp_path, {"intercept.answer_bytes": "65536", "intercept.watch_max": "100"}).intercept
    assert (section.answer_bytes, section.watch_max) == (65536, 100)
    assert load(tmp_path).intercept.answer_bytes == 0


# ----------------------------------------------------------------------- unknown keys

def test_unknown_key_is_named_with_its_section_and_a_suggestion(tmp_path):
    exc = error(tmp_path, {"capture.worker": "2"})
    assert exc.key == "capture.worker"
    assert "did you mean 'workers'?" in exc.fault
    assert "remove it" in exc.fix


def test_unknown_key_far_from_any_known_one(tmp_path):
    exc = error(tmp_path, {"owners.colour": '"blue"'})
    assert exc.key == "owners.colour" and "did you mean" not in exc.fault


def test_unknown_section_is_named(tmp_path):
    exc = error(tmp_path, {"captrue.workers": "2"})
    assert exc.key == "captrue" and "did you mean 'capture'?" in exc.fault


def test_a_key_outside_any_section(tmp_path):
    exc = error(tmp_path, text='workers = 2\n' + toml())
    assert exc.key == "workers" and exc.fix == "move it under [capture]"
    exc = error(tmp_path, text='count = 2\n' + toml())
    assert exc.fix == "move it under [owners] or [intercept]"


def test_a_section_written_as_a_value(tmp_path):
    exc = error(tmp_path, text='supervisor = "/run"\n' + toml())
    assert exc.key == "supervisor" and "[supervisor] header" in exc.fix


# ---------------------------------------------------------------------------- required

@pytest.mark.parametrize("key", ["copy.mappings", "copy.intercepts"])
def test_required_key_missing(tmp_path, key):
    exc = error(tmp_path, {key: None})
    assert exc.key == key and exc.fault == "is required"
    assert key.split(".")[1] + " = [" in exc.fix


def test_copy_section_missing(tmp_path):
    exc = error(tmp_path, text="[capture]\nworkers = 2\n")
    assert exc.key == "copy" and "mappings and intercepts" in exc.fix


@pytest.mark.parametrize("key", ["copy.mappings", "copy.intercepts"])
def test_empty_required_list(tmp_path, key):
    exc = error(tmp_path, {key: "[]"})
    assert exc.key == key and exc.fault == "is empty"


# ------------------------------------------------------------------------------- types

@pytest.mark.parametrize("key, rhs, found, fix", [
    ("copy.copies", '"2"', "is a string, expected a whole number", "copies = 1"),
    ("copy.copies", "true", "is a boolean, expected a whole number", "copies = 1"),
    ("copy.copies", "2.5", "is a float, expected a whole number", "copies = 1"),
    ("copy.session_timeout", '"600"', "is a string, expected a number", "session_timeout = 600.0"),
    ("copy.session_timeout", "false", "is a boolean, expected a number", "session_timeout = 600.0"),
    ("copy.lonely", "1", "is an integer, expected true or false", "lonely = true"),
    ("copy.mappings", '"80-198.18.0.2:8080"', "is a string, expected an array of strings", 'mappings = ["80-'),
    ("copy.intercepts", "[36524]", "is an array, expected an array of strings", 'intercepts = ["198.18.2.1'),
    ("capture.interface", "0", "is an integer, expected a string", 'interface = "eth0"'),
    ("owners.run_dir", "['/run']", "is an array, expected a string", 'run_dir = "/run/tcpcopy"'),
    ("intercept.count", "{ n = 2 }", "is a table, expected a whole number", "count = 2"),
    ("compare.percent", "10.0", "is a float, expected a whole number", "percent = 10"),
    ("compare.masks", '"[0-9]+"', "is a string, expected an array of strings", "masks = ["),
    ("compare.fail_on", "0.01", "is a float, expected a string", 'fail_on = "differs>0.001'),
])
def test_wrong_type(tmp_path, key, rhs, found, fix):
    exc = error(tmp_path, {key: rhs})
    assert (exc.key, exc.fault) == (key, found)
    assert fix in exc.fix


def test_control_characters_in_a_string(tmp_path):
    exc = error(tmp_path, {"supervisor.dir": '"/run/a\\nb"'})
    assert exc.key == "supervisor.dir" and "control character" in exc.fault


# ------------------------------------------------------------------------------ ranges

@pytest.mark.parametrize("key, rhs, span", [
    ("copy.copies", "0", "1..64 (like -n)"),
    ("copy.copies", "65", "1..64 (like -n)"),
    ("copy.port_offset", "32", "0..31 (like -f)"),
    ("copy.port_offset", "-1", "0..31 (like -f)"),
    ("copy.sample_percent", "0", "1..100 (like -r)"),
    ("copy.sample_percent", "101", "1..100 (like -r)"),
    ("copy.session_timeout", "0", "greater than 0 (seconds) (like -t)"),
    ("copy.session_timeout", "-5.0", "greater than 0 (seconds) (like -t)"),
    ("copy.session_timeout", "nan", "greater than 0 (seconds) (like -t)"),
    ("copy.keepalive_timeout", "inf", "greater than 0 (seconds) (like -k)"),
    ("copy.mtu", "100", "576..65535 (like -M)"),
    ("copy.fake_syn_mss", "70000", "536..65495 (like -D)"),
    ("copy.memory_limit_mb", "-1", "0..1048576 (like -m)"),
    ("capture.workers", "0", "1..64"),
    ("capture.workers", "65", "1..64"),
    ("capture.buffer_mb", "0", "1..4096 (like -B)"),
    ("capture.snaplen", "64", "128..262144 (like -S)"),
    ("owners.count", "0", "1..64"),
    ("intercept.count", "0", "1..64"),
    ("intercept.base_port", "0", "1..65535 (like intercept -p)"),
    ("intercept.payload", "1461", "0..1460 (like intercept --payload)"),
    ("intercept.answer_bytes", "262145", "0..262144 (like intercept --answer-bytes)"),
    ("intercept.watch_max", "-1", "0..100000000 (like intercept --watch-max)"),
    ("compare.percent", "101", "0..100 (like --compare)"),
    ("compare.bytes", "255", "256..16777216 (like --compare-bytes)"),
])
def test_out_of_range(tmp_path, key, rhs, span):
    exc = error(tmp_path, {key: rhs})
    assert exc.key == key and exc.fault.endswith("is out of range")
    assert f"give a value {span}, e.g. {key.split('.')[1]} = " in exc.fix


def test_memory_limit_zero_means_none(tmp_path):
    assert load(tmp_path, {"copy.memory_limit_mb": "0"}).copy.memory_limit_mb is None
    assert load(tmp_path, {"copy.memory_limit_mb": "2048"}).copy.memory_limit_mb == 2048


def test_intercept_ports_past_65535(tmp_path):
    exc = error(tmp_path, {"copy.intercepts": '["198.18.2.1:65535", "198.18.2.1:65536"]',
                           "intercept.base_port": "65535"})
    assert exc.key == "copy.intercepts[1]" and "not a port" in exc.fault
    exc = error(tmp_path, {"copy.intercepts": '["198.18.2.1:65535"]', "intercept.base_port": "65535",
                           "intercept.count": "2"})
    assert exc.key == "intercept.base_port" and "past 65535" in exc.fault


# -------------------------------------------------------------- values the flags parse

def test_bad_mapping_names_its_entry_and_the_form(tmp_path):
    exc = error(tmp_path, {"copy.mappings": '["80-198.18.0.2:8080", "443-nowhere:8443"]'})
    assert exc.key == "copy.mappings[1]"
    assert "'nowhere' is not an IP address" in exc.fault and "onlinePort-targetIP:targetPort" in exc.fault


def test_one_mapping_per_string(tmp_path):
    exc = error(tmp_path, {"copy.mappings": '["80-198.18.0.2:8080,443-198.18.0.2:8443"]'})
    assert exc.key == "copy.mappings[0]" and "holds 2 values" in exc.fault and "own string" in exc.fix


def test_bad_intercept_address(tmp_path):
    exc = error(tmp_path, {"copy.intercepts": '["assistant:36524"]'})
    assert exc.key == "copy.intercepts[0]" and "not an IP address" in exc.fault


def test_same_intercept_twice(tmp_path):
    exc = error(tmp_path, {"copy.intercepts": '["198.18.2.1:36524", "198.18.2.1:36524"]'})
    assert exc.key == "copy.intercepts" and "twice" in exc.fault


def test_bad_client_pool(tmp_path):
    exc = error(tmp_path, {"copy.client_pool": '["198.18.3.x", "*"]'})
    assert exc.key == "copy.client_pool" and "'*' is not an address" in exc.fault


def test_client_pool_of_only_target_addresses(tmp_path):
    exc = error(tmp_path, {"copy.client_pool": '["198.18.0.2"]'})
    assert exc.key == "copy.client_pool" and "target addresses are excluded" in exc.fault


def test_bad_bind_address(tmp_path):
    exc = error(tmp_path, {"intercept.bind": '"assistant"'})
    assert exc.key == "intercept.bind" and '"0.0.0.0"' in exc.fix


def test_empty_device_in_intercept_interfaces(tmp_path):
    exc = error(tmp_path, {"intercept.interface": '"eth0,"'})
    assert exc.key == "intercept.interface" and "empty device name" in exc.fault


def test_empty_capture_interface(tmp_path):
    exc = error(tmp_path, {"capture.interface": '""'})
    assert exc.key == "capture.interface" and '"any"' in exc.fix


@pytest.mark.parametrize("key", ["capture.filter", "intercept.filter"])
def test_filter_that_does_not_compile(tmp_path, key):
    exc = error(tmp_path, {key: '"tcp and and port"'})
    assert exc.key == key and "not a valid pcap filter" in exc.fault and "pcap-filter(7)" in exc.fix


def test_socket_path_too_long_for_af_unix(tmp_path):
    exc = error(tmp_path, {"owners.run_dir": '"/' + "d" * 100 + '"'})
    assert exc.key == "owners.run_dir" and "107 bytes" in exc.fault and "shorter" in exc.fix
    exc = error(tmp_path, {"supervisor.dir": '"/' + "d" * 100 + '"'})
    assert exc.key == "supervisor.dir"


def test_empty_directory(tmp_path):
    exc = error(tmp_path, {"supervisor.dir": '""'})
    assert exc.key == "supervisor.dir" and 'dir = "/run/tcpcopy-cluster"' in exc.fix


# --------------------------------------------- copy.intercepts and [intercept] agree

def test_intercept_count_must_match_the_listed_instances(tmp_path):
    exc = error(tmp_path, {"intercept.count": "2"})
    assert exc.key == "copy.intercepts"
    assert "lists 1 address(es) but intercept.count is 2" in exc.fault
    assert "they describe the same intercept instances" in exc.fault
    assert "intercept.count = 1" in exc.fix


def test_listed_port_must_be_base_port_plus_shard(tmp_path):
    exc = error(tmp_path, {"copy.intercepts": '["198.18.2.1:36524", "198.18.2.1:36600"]'})
    assert exc.key == "copy.intercepts[1]" and "intercept.base_port+1 = 36525" in exc.fault
    assert "use port 36525" in exc.fix


def test_listed_address_must_be_a_specific_bind(tmp_path):
    exc = error(tmp_path, {"intercept.bind": '"198.18.2.9"'})
    assert exc.key == "copy.intercepts[0]" and "intercept.bind = 198.18.2.9" in exc.fault


# ----------------------------------------------------------------------- file faults

def test_toml_syntax_error_names_the_line(tmp_path):
    exc = error(tmp_path, text="[copy]\nmappings = = 1\n")
    assert "not valid TOML" in exc.fault and "line 2" in exc.fault and exc.key == ""


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nowhere.toml")
    assert "cannot read the cluster config" in caught.value.fault
    assert "deploy/cluster-sample.toml" in caught.value.fix


# ------------------------------------------------------------------------------ [compare]

COMPARING = {"compare.percent": "10"}


def test_compare_is_off_by_default_and_then_nothing_asks_for_answers(tmp_path):
    config = load(tmp_path)
    assert not config.compare.enabled and config.online_answers_bpf() == ""
    assert config.intercept.answer_bytes == 0


def test_comparing_turns_on_the_online_answers_filter_and_the_intercepts_answer_bytes(tmp_path):
    from tcpcopy.cluster.options import online_answers_capture_filter
    config = load(tmp_path, {**COMPARING, "compare.masks": r'["[0-9]{10}"]', "compare.fail_on": '"differs>0"'})
    assert (config.compare.percent, config.compare.bytes, config.compare.masks) == (10, 65536, ("[0-9]{10}",))
    assert config.online_answers_bpf() == online_answers_capture_filter(config.copy.mappings, 10)
    assert config.intercept.answer_bytes == 65536, "the intercepts must send the watched answers whole"
    assert config.compare_dir() == f"{config.supervisor.dir}/online/compare"
    assert load(tmp_path, {**COMPARING, "intercept.answer_bytes": "1500"}).intercept.answer_bytes == 1500


def test_compare_log_dir_is_taken_from_the_config_file(tmp_path):
    config = load(tmp_path, {**COMPARING, "compare.log_dir": '"diffs"'})
    assert config.compare_dir() == str(tmp_path / "diffs")


def test_intercepts_without_answer_bytes_cannot_serve_a_comparison(tmp_path):
    exc = error(tmp_path, {**COMPARING, "intercept.answer_bytes": "0"})
    assert exc.key == "intercept.answer_bytes" and "compare.percent is 10" in exc.fault
    assert "answer_bytes = 65536" in exc.fix


def test_intercepts_without_watches_cannot_serve_a_comparison(tmp_path):
    exc = error(tmp_path, {**COMPARING, "intercept.watch_max": "0"})
    assert exc.key == "intercept.watch_max" and "watch_max = 4096" in exc.fix


@pytest.mark.parametrize("key, rhs", [("compare.masks", '["x"]'), ("compare.fail_on", '"differs>0"'),
                                      ("compare.log_dir", '"diffs"')])
def test_compare_companions_need_a_percent(tmp_path, key, rhs):
    exc = error(tmp_path, {key: rhs})
    assert exc.key == key and "compare.percent is 0" in exc.fault and "percent = 10" in exc.fix


def test_unknown_compare_key_is_named_with_a_suggestion(tmp_path):
    exc = error(tmp_path, {**COMPARING, "compare.mask": '["x"]'})
    assert exc.key == "compare.mask" and "did you mean 'masks'?" in exc.fault


@pytest.mark.parametrize("changes, key, fault, fix", [
    ({"compare.masks": '["ok", "(unclosed"]'}, "compare.masks[1]", "not a valid regular expression",
     "e.g. masks = ["),
    ({"compare.masks": '["x*"]'}, "compare.masks[0]", "matches the empty string", "fix the expression"),
    ({"compare.fail_on": '"diffs>0.1"'}, "compare.fail_on", "diffs", 'fail_on = "differs>0.001'),
    ({"compare.fail_on": '"differs>2"'}, "compare.fail_on", "share between 0 and 1", "e.g. fail_on ="),
])
def test_masks_and_gate_are_checked_by_the_comparisons_parsers(tmp_path, capsys, changes, key, fault, fix):
    """load_config stays below the roles: tcpcopy-cluster (every action) and each owner
    check the masks and the gate with session/compare.py's parsers, as ConfigErrors."""
    from tcpcopy.session import comparefiles
    config = load(tmp_path, {**COMPARING, **changes})
    with pytest.raises(ConfigError) as caught:
        comparefiles.check(config)
    exc = caught.value
    assert exc.key == key and fault in exc.fault and fix in exc.fix and str(exc).endswith(exc.fix)
    assert cli.main(["render", config.path, "--role", "online"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f": {key}: " in err and "Traceback" not in err


# ------------------------------------------------------------------------ the command

def test_command_reports_a_config_fault_in_one_line(tmp_path, capsys):
    path = tmp_path / "cluster.toml"
    path.write_text(toml({"copy.copies": "0"}))
    assert cli.main(["start", str(path), "--role", "online"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"tcpcopy-cluster: error: {path}: copy.copies: 0 is out of range: give a value 1..64")


def test_command_needs_a_role(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["status", str(SAMPLE)])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--role" in err


def test_command_renders(capsys):
    assert cli.main(["render", str(SAMPLE), "--role", "assistant", "--python", "python3"]) == 0
    assert "command = python3 -m tcpcopy.intercept.main --config" in capsys.readouterr().out


def test_json_log_lines_carry_time_command_level_and_message():
    import json
    import logging

    from tcpcopy.cluster.process import JsonLines
    record = logging.LogRecord("tcpcopy", logging.WARNING, __file__, 1, "intercept %s unreachable", ("a:1",), None)
    line = json.loads(JsonLines("tcpcopy").format(record))
    assert line["command"] == "tcpcopy" and line["level"] == "warning"
    assert line["message"] == "intercept a:1 unreachable" and line["time"] > 0

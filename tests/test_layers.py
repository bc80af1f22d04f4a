"""Imports go one way: each folder is one layer and imports only the layers below it.

    lab/            the lab, harnesses, demo, benchmark (never in the wheel)
    cluster/ops/    the operator's tools: tcpcopy-cluster, supervisord, aggregator, hub, top,
                    exporter, report
    roles           session/, intercept/, capture/worker.py: the processes of a copy
    cluster/        the shared base: wire, shard, options, config, process, stats publisher,
                    curve, privileges, progress, the filter check
    codec           capture/ but the worker: packet codec, ICMP errors, pcap handles and files

Read from the source with ast (lazy imports inside functions count too), so a module that
reaches up fails here by name, before anything is run.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"capture", "cluster", "session", "intercept", "deploy", "lab"}   # tcpcopy.<folder>
RUNTIME = ("capture", "cluster", "session", "intercept", "deploy")         # what the wheel holds
RANKS = {"codec": 0, "base": 1, "roles": 2, "ops": 3, "lab": 4}


def layer_of(path: Path) -> str:
    """The layer of a module file of the checkout."""
    parts = path.relative_to(ROOT).parts
    if parts[0] == "lab":
        return "lab"
    if parts[:2] == ("cluster", "ops"):
        return "ops"
    if parts[0] == "cluster":
        return "base"
    if parts[0] == "capture" and parts[-1] != "worker.py":
        return "codec"
    return "roles"


def module_file(name: str) -> Path | None:
    """The file of the project module ``tcpcopy.<folder>...``, or None if ``name`` is none."""
    parts = name.split(".")
    if parts[0] != "tcpcopy" or len(parts) < 2 or parts[1] not in FOLDERS:
        return None
    base = ROOT.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def package_of(path: Path) -> str:
    return "tcpcopy." + ".".join(path.relative_to(ROOT).parent.parts)


def imported_files(path: Path) -> set[Path]:
    """Every project module ``path`` imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                package = package_of(path).split(".")
                package = package[:len(package) - node.level + 1]
                module = ".".join([*package, module] if module else package)
            # "from tcpcopy.cluster import wire" names a module; "from x.y import Name" its module
            names = [f"{module}.{alias.name}" for alias in node.names] + [module]
        else:
            continue
        for name in names:
            target = module_file(name)
            if target is not None and target != path:
                found.add(target)
    return found


def modules(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py")
                  if "__pycache__" not in p.parts)


def test_every_import_goes_down_or_stays_in_its_layer():
    upward = []
    for path in modules(*FOLDERS):
        for target in imported_files(path):
            if RANKS[layer_of(target)] > RANKS[layer_of(path)]:
                upward.append(f"{path.relative_to(ROOT)} ({layer_of(path)}) imports "
                              f"{target.relative_to(ROOT)} ({layer_of(target)})")
    assert upward == []


def test_no_base_module_imports_an_operator_tool():
    for path in modules("cluster"):
        if layer_of(path) == "base":
            assert not [t for t in imported_files(path) if layer_of(t) == "ops"], path


def test_nothing_the_wheel_holds_imports_the_lab():
    for path in modules(*RUNTIME):
        assert not [t for t in imported_files(path) if layer_of(t) == "lab"], path


def test_the_cluster_config_reads_no_capture_module():
    assert not [t for t in imported_files(ROOT / "cluster" / "config.py") if t.parts[-2] == "capture"]


def test_the_checker_sees_the_imports_it_judges():
    """The rules above would pass on a parser that found nothing: check that it finds
    absolute, from-package, relative and function-level imports."""
    assert ROOT / "cluster" / "wire.py" in imported_files(ROOT / "cluster" / "ops" / "hub.py")
    assert ROOT / "cluster" / "ops" / "supervisor.py" in imported_files(ROOT / "cluster" / "ops" / "main.py")
    assert ROOT / "lab" / "netns.py" in imported_files(ROOT / "lab" / "servers.py")
    assert ROOT / "cluster" / "bpfcheck.py" in imported_files(ROOT / "cluster" / "config.py")
    assert layer_of(ROOT / "capture" / "worker.py") == "roles"
    assert layer_of(ROOT / "capture" / "icmp.py") == "codec"


def test_the_layer_table_names_every_folder():
    """ARCHITECTURE.md's layer table lists each folder of the layout."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    table = text[text.index("## Layers"):]
    table = table[:table.index("\n## ", 1)]
    for folder in ("capture/", "cluster/", "cluster/ops/", "session/", "intercept/", "deploy/", "lab/", "bench/"):
        assert folder in table, folder

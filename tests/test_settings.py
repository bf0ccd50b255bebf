"""One place for every environment variable: the settings module, the README's table, and nothing read elsewhere."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fraudops.errors import ConfigError
from fraudops.settings import SETTINGS, ServingConfig, StoreSettings, TriggerSettings, table, variable

REPO = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("fraudops", "services", "pipelines", "monitoring") for p in (REPO / d).rglob("*.py")]


def test_the_readme_table_is_the_generated_one() -> None:
    text = (REPO / "README.md").read_text()
    match = re.search(r"<!-- settings:begin -->\n(.*?)\n<!-- settings:end -->", text, re.S)
    assert match, "README.md lost its settings table markers"
    assert match.group(1) == table(), "README's settings table is stale: paste `python -m fraudops.settings`"


def test_no_module_reads_a_fraudops_variable_itself() -> None:
    """Variables are read through fraudops.settings only (os.environ.get("FRAUDOPS_...") elsewhere is a bug)."""
    offenders = []
    for path in SOURCES:
        text = path.read_text()
        constants = re.findall(r"""^(\w+) = ["']FRAUDOPS_""", text, re.M)
        names = "|".join([r"""["']FRAUDOPS_\w+["']""", *constants])
        if path.name != "settings.py" and re.search(rf"(?:environ\.get|getenv)\(\s*(?:{names})", text):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def test_every_fraudops_variable_the_code_names_is_declared() -> None:
    declared = {variable(cls, name) for cls in SETTINGS for name in cls.model_fields}
    named = {m for p in SOURCES for m in re.findall(r"\bFRAUDOPS_[A-Z_]+[A-Z]\b", p.read_text())}
    # set for child processes or only named in prose, never read as settings
    not_settings = {"FRAUDOPS_E2E_REQUIRED"}
    assert named - declared - not_settings == set()


def test_variables_are_found_by_their_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUDOPS_SCHEMA", "ecommerce")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("KFP_TOKEN", "kfp-s3cr3t")
    monkeypatch.delenv("FRAUDOPS_S3_ENDPOINT", raising=False)
    assert ServingConfig.from_env().dataset == "ecommerce"
    assert StoreSettings.from_env().s3_endpoint == "http://127.0.0.1:9000"  # the fallback
    monkeypatch.setenv("FRAUDOPS_S3_ENDPOINT", "http://store:8333")
    assert TriggerSettings.from_env().s3_endpoint == "http://store:8333"  # FRAUDOPS_ first
    assert TriggerSettings.from_env().kfp_token.get_secret_value() == "kfp-s3cr3t"
    assert "s3cr3t" not in repr(TriggerSettings.from_env())  # tokens never printed


def test_a_bad_value_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUDOPS_WORKERS", "many")
    with pytest.raises(ConfigError, match="invalid scoring service settings: FRAUDOPS_WORKERS: Value error, should "
                                          "be a whole number of workers or auto"):
        ServingConfig.from_env()
    StoreSettings.from_env()  # other processes do not care


V2 = [("", "/", "cgroup2", "rw")]  # cgroup v2 at the folder's root, showing the hierarchy's root
V1 = [("cpu", "/", "cgroup", "rw,cpu")]


def _cgroup(tmp_path: Path, files: dict[str, str], membership: str, mounts: list[tuple[str, str, str, str]]
            ) -> tuple[Path, Path]:
    """A fake /sys/fs/cgroup below ``tmp_path``: ``files`` in it, the process's ``membership`` (/proc/self/cgroup)
    and ``mounts`` (point below the fake root, mount root, type, super options) as /proc/self/mountinfo."""
    fs = tmp_path / "fs"
    for name, text in files.items():
        (fs / name).parent.mkdir(parents=True, exist_ok=True)
        (fs / name).write_text(text)
    (tmp_path / "cgroup").write_text(membership)
    lines, top = [], {}  # each mount on top of the one listed before it on its point
    for i, (point, root, kind, options) in enumerate(mounts):
        path = str(fs / point).replace(" ", chr(92) + "040")
        lines.append(f"{30 + i} {top.get(path, 23)} 0:{40 + i} {root} {path} rw,nosuid shared:9 - {kind} {kind} "
                     f"{options}\n")
        top[path] = 30 + i
    (tmp_path / "mountinfo").write_text("".join(lines))
    return tmp_path / "cgroup", tmp_path / "mountinfo"


@pytest.mark.parametrize(("files", "membership", "mounts", "cpus"), [
    ({"kubepods/pod1/cpu.max": "150000 100000\n"}, "0::/kubepods/pod1\n", V2, 1.5),  # v2, the process's own group
    ({"cpu.max": "200000 100000\n"}, "0::/\n", V2, 2.0),  # v2 in a cgroup namespace
    ({"cpu.max": "max 100000\n"}, "0::/\n", V2, None),  # v2, no limit
    ({"cpu/docker/abc/cpu.cfs_quota_us": "50000\n", "cpu/docker/abc/cpu.cfs_period_us": "100000\n"},
     "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n", V1, 0.5),  # v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, "1:cpu:/\n0::/\n", V1, None),  # none
    ({"cpu,cpuacct/docker/cpu.cfs_quota_us": "300000\n", "cpu,cpuacct/docker/cpu.cfs_period_us": "100000\n"},
     "3:cpu,cpuacct:/docker/abc\n", [("cpu,cpuacct", "/", "cgroup", "rw,cpu,cpuacct")], 3.0),  # the parent's limit
    ({"system.slice/cpu.max": "100000 100000\n", "system.slice/app.service/cpu.max": "max 100000\n"},
     "0::/system.slice/app.service\n", V2, 1.0),  # v2: a slice's limit binds the service below it
    ({"cpu.max": "400000 100000\n", "pod/cpu.max": "250000 100000\n"}, "0::/pod\n", V2, 2.5),  # the tightest one
    # without a cgroup namespace a container's mount shows its own group at the mount point
    ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, "3:cpu:/docker/abc\n",
     [("cpu", "/docker/abc", "cgroup", "rw,cpu")], 0.5),
    ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n",  # ... and a group nested in it
      "cpu/sub/cpu.cfs_quota_us": "50000\n", "cpu/sub/cpu.cfs_period_us": "100000\n"},
     "3:cpu:/kubepods/pod1/ctr/sub\n", [("cpu", "/kubepods/pod1/ctr", "cgroup", "rw,cpu")], 0.5),
    ({"app/cpu.max": "100000 100000\n"}, "0::/system.slice/docker-abc.scope/app\n",  # v2 the same way
     [("", "/system.slice/docker-abc.scope", "cgroup2", "rw")], 1.0),
    ({"cpu.max": "100000 100000\n"}, "0::/other\n",  # a group the mount does not show: not its limit
     [("", "/system.slice/docker-abc.scope", "cgroup2", "rw")], None),
    ({"cpu/cpu.cfs_quota_us": "150000\n", "cpu/cpu.cfs_period_us": "100000\n", "unified/cpu.max": "max 100000\n"},
     "1:cpu:/\n0::/\n", [*V1, ("unified", "/", "cgroup2", "rw")], 1.5),  # a hybrid host
    ({"cpu/cpu.cfs_quota_us": "150000\n", "cpu/cpu.cfs_period_us": "100000\n"}, "1:cpuacct:/\n0::/\n",
     [("cpu", "/", "cgroup", "rw,cpuacct")], None),  # a v1 mount without the cpu controller
    ({"my cgroup/cpu.max": "300000 100000\n"}, "0::/\n", [("my cgroup", "/", "cgroup2", "rw")], 3.0),  # escaped
    ({"cpu.max": "200000 100000\n"}, "0::/\n", [], None),  # no cgroup mounts
    ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, "1:cpu:/\n",  # hidden by a
     [*V1, ("cpu", "/", "tmpfs", "rw")], None),  # later mount on the same point
    ({"cpu.max": "100000 100000\n"}, "0::/../sibling\n", V2, None),  # outside the cgroup namespace's root
    ({}, "", V2, None),  # no cgroup files at all
])
def test_the_cgroup_cpu_limit(tmp_path: Path, files: dict[str, str], membership: str,
                              mounts: list[tuple[str, str, str, str]], cpus: float | None) -> None:
    from fraudops.settings import _cgroup_cpu_limit

    proc, mountinfo = _cgroup(tmp_path, files, membership, mounts)
    assert _cgroup_cpu_limit(proc, mountinfo) == cpus


def test_the_mount_on_top_of_a_point_is_the_one_whose_parent_it_is_not(tmp_path: Path) -> None:
    """Propagation can slip a mount under one already there: mountinfo then lists the lower one later, and its
    parent ids, not the order, say which one shows."""
    from fraudops.settings import _cpu_mounts

    lines = ["50 23 0:29 / /sys/fs/cgroup/cpu rw shared:1 - cgroup cgroup rw,cpu",
             "60 51 0:29 /docker/abc /sys/fs/cgroup/cpu rw master:1 - cgroup cgroup rw,cpu",
             "51 50 0:28 / /sys/fs/cgroup/cpu rw - tmpfs tmpfs rw",  # listed after, between the two
             "70 23 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw"]
    path = tmp_path / "mountinfo"
    path.write_text("\n".join(lines) + "\n")
    assert _cpu_mounts(path) == [(Path("/sys/fs/cgroup/cpu"), "/docker/abc", "cgroup"),
                                 (Path("/sys/fs/cgroup/unified"), "/", "cgroup2")]


def test_the_cgroup_cpu_limit_without_proc_files(tmp_path: Path) -> None:
    from fraudops.settings import _cgroup_cpu_limit

    proc, mountinfo = _cgroup(tmp_path, {"cpu.max": "200000 100000\n"}, "0::/\n", V2)
    assert _cgroup_cpu_limit(proc, tmp_path / "absent") is None
    assert _cgroup_cpu_limit(tmp_path / "absent", mountinfo) is None


def test_workers_auto_is_one_per_usable_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import fraudops.settings as settings

    monkeypatch.setattr(settings.os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    monkeypatch.setattr(settings, "_cgroup_cpu_limit", lambda: 1.5)
    assert settings.usable_cpus() == 2  # a partial CPU of quota still gets a worker
    monkeypatch.setattr(settings, "_cgroup_cpu_limit", lambda: None)
    assert ServingConfig.from_env().workers == 4  # the default is auto
    monkeypatch.setenv("FRAUDOPS_WORKERS", "Auto")
    assert ServingConfig.from_env().workers == 4
    monkeypatch.setattr(settings, "_cgroup_cpu_limit", lambda: 0.25)
    assert ServingConfig.from_env().workers == 1
    monkeypatch.setenv("FRAUDOPS_WORKERS", "3")
    assert ServingConfig.from_env().workers == 3
    monkeypatch.setenv("FRAUDOPS_WORKERS", "auto")
    monkeypatch.setattr(settings.os, "sched_getaffinity", lambda _pid: set(range(96)))
    monkeypatch.setattr(settings, "_cgroup_cpu_limit", lambda: None)
    assert ServingConfig.from_env().workers == 64  # the most a server runs
    monkeypatch.setenv("FRAUDOPS_WORKERS", "0")
    with pytest.raises(ConfigError, match="FRAUDOPS_WORKERS: Input should be greater than or equal to 1"):
        ServingConfig.from_env()


def _cpu_cgroup_mount() -> tuple[Path, str] | None:
    """A writable cgroup mount with the CPU controller, and its kind (v1 or v2); None where there is none."""
    if os.geteuid() != 0:
        return None
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mount, kind, options, *_ = line.split()
        if kind == "cgroup" and "cpu" in options.split(","):
            return Path(mount), "v1"
        if kind == "cgroup2" and "cpu" in (Path(mount) / "cgroup.subtree_control").read_text().split():
            return Path(mount), "v2"
    return None


@pytest.mark.skipif(_cpu_cgroup_mount() is None, reason="needs root and a writable cgroup with the CPU controller")
def test_the_service_runs_one_worker_per_cpu_of_a_real_cgroup_quota() -> None:
    """A real cgroup of the kernel, as a container runtime makes it: the quota on the pod's group, the process in a
    group below it. The scoring service's BentoML config is what it serves with."""
    found = _cpu_cgroup_mount()
    assert found
    mount, kind = found
    pod = mount / f"fraudops-test-{os.getpid()}"
    container = pod / "container"
    container.mkdir(parents=True)
    try:
        for quota, workers in ((100_000, 1), (150_000, min(2, len(os.sched_getaffinity(0))))):
            if kind == "v1":
                (pod / "cpu.cfs_period_us").write_text("100000")
                (pod / "cpu.cfs_quota_us").write_text(str(quota))
            else:
                (pod / "cpu.max").write_text(f"{quota} 100000")
            env = {k: v for k, v in os.environ.items() if k != "FRAUDOPS_WORKERS"}  # the default: auto
            out = subprocess.run(
                ["sh", "-c", f'echo $$ > {container}/cgroup.procs && exec "$0" -c "$1"', sys.executable,
                 "import services.scorer as s; print(s.FraudScorer.config['workers'])"],
                cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=True)
            assert out.stdout.split()[-1] == str(workers), (quota, out.stdout, out.stderr)
    finally:
        container.rmdir()
        pod.rmdir()


@pytest.mark.skipif(_cpu_cgroup_mount() is None or shutil.which("unshare") is None,
                    reason="needs root, unshare and a writable cgroup with the CPU controller")
def test_a_container_without_a_cgroup_namespace_reads_the_quota_of_its_nested_group() -> None:
    """A container runtime without cgroup namespaces bind-mounts the container's own group over the cgroup mount
    point, while /proc/self/cgroup names the group by its host path: the real kernel, mount and files."""
    found = _cpu_cgroup_mount()
    assert found
    mount, kind = found
    container = mount / f"fraudops-ns-test-{os.getpid()}"
    nested = container / "sub"
    container.mkdir()
    try:
        if kind == "v1":
            nested.mkdir()
            for group, quota in ((container, 200_000), (nested, 50_000)):
                (group / "cpu.cfs_period_us").write_text("100000")
                (group / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            (container / "cpu.max").write_text("200000 100000")
            (container / "cgroup.subtree_control").write_text("+cpu")
            nested.mkdir()
            (nested / "cpu.max").write_text("50000 100000")
        script = (f'mount --bind {container} {mount} && echo $$ > {mount}/sub/cgroup.procs && exec "$0" -c "$1"')
        out = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, sys.executable,
             "from pathlib import Path; from fraudops.settings import _cgroup_cpu_limit, _cpu_mounts; "
             "mounts = _cpu_mounts(Path('/proc/self/mountinfo')); "
             f"print([root for point, root, _ in mounts if point == Path('{mount}')]); print(_cgroup_cpu_limit())"],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
        shown, limit = out.stdout.splitlines()[-2:]
        assert shown.startswith("['/") and shown.endswith(f"/{container.name}']"), (out.stdout, out.stderr)  # one
        assert limit == "0.5", (out.stdout, out.stderr)
    finally:
        if nested.exists():
            nested.rmdir()
        container.rmdir()

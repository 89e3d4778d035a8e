"""A real multi-host Ray cluster on one machine: network namespaces joined by veth pairs.

Each host is a network namespace (``ip netns``) with its own address on a private link
(``10.213.0.0/24``) that exists only inside those namespaces: every host's ``eth0`` is one
end of a veth pair whose other end is plugged into a bridge in a "switch" namespace. There is
no default route and no route to anything outside the machine; loopback is up in every host.
Each host runs its own ``ray start`` (head or worker), so Ray traffic really crosses a
network interface between nodes with distinct node ids and addresses. A host may also get
its own mount namespace with a tmpfs laid over some paths, so that it cannot see files the
other hosts see (the filesystem is otherwise shared, as NFS would make it).

Needs root and iproute2; :func:`unavailable_reason` says why not when the cluster cannot be
built. Every process of a host is found by its network namespace (``ip netns pids``), so
:meth:`RayHosts.close` kills them all, whatever started them, and deletes the namespaces.

Example:
    >>> hosts = RayHosts(tmp_path, worker_cpus=[2, 2], hide={"w2": [tmp_path / "hidden"]})
    >>> hosts.start()                      # head 10.213.0.1, w1 10.213.0.2, w2 10.213.0.3
    >>> hosts.run("head", "python", "-c", "...")   # runs inside the head's namespace
    >>> hosts.kill("w2")                   # every process of that host, SIGKILL
    >>> hosts.close()
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SUBNET = "10.213.0"
PREFIX = "streamer-ray-"  # namespace names: streamer-ray-<pid of the test run>-<role>
RAY_PORT = 6379
OBJECT_STORE_BYTES = 100 * 1000 * 1000
# Node death is noticed in about 3 s instead of Ray's default 30 s or so.
FAST_HEALTH_CHECKS = {"RAY_health_check_initial_delay_ms": "1000",
                      "RAY_health_check_period_ms": "1000",
                      "RAY_health_check_timeout_ms": "1000",
                      "RAY_health_check_failure_threshold": "3"}


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check,
                          timeout=30)


def unavailable_reason() -> str | None:
    """Why network namespaces cannot be made here, or ``None`` when they can."""
    if shutil.which("ip") is None:
        return "the multi-host tests need iproute2 (`ip netns`): apt-get install iproute2"
    if os.geteuid() != 0:
        return "the multi-host tests create network namespaces, which needs root"
    probe = f"{PREFIX}probe-{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace ({made.stderr.strip() or 'ip netns add failed'})"
    _ip("netns", "del", probe, check=False)
    if shutil.which("unshare") is None:
        return "the multi-host tests need unshare (util-linux) for a host's own mount view"
    return None


def netns_pids(netns: str) -> list[int]:
    """Every process whose network namespace is ``netns``."""
    result = _ip("netns", "pids", netns, check=False)
    return [int(p) for p in result.stdout.split()]


def remove_stale_namespaces() -> None:
    """Namespaces left by an earlier run that was killed before its clean-up (its pid gone)."""
    listed = _ip("netns", "list", check=False).stdout.split("\n")
    for line in listed:
        name = line.split(" ", 1)[0]
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _kill_all(name)
            _ip("netns", "del", name, check=False)


def _kill_all(netns: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while pids := netns_pids(netns):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} of {netns} survive SIGKILL")
        time.sleep(0.1)


@dataclass
class Host:
    """One machine of the cluster: a network namespace, its address and its Ray node."""

    role: str
    netns: str
    ip: str
    num_cpus: int
    folder: Path
    hide: list[Path] = field(default_factory=list)
    # Ray's session folder: short, since its socket paths must fit in 107 bytes.
    ray_dir: Path | None = None

    @property
    def modelscope_cache(self) -> Path:
        """This host's own ModelScope cache (``MODELSCOPE_CACHE`` of its Ray processes)."""
        return self.folder / "modelscope"


class RayHosts:
    """A head and workers, each in its own network namespace, joined by one bridge.

    ``worker_cpus`` gives each worker's ``--num-cpus`` (one worker per entry); the head has
    ``head_cpus`` (0: it runs the driver and Ray's control processes, no workers). ``hide``
    maps a role to paths covered by an empty tmpfs in that host's mount namespace.
    """

    def __init__(self, base: Path, *, head_cpus: int = 0, worker_cpus: tuple[int, ...] = (2, 2),
                 hide: dict[str, list[Path]] | None = None) -> None:
        self.base = base
        self.tag = f"{PREFIX}{os.getpid()}"
        self.switch = f"{self.tag}-switch"
        roles = [("head", head_cpus)] + [(f"w{i + 1}", c) for i, c in enumerate(worker_cpus)]
        self.hosts = {
            role: Host(role, f"{self.tag}-{role}", f"{SUBNET}.{i + 1}", cpus, base / role,
                       list((hide or {}).get(role, [])))
            for i, (role, cpus) in enumerate(roles)}
        self._made: list[str] = []
        self.node_ids: dict[str, str] = {}
        self.token_file = base / "auth_token"

    # ------------------------------------------------------------------ addresses, commands
    @property
    def head(self) -> Host:
        return self.hosts["head"]

    @property
    def address(self) -> str:
        """``HEAD_IP:6379``, what ``--ray`` and ``ray start --address`` take."""
        return f"{self.head.ip}:{RAY_PORT}"

    @property
    def workers(self) -> list[Host]:
        return [h for role, h in self.hosts.items() if role != "head"]

    def env(self, role: str) -> dict[str, str]:
        """The environment of everything run on ``role``: this checkout, its own caches."""
        host = self.hosts[role]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("RAY_") and k not in ("MODELSCOPE_CACHE", "STREAMER_CACHE")}
        env.update(FAST_HEALTH_CHECKS)
        # Workers at normal priority, as the test process itself: at Ray's default (nice 15)
        # a CI machine busy with other jobs starves them and the tests crawl.
        env["RAY_worker_niceness"] = "0"
        # Token authentication, with this cluster's own token: every node and the driver
        # read it from the file (a ~/.ray/auth_token left by other Ray use is not ours).
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_file))
        env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(ROOT),
                   RAY_USAGE_STATS_ENABLED="0", MODELSCOPE_CACHE=str(host.modelscope_cache),
                   STREAMER_CACHE=str(host.folder / "streamer-cache"), PYTHONUNBUFFERED="1")
        return env

    def cmd(self, role: str, *argv: str | Path) -> list[str]:
        """``argv`` run inside host ``role``'s network namespace (give it :meth:`env`)."""
        return ["ip", "netns", "exec", self.hosts[role].netns, *map(str, argv)]

    def popen(self, role: str, *argv: str | Path, **kwargs: object) -> subprocess.Popen[str]:
        """Start ``argv`` on host ``role`` with its environment; ``kwargs`` go to Popen."""
        return subprocess.Popen(self.cmd(role, *argv), text=True, env=self.env(role),
                                **kwargs)  # type: ignore[call-overload]

    def run(self, role: str, *argv: str | Path, timeout: float = 300.0
            ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on host ``role`` to the end, capturing its output."""
        return subprocess.run(self.cmd(role, *argv), text=True, env=self.env(role),
                              capture_output=True, timeout=timeout)

    # ------------------------------------------------------------------ life cycle
    def start(self, timeout: float = 180.0) -> RayHosts:
        """Build the network, start Ray on every host and wait until all nodes are alive."""
        remove_stale_namespaces()
        self.token_file.write_text(secrets.token_hex(32) + "\n")
        self.token_file.chmod(0o600)
        self._build_network()
        for host in self.hosts.values():
            host.folder.mkdir(parents=True, exist_ok=True)
            host.modelscope_cache.mkdir(exist_ok=True)
        self._ray_start([self.head], timeout)
        self._ray_start(self.workers, timeout)
        self.wait_nodes([h.role for h in self.hosts.values()], timeout)
        return self

    def _build_network(self) -> None:
        _ip("netns", "add", self.switch)
        self._made.append(self.switch)
        _ip("-n", self.switch, "link", "set", "lo", "up")
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for host in self.hosts.values():
            _ip("netns", "add", host.netns)
            self._made.append(host.netns)
            port = f"p-{host.role}"
            _ip("link", "add", "eth0", "netns", host.netns, "type", "veth", "peer", "name",
                port, "netns", self.switch)
            _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
            _ip("-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
            _ip("-n", host.netns, "link", "set", "eth0", "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")

    def _ray_start(self, hosts: list[Host], timeout: float) -> None:
        procs = []
        for host in hosts:
            if host.ray_dir is None:
                host.ray_dir = Path(tempfile.mkdtemp(prefix=f"ray-{host.role}-", dir="/tmp"))
            argv = [str(VENV_BIN / "ray"), "start", f"--node-ip-address={host.ip}",
                    f"--num-cpus={host.num_cpus}", f"--object-store-memory={OBJECT_STORE_BYTES}",
                    f"--temp-dir={host.ray_dir}", "--disable-usage-stats"]
            if host.role == "head":
                argv += ["--head", f"--port={RAY_PORT}", "--include-dashboard=false"]
            else:
                argv += [f"--address={self.address}"]
            if host.hide:
                # Its own mount namespace: an empty tmpfs over each hidden path, seen by this
                # host's Ray processes (they inherit it) and by nothing else.
                mounts = " && ".join(f"mount -t tmpfs -o size=1m none '{p}'" for p in host.hide)
                argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                        f'{mounts} && exec "$@"', "sh", *argv]
            log = (host.folder / "ray-start.log").open("w")
            procs.append((host, log, self.popen(host.role, *argv, stdout=log,
                                                stderr=subprocess.STDOUT)))
        for host, log, proc in procs:
            try:
                code = proc.wait(timeout=timeout)
            finally:
                log.close()
            if code != 0:
                tail = (host.folder / "ray-start.log").read_text()[-1500:]
                raise RuntimeError(f"ray start on {host.role} ({host.ip}) failed: {tail}")

    def wait_nodes(self, roles: list[str], timeout: float = 120.0) -> dict[str, str]:
        """Wait until exactly the nodes of ``roles`` are alive; their node ids by role."""
        want = sorted(self.hosts[r].ip for r in roles)
        script = (
            "import json, logging, sys, time, ray\n"
            f"ray.init(address={self.address!r}, log_to_driver=False,"
            " logging_level=logging.ERROR)\n"
            f"deadline = time.monotonic() + {timeout}\n"
            "while True:\n"
            "    alive = {n['NodeManagerAddress']: n['NodeID'] for n in ray.nodes()"
            " if n['Alive']}\n"
            f"    if sorted(alive) == {want!r} or time.monotonic() > deadline:\n"
            "        print(json.dumps(alive)); break\n"
            "    time.sleep(0.3)\n")
        result = self.run("head", sys.executable, "-c", script, timeout=timeout + 60)
        lines = result.stdout.strip().splitlines()
        if result.returncode != 0 or not lines:
            raise RuntimeError(f"cannot ask the cluster for its nodes: {result.stderr[-1500:]}")
        alive = json.loads(lines[-1])
        if sorted(alive) != want:
            raise RuntimeError(f"alive nodes {sorted(alive)}, expected {want}")
        by_ip = {h.ip: r for r, h in self.hosts.items()}
        self.node_ids = {by_ip[ip]: node for ip, node in alive.items()}
        return self.node_ids

    def role_of(self, ip: str | None) -> str | None:
        """The role (``head``, ``w1``...) of the host with address ``ip``."""
        return next((r for r, h in self.hosts.items() if h.ip == ip), None)

    def pids(self, role: str) -> list[int]:
        return netns_pids(self.hosts[role].netns)

    def process_titles(self, role: str) -> list[str]:
        """The command lines of the processes running on ``role`` (Ray sets titles such as
        ``ray::RayJobWorker.run`` while an actor runs a method)."""
        titles = []
        for pid in self.pids(role):
            try:
                titles.append(Path(f"/proc/{pid}/cmdline").read_bytes()
                              .replace(b"\0", b" ").decode(errors="replace").strip())
            except OSError:
                continue
        return titles

    def kill(self, role: str) -> None:
        """The host dies: SIGKILL to every process in its network namespace (raylet, workers,
        agents, anything a test ran there)."""
        _kill_all(self.hosts[role].netns)

    def restart(self, role: str, timeout: float = 180.0) -> None:
        """Start the Ray node of a killed worker host again (a new node id) and wait for it."""
        host = self.hosts[role]
        self.kill(role)
        others = [r for r in self.hosts if r != role]
        self.wait_nodes(others, timeout)  # the old node is known dead first
        self._ray_start([host], timeout)
        self.wait_nodes(list(self.hosts), timeout)

    def close(self) -> None:
        """Kill every process of every host and delete the namespaces (and so the links)."""
        errors = []
        for name in reversed(self._made):
            try:
                _kill_all(name)
            except RuntimeError as exc:
                errors.append(str(exc))
            _ip("netns", "del", name, check=False)
        self._made.clear()
        for host in self.hosts.values():
            if host.ray_dir is not None:
                shutil.rmtree(host.ray_dir, ignore_errors=True)
        if errors:
            raise RuntimeError("; ".join(errors))

#!/usr/bin/env python3
"""The host's side of scripts/robot-vm.sh: the mock servers, the emulated machines, the proofs on
the ARM board, the power-cut loops on both machines, and target/robot-vm/report.json.

robot-vm.sh builds everything first (the armv7 .deb, the x86 guest's agent, the board's base
system, the x86 kernel) and passes the paths in the environment; this file only runs them.
Standard library only: it runs on a bare CI machine.
"""

import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
ENV = os.environ
OUT = Path(ENV["ROBOT_VM_OUT"])
WORK = OUT / "run"
SERVER_BIN = ENV["ROBOT_VM_MOCK_SERVER"]
SIGN_BIN = ENV["ROBOT_VM_SIGN"]
DEB = ENV["ROBOT_VM_DEB"]
ARM_BASE = Path(ENV["ROBOT_VM_ARM_BASE"])
X86_KERNEL = Path(ENV["ROBOT_VM_X86_KERNEL"])
X86_AGENT = ENV["ROBOT_VM_X86_AGENT"]
SEED = int(ENV.get("ROBOT_VM_SEED") or random.SystemRandom().randrange(1 << 31))
X86_CUTS = int(ENV.get("ROBOT_VM_CUTS", "100"))
ARM_CUTS = int(ENV.get("ROBOT_VM_ARM_CUTS", "10"))
# Fsyncs to skip in turn (agent/src/fault.rs), each in a loop of its own that must catch it
# within TOOTH_CUTS cuts (docs/development.md says how often that count caught the staged one).
TEETH = [p for p in ENV.get("ROBOT_VM_TEETH", "").split(",") if p]
TOOTH_CUTS = int(ENV.get("ROBOT_VM_TOOTH_CUTS", "3"))
ONLY = set(filter(None, ENV.get("ROBOT_VM_ONLY", "proofs,arm,x86").split(",")))

GUEST_URL = "http://10.0.2.100:8080"
CLIENT_ID = "robot_vm"
CLIENT_SECRET = "rv-client-secret-7f3a9c"
USERNAME = "alpha2"
PASSWORD = "rv-password-c41e88"
ROBOT_ID = "15ae48ecs171faef35fafa5feafew"
STEPS = ["download", "apply", "install", "report"]
# The agent's log lines that mark the start of each step (cycle/transfer.rs, apply.rs,
# install.rs, report.rs and daemon.rs), and the one that says it is idle again.
MARKERS = {
    "download": re.compile(r"update \d+: downloaded \d+% \("),
    "apply": re.compile(r"applying update \d+"),
    "install": re.compile(r"installing \S+ version"),
    "report": re.compile(r"sending \d+ (update )?result"),
}
IDLE = re.compile(r"next check in")
FILE_LINE = re.compile(r"ROBOT-FILE (boot|idle) ?([0-9a-f]{64}|missing)?")

lock = threading.Lock()


def log(*parts):
    with lock:
        print(time.strftime("%H:%M:%S"), *parts, flush=True)


# --- the catalog -------------------------------------------------------------------------------


def edit(rng, data, regions, size):
    """A new version: `regions` stretches of `size` bytes replaced by new ones, and an insertion."""
    data = bytearray(data)
    for _ in range(regions):
        at = rng.randrange(0, len(data) - size)
        data[at : at + size] = rng.randbytes(size)
    at = rng.randrange(0, len(data))
    data[at:at] = rng.randbytes(4096)
    return bytes(data)


def make_catalog(dir):
    """Writes the catalog: the main file (4 MiB, versions 16-18, ids 23 and 25), a demo
    service's file and a file whose health check fails (64 KiB each), and a 64 MiB file."""
    dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0x0A1FA220)
    files = {}

    def versions(name, size, count, regions, region):
        data = rng.randbytes(size)
        out = []
        for i in range(count):
            if i:
                data = edit(rng, data, regions, region)
            path = dir / "versions" / f"{name}-{i}"
            path.parent.mkdir(exist_ok=True)
            if not path.exists() or path.read_bytes() != data:
                path.write_bytes(data)
            out.append(path)
        files[name] = out
        return out

    versions("main", 4 << 20, 3, 6, 48 << 10)
    versions("demo", 64 << 10, 2, 2, 4 << 10)
    versions("broken", 64 << 10, 2, 2, 4 << 10)
    versions("voice", 64 << 20, 2, 16, 64 << 10)
    key = dir / "vendor"
    if not (dir / "vendor.key").exists():
        subprocess.run([SIGN_BIN, "keygen", "--out", str(key)], check=True, stdout=subprocess.DEVNULL)
    packages = [
        ("com.ubtechinc.alpha2services", "Alpha2Services", "service5mic", "main", [(16, "1.1.0.32", None), (17, "1.1.1.32", "23"), (18, "1.1.2.32", "25")]),
        ("com.ubtechinc.robotdemo", "RobotDemo", "demo", "demo", [(1, "1.0", None), (2, "1.1", "31")]),
        ("com.ubtechinc.broken", "Broken", "broken", "broken", [(1, "1.0", None), (2, "1.1", "41")]),
        ("com.ubtechinc.voice", "Voice", "voice", "voice", [(1, "1.0", None), (2, "1.1", "51")]),
    ]
    text = f"""[server]
signing_key = "vendor.key"
cache_dir = "cache"

[[client]]
id = "{CLIENT_ID}"
secret = "{CLIENT_SECRET}"

[[user]]
username = "{USERNAME}"
password = "{PASSWORD}"
"""
    for name, label, file_name, key_name, vs in packages:
        text += f'\n[[package]]\nname = "{name}"\nlabel = "{label}"\n\n[[package.file]]\nfile_name = "{file_name}"\nlanguage = "CN"\n'
        for i, (code, vname, id) in enumerate(vs):
            text += f'\n[[package.file.version]]\ncode = {code}\nname = "{vname}"\n'
            if id:
                text += f'id = "{id}"\n'
            text += f'file = "versions/{key_name}-{i}"\n'
    (dir / "catalog.toml").write_text(text)
    return files, (dir / "vendor.pub").read_text().strip()


def sha256(path):
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- the mock server ---------------------------------------------------------------------------


class Server:
    """One ota-mock-server on 127.0.0.1:0, its patch links pointing at the guests' forward."""

    def __init__(self, catalog, name):
        self.log = open(WORK / f"server-{name}.log", "w")
        self.proc = subprocess.Popen(
            [SERVER_BIN, "--catalog", str(catalog), "--listen", "127.0.0.1:0", "--public-url", GUEST_URL],
            stdout=subprocess.PIPE, stderr=self.log, text=True,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            raise SystemExit(f"the mock server did not start: {line!r}; see {self.log.name}")
        self.url = line.split()[-1].rstrip("/")
        self.port = int(self.url.rsplit(":", 1)[1])

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.load(r)

    def callbacks(self):
        return self.get("/admin/callbacks")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


# --- the emulated machines ---------------------------------------------------------------------


class Machine:
    """A QEMU process whose serial console is read line by line, stamped and kept."""

    def __init__(self, argv, console_log):
        self.lines = []
        self.cond = threading.Condition()
        self.console = open(console_log, "a", buffering=1)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            stamp = time.monotonic() - self.started
            self.console.write(f"[{stamp:8.2f}] {line}\n")
            with self.cond:
                self.lines.append((stamp, line))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_for(self, patterns, timeout, start=0):
        """Waits for the first line from index `start` that matches one of `patterns` (a dict of
        name to regex); returns (name, index, match) or None on timeout or exit."""
        deadline = time.monotonic() + timeout
        at = start
        with self.cond:
            while True:
                while at < len(self.lines):
                    for name, rx in patterns.items():
                        m = rx.search(self.lines[at][1])
                        if m:
                            return name, at, m
                    at += 1
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and at >= len(self.lines)):
                    return None
                self.cond.wait(min(left, 1.0))

    def cut(self):
        """A power cut: SIGKILL of the emulator."""
        self.proc.kill()
        self.proc.wait()
        self.reader.join(timeout=10)
        self.console.write("[power cut]\n")
        self.console.close()

    def wait_exit(self, timeout):
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.cut()
            return False
        self.reader.join(timeout=10)
        self.console.close()
        return True


def netdev(server):
    # No packet leaves QEMU but its own connection to the mock server on the host's loopback.
    return f"user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:8080-cmd:nc 127.0.0.1 {server.port}"


def arm_argv(image, mode, server):
    return [
        "qemu-system-arm", "-M", "virt", "-cpu", "cortex-a15", "-m", "1024", "-smp", "1",
        "-accel", "tcg", "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
        "-kernel", str(ARM_BASE / "vmlinuz"), "-initrd", str(ARM_BASE / "initrd.img"),
        "-append", f"console=ttyAMA0 quiet root=/dev/vda rw rootflags=noauto_da_alloc net.ifnames=0 panic=-1 robot.mode={mode}",
        "-drive", f"if=none,file={image},format=raw,id=hd,cache=unsafe", "-device", "virtio-blk-device,drive=hd",
        "-netdev", netdev(server), "-device", "virtio-net-device,netdev=n0",
    ]


def x86_argv(initrd, image, server, skip=""):
    append = "console=ttyS0 quiet panic=-1"
    if skip:
        append += f" robot.skip_fsync={skip}"
    return [
        "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "512", "-smp", "1",
        "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
        "-kernel", str(X86_KERNEL / "vmlinux"), "-initrd", str(initrd), "-append", append,
        "-drive", f"file={image},format=raw,if=virtio,cache=unsafe",
        "-netdev", netdev(server), "-device", "virtio-net-pci,netdev=n0,romfile=",
    ]


# --- the board's disk --------------------------------------------------------------------------


def agent_config(packages, public_key, state_dir):
    text = f"""[server]
url = "{GUEST_URL}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
username = "{USERNAME}"
password = "{PASSWORD}"

[robot]
id = "{ROBOT_ID}"
version = "1"
language = "CN"

[agent]
state_dir = "{state_dir}"
poll_interval = "6h"
startup_delay = "0s"
retry_base = "5s"
retry_max = "20s"

[security]
public_keys = ["{public_key}"]
require_signatures = true
"""
    for p in packages:
        text += "\n" + p
    return text


def package_toml(name, file_name, path, version, hooks=""):
    return f'[[package]]\nname = "{name}"\nfile_name = "{file_name}"\npath = "{path}"\nversion = "{version}"\n{hooks}'


def run(argv, **kw):
    return subprocess.run(argv, check=True, **kw)


def arm_images(files, public_key):
    """Two board disks from the cached base system: one for the proofs, one (copied afresh for
    every round) for the power cuts. The .deb goes in with dpkg, run in the board's own
    root file system through qemu-user."""
    rootfs = WORK / "arm-rootfs"
    if rootfs.exists():
        shutil.rmtree(rootfs)
    rootfs.mkdir()
    run(["tar", "-C", str(rootfs), "--numeric-owner", "-xpf", str(ARM_BASE / "rootfs.tar")])
    shutil.copy(DEB, rootfs / "tmp" / "ota-agent.deb")
    run(["chroot", str(rootfs), "dpkg", "-i", "/tmp/ota-agent.deb"])
    (rootfs / "tmp" / "ota-agent.deb").unlink()
    dpkg = subprocess.run(["chroot", str(rootfs), "dpkg-query", "-W", "ota-agent"], check=True, capture_output=True, text=True).stdout.strip()
    log("board: installed with dpkg:", dpkg)
    etc = rootfs / "etc" / "systemd" / "system"
    for unit in ["robot-net.service", "robot-filecheck.service", "robot-idlecheck.service", "robot-demo.service", "robot-proof.service"]:
        shutil.copy(HERE / "arm" / unit, etc / unit)
        wants = etc / "multi-user.target.wants"
        wants.mkdir(exist_ok=True)
        link = wants / unit
        if not link.exists():
            link.symlink_to(f"/etc/systemd/system/{unit}")
    shutil.copytree(HERE / "arm" / "journald.conf.d", rootfs / "etc" / "systemd" / "journald.conf.d", dirs_exist_ok=True)
    for tool in ["robot-proof", "robot-filecheck"]:
        shutil.copy(HERE / "arm" / tool, rootfs / "usr" / "local" / "sbin" / tool)
    (rootfs / "etc" / "hostname").write_text("alpha2\n")
    # What a first boot would do anyway, done once here: every boot of the loop is a first one.
    run(["chroot", str(rootfs), "ldconfig"])
    run(["chroot", str(rootfs), "journalctl", "--update-catalog"])
    for stamp in ["etc/.updated", "var/.updated"]:
        (rootfs / stamp).touch()
    for timer in ["apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
                  "fstrim.timer", "systemd-tmpfiles-clean.timer", "e2scrub_reap.service"]:
        (etc / timer).unlink(missing_ok=True)
        (etc / timer).symlink_to("/dev/null")
    # The root password is locked and no getty is wanted on the console the host reads.
    (etc / "serial-getty@ttyAMA0.service").unlink(missing_ok=True)
    (etc / "serial-getty@ttyAMA0.service").symlink_to("/dev/null")
    share = rootfs / "usr" / "share" / "robot-vm"
    (share / "files").mkdir(parents=True, exist_ok=True)
    (share / "packages").mkdir(exist_ok=True)
    for name, target in [("main", "Alpha2Services.apk"), ("demo", "demo.bin"), ("broken", "broken.bin"), ("voice", "voice.bin")]:
        shutil.copy(files[name][0], share / "files" / target)
    pk = {
        "main": package_toml("com.ubtechinc.alpha2services", "service5mic", "/opt/alpha2/Alpha2Services.apk", "16"),
        "demo": package_toml("com.ubtechinc.robotdemo", "demo", "/opt/alpha2/demo.bin", "1",
                             'post_install = "systemctl restart robot-demo.service"\nhealth_check = "systemctl is-active --quiet robot-demo.service"\n'),
        "broken": package_toml("com.ubtechinc.broken", "broken", "/opt/alpha2/broken.bin", "1",
                               'health_check = "systemctl is-active --quiet robot-missing.service"\n'),
        "voice": package_toml("com.ubtechinc.voice", "voice", "/opt/alpha2/voice.bin", "1"),
    }
    for name, text in pk.items():
        (share / "packages" / f"{name}.toml").write_text(text)
    env = {
        "SERVER": GUEST_URL, "CLIENT_ID": CLIENT_ID, "CLIENT_SECRET": CLIENT_SECRET, "USERNAME": USERNAME,
        "PASSWORD": PASSWORD, "ROBOT_ID": ROBOT_ID, "PUBLIC_KEY": public_key,
        "MAIN_NEW_SHA": sha256(files["main"][2]), "DEMO_NEW_SHA": sha256(files["demo"][1]),
        "BROKEN_OLD_SHA": sha256(files["broken"][0]), "VOICE_NEW_SHA": sha256(files["voice"][1]),
    }
    (share / "env").write_text("".join(f"{k}='{v}'\n" for k, v in env.items()))
    config = rootfs / "etc" / "ota-agent" / "agent.toml"
    # The proofs board: the agent is started by the proofs, not at boot.
    run(["chroot", str(rootfs), "systemctl", "disable", "ota-agent.service"], stderr=subprocess.DEVNULL)
    config.write_text(agent_config([pk["main"]], public_key, "/var/lib/ota-agent"))
    config.chmod(0o600)
    proofs = WORK / "arm-proofs.img"
    mkfs(rootfs, proofs, "2G")
    # The power-cut board: the agent starts at boot with the main file at version 16.
    run(["chroot", str(rootfs), "systemctl", "enable", "ota-agent.service"], stderr=subprocess.DEVNULL)
    opt = rootfs / "opt" / "alpha2"
    opt.mkdir(parents=True, exist_ok=True)
    shutil.copy(files["main"][0], opt / "Alpha2Services.apk")
    cut = WORK / "arm-cut.img"
    mkfs(rootfs, cut, "1G")
    shutil.rmtree(rootfs)
    return proofs, cut


def mkfs(dir, image, size):
    if image.exists():
        image.unlink()
    run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(dir), str(image), size])


def x86_images(files, public_key):
    """The fast guest: an initramfs with busybox, the kernel's modules and the agent, and
    a small ext4 disk with the main file at version 16 and an empty state directory."""
    root = WORK / "x86-initramfs"
    if root.exists():
        shutil.rmtree(root)
    for d in ["bin", "proc", "sys", "dev", "data", "etc/ota-agent", "lib/modules", "tmp"]:
        (root / d).mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    shutil.copy(X86_AGENT, root / "bin" / "ota-agent")
    # The agent's C library and loader, at the paths it was linked to find them at.
    ldd = subprocess.run(["ldd", X86_AGENT], check=True, capture_output=True, text=True).stdout
    for lib in re.findall(r"(/\S+) \(0x", ldd):
        (root / lib.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(lib, root / lib.lstrip("/"))
    shutil.copy(HERE / "x86" / "init", root / "init")
    # The agent's TLS stack wants the system's CA certificates even for plain HTTP.
    (root / "etc" / "ssl" / "certs").mkdir(parents=True)
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", root / "etc" / "ssl" / "certs")
    order = []
    for ko in (X86_KERNEL / "modules.order").read_text().split():
        shutil.copy(X86_KERNEL / "modules" / ko, root / "lib" / "modules" / ko)
        order.append(ko)
    (root / "lib" / "modules" / "order").write_text("\n".join(order) + "\n")
    config = root / "etc" / "ota-agent" / "agent.toml"
    config.write_text(agent_config([package_toml("com.ubtechinc.alpha2services", "service5mic", "/data/opt/Alpha2Services.apk", "16")], public_key, "/data/state"))
    config.chmod(0o600)
    initrd = WORK / "x86-initrd.cpio"
    with open(initrd, "wb") as out:
        find = subprocess.Popen(["find", "."], cwd=root, stdout=subprocess.PIPE)
        run(["cpio", "-o", "-H", "newc", "--quiet", "-R", "0:0"], cwd=root, stdin=find.stdout, stdout=out)
        find.wait()
    data = WORK / "x86-data"
    if data.exists():
        shutil.rmtree(data)
    (data / "opt").mkdir(parents=True)
    (data / "state").mkdir(mode=0o700)
    shutil.copy(files["main"][0], data / "opt" / "Alpha2Services.apk")
    image = WORK / "x86-data.img"
    mkfs(data, image, "64M")
    shutil.rmtree(data)
    return initrd, image


# --- the proofs --------------------------------------------------------------------------------


def proofs(image, server, report):
    log("proofs: booting the board")
    m = Machine(arm_argv(image, "proofs", server), WORK / "console-proofs.txt")
    done = m.wait_exit(timeout=float(ENV.get("ROBOT_VM_PROOFS_TIMEOUT", "3600")))
    results = {}
    board = {}
    for _, line in m.lines:
        p = re.search(r"ROBOT-PROOF (\S+) (true|false) ?(.*)", line)
        if p and p.group(1) not in results:
            results[p.group(1)] = p.group(2) == "true"
            log(f"proof {p.group(1)}: {p.group(2)} {p.group(3)}")
        b = re.search(r"ROBOT-BOARD (.*)", line)
        if b and not board:
            board = dict(kv.split("=", 1) for kv in b.group(1).split())
        i = re.search(r"ROBOT-INFO (.*)", line)
        if i:
            log("board:", i.group(1))
    expected = ["missing_directory_starts", "ready", "low_priority", "status_during_download", "stop_mid_download_resumes",
                "signed_two_patch_update", "post_install_restarts_service", "health_check_passes",
                "failing_health_check_rolls_back", "watchdog_quiet_64mib", "memory_capped_64mib", "journal_progress", "journal_no_secret"]
    for name in expected:
        results.setdefault(name, False)
    if not done:
        log("proofs: the board did not power off in time")
    journal = OUT / "journal.txt"
    subprocess.run(["debugfs", "-R", f"dump /var/lib/robot-proof/journal.txt {journal}", str(image)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not journal.exists():
        journal.write_text("(the board left no journal)\n")
    report["board"] = {
        "kernel": board.get("kernel"), "systemd": board.get("systemd"), "arch": board.get("arch"),
        "boot_seconds": float(board["boot_seconds"]) if board.get("boot_seconds", "").replace(".", "").isdigit() else None,
        "machine": "qemu-system-arm -M virt -cpu cortex-a15 (TCG), 1 CPU, 1 GiB",
    }
    report["proofs"] = results


# --- the power-cut loops -----------------------------------------------------------------------


class CutLoop:
    """Rounds of one two-patch update (16 -> 17 -> 18), each on a fresh disk: a boot, a cut at a
    chosen moment of a chosen step, another boot, ... until the update ends; then the checks."""

    def __init__(self, name, argv_for, pristine, server, versions, cuts, rng, est, boot_timeout, steps=STEPS):
        self.name, self.argv_for, self.pristine, self.server = name, argv_for, pristine, server
        # The steps this loop cuts in: all four, or (a tooth) the one where its fault shows.
        self.steps = steps
        self.versions = {sha256(v): i for i, v in enumerate(versions)}
        self.final = sha256(versions[-1])
        self.cuts_wanted, self.rng, self.est, self.boot_timeout = cuts, rng, est, boot_timeout
        self.seen = {}
        self.cuts = 0
        self.by_step = {s: 0 for s in STEPS}
        self.violations = []
        # Violations of the first invariant (a file that is no version): the only ones a tooth
        # that skips an fsync may be credited with (a guest that does not boot is no catch).
        self.broken_files = 0
        self.rounds = 0
        self.boots = 0

    def violation(self, what):
        log(f"{self.name}: VIOLATION {what}")
        self.violations.append(f"{self.name}: {what}")

    def check_file(self, digest, when):
        if digest not in self.versions:
            self.broken_files += 1
            self.violation(f"round {self.rounds}: the managed file is none of the catalog's versions {when} (sha256 {digest or 'missing'})")
            return False
        return True

    def run(self):
        while self.cuts < self.cuts_wanted and not self.violations:
            self.round()
        log(f"{self.name}: {self.cuts} cuts in {self.rounds} rounds, {self.boots} boots; by step {self.by_step}")

    def round(self):
        self.rounds += 1
        disk = WORK / f"{self.name}-round.img"
        run(["cp", "--sparse=always", str(self.pristine), str(disk)])
        seen = len(self.server.callbacks())
        # The steps to cut in, in order, each at a random fraction of its expected length.
        plan = [s for s in self.steps if self.rng.random() < 0.75] or [self.rng.choice(self.steps)]
        plan = [(s, self.rng.random()) for s in plan][: self.cuts_wanted - self.cuts]
        final = None
        deadline = time.monotonic() + 40 * self.boot_timeout
        while time.monotonic() < deadline:
            self.boots += 1
            m = Machine(self.argv_for(disk), WORK / f"console-{self.name}.txt")
            hit = m.wait_for({"file": FILE_LINE}, self.boot_timeout)
            if not hit:
                m.cut()
                self.violation(f"round {self.rounds}: the guest did not come up (see console-{self.name}.txt)")
                return
            if not self.check_file(hit[2].group(2), "after a power cut" if self.boots > 1 else "at the first boot"):
                m.cut()
                return
            at = hit[1] + 1
            marks = {}
            cut_done = False
            while plan:
                step, fraction = plan[0]
                patterns = {s: MARKERS[s] for s in STEPS[STEPS.index(step):]}
                patterns["idle"] = IDLE
                got = m.wait_for(patterns, self.boot_timeout * 2, at)
                if not got:
                    m.cut()
                    self.violation(f"round {self.rounds}: the agent neither reached {step} nor went idle")
                    return
                name, at, _ = got
                marks.setdefault(name, m.lines[at][0])
                if name == "idle":
                    break
                if name != step:
                    # Past the step already (it ended before the agent was cut there): skip it.
                    plan.pop(0)
                    continue
                delay = fraction * self.est[step]
                time.sleep(delay)
                m.cut()
                # Where the cut really fell: the last step the agent had begun (a step shorter
                # than its estimate may have ended, and the update with it).
                fell = self.step_at_cut(m, at)
                self.cuts += 1
                self.by_step[fell] = self.by_step.get(fell, 0) + 1
                plan.pop(0)
                cut_done = True
                log(f"{self.name}: cut {self.cuts} in {fell}, {delay:.2f}s after {step} began (round {self.rounds})")
                break
            if cut_done:
                continue
            # No cut left in this round: the update is to end, and the file is read when idle.
            got = m.wait_for({"idle": FILE_LINE}, self.boot_timeout * 2, at)
            while got and got[2].group(1) != "idle":
                got = m.wait_for({"idle": FILE_LINE}, self.boot_timeout * 2, got[1] + 1)
            self.learn(m)
            m.cut()
            if not got:
                self.violation(f"round {self.rounds}: the update did not end (no idle agent)")
                return
            final = got[2].group(2)
            break
        else:
            self.violation(f"round {self.rounds}: the update did not end in {self.boots} boots")
            return
        self.check_file(final, "when the update ended")
        ids = ["23", "25"]
        calls = self.server.callbacks()[seen:]
        codes = {i: sorted({c["code"] for c in calls if c["id"] == i}) for i in ids}
        for i in ids:
            if not codes[i]:
                self.violation(f"round {self.rounds}: update {i} has no result at the server")
            elif len(codes[i]) > 1:
                self.violation(f"round {self.rounds}: update {i} has contradictory results {codes[i]}")
        if all(codes[i] == ["1"] for i in ids) and final != self.final:
            self.violation(f"round {self.rounds}: both updates reported installed, but the file is version index {self.versions.get(final)}")
        log(f"{self.name}: round {self.rounds} ended: results {codes}, file is version index {self.versions.get(final)}")

    @staticmethod
    def step_at_cut(m, start):
        fell = None
        for _, line in m.lines[start:]:
            for s, rx in MARKERS.items():
                if rx.search(line):
                    fell = s
            if IDLE.search(line):
                fell = "after the end"
        return fell

    def learn(self, m):
        """Learns how long each step takes from a boot that was not cut: the cut moments are
        fractions of the median length seen so far."""
        times = {}
        for stamp, line in m.lines:
            for s, rx in MARKERS.items():
                if s not in times and rx.search(line):
                    times[s] = stamp
            if IDLE.search(line):
                times.setdefault("idle", stamp)
        order = [s for s in STEPS + ["idle"] if s in times]
        for a, b in zip(order, order[1:]):
            if a in self.est:
                seen = self.seen.setdefault(a, [])
                seen.append(times[b] - times[a])
                self.est[a] = sorted(seen)[len(seen) // 2]


def main():
    WORK.mkdir(parents=True, exist_ok=True)
    for f in WORK.glob("console-*.txt"):
        f.unlink()
    report = {
        "seed": SEED, "board": {}, "proofs": {}, "cuts": {"arm": 0, "x86": 0, "by_step": {s: 0 for s in STEPS}},
        "violations": [],
    }
    log(f"seed {SEED} (ROBOT_VM_SEED={SEED} replays the cut plan)")
    files, public_key = make_catalog(OUT / "catalog")
    catalog = OUT / "catalog" / "catalog.toml"
    t0 = time.monotonic()
    servers = {name: Server(catalog, name) for name in ["proofs", "arm", "x86"]}
    log(f"mock servers up in {time.monotonic() - t0:.0f}s (patches made and cached)")
    threads = []
    loops = []
    teeth = {}
    rng = random.Random(SEED)
    # The proofs, the board's cuts and the x86 guest's run side by side, one emulator each: the
    # board boots slowly, and two boards at once finish well before one after the other.
    if ONLY & {"proofs", "arm"}:
        proofs_img, cut_img = arm_images(files, public_key)
        if "proofs" in ONLY:
            threads.append(threading.Thread(target=proofs, args=(proofs_img, servers["proofs"], report)))
        if "arm" in ONLY:
            arm_rng = random.Random(rng.random())

            def arm():
                loop = CutLoop("arm", lambda d: arm_argv(d, "cut", servers["arm"]), cut_img, servers["arm"], files["main"],
                               ARM_CUTS, arm_rng, {"download": 1.5, "apply": 3, "install": 0.5, "report": 0.3}, 300)
                loops.append(loop)
                loop.run()

            threads.append(threading.Thread(target=arm))
    if "x86" in ONLY or TEETH:
        initrd, data = x86_images(files, public_key)

        def x86():
            loop = CutLoop("x86", lambda d: x86_argv(initrd, d, servers["x86"]), data, servers["x86"], files["main"],
                           X86_CUTS, random.Random(rng.random()), {"download": 0.5, "apply": 0.6, "install": 0.1, "report": 0.1}, 60)
            if "x86" in ONLY:
                loops.append(loop)
                loop.run()
            # The teeth: the same loop with one fsync skipped must find a violation. It cuts only
            # once the agent reports (the new file is in place by then): a cut before the swap
            # cannot lose the file that the skipped fsync leaves unwritten.
            for point in TEETH:
                t = CutLoop(f"teeth-{point}", lambda d, p=point: x86_argv(initrd, d, servers["x86"], p), data, servers["x86"],
                            files["main"], TOOTH_CUTS, random.Random(rng.random()), dict(loop.est), 60, ["report"])
                t.run()
                caught = t.broken_files > 0
                teeth[point] = {"caught": caught, "cuts": t.cuts, "rounds": t.rounds,
                                "violation": t.violations[0] if t.violations else None}
                log(f"teeth {point}: " + (f"caught after {t.cuts} cut(s): {t.violations[0]}" if caught
                                         else f"NOT caught in {t.cuts} cuts" + (f" ({t.violations[0]})" if t.violations else "")))

        threads.append(threading.Thread(target=x86))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in servers.values():
        s.stop()
    for loop in loops:
        report["cuts"][loop.name] = loop.cuts
        report["cuts"].setdefault("rounds", {})[loop.name] = loop.rounds
        for s, n in loop.by_step.items():
            report["cuts"]["by_step"][s] = report["cuts"]["by_step"].get(s, 0) + n
        report["violations"] += loop.violations
    if TEETH:
        report["teeth"] = teeth
    (OUT / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"report: {OUT / 'report.json'}; journal: {OUT / 'journal.txt'}")
    failed = [k for k, v in report["proofs"].items() if not v]
    if failed:
        log("FAILED proofs:", ", ".join(failed))
    if report["violations"]:
        log(f"FAILED: {len(report['violations'])} violation(s)")
    if "x86" in ONLY and report["cuts"]["x86"] < X86_CUTS and not report["violations"]:
        log(f"FAILED: only {report['cuts']['x86']} of {X86_CUTS} cuts on x86")
        return 1
    missed = [p for p in TEETH if not teeth.get(p, {}).get("caught")]
    if missed:
        log("FAILED: the loop did not catch the skipped fsync of", ", ".join(missed))
    return 1 if failed or report["violations"] or missed else 0


if __name__ == "__main__":
    sys.exit(main())

"""qcapsd side by side with libvirt's capabilities cache and the exec path.

Run through scripts/bench-versus (which installs libvirt if absent). In one
run, over the same emulators (the ones libvirt probes on this machine):

- the exec path of the original report: six help execs per "API call"
  (-cpu help, -help, -device help for two binaries), for a periodic query
  of 30 VMs;
- libvirt: cold start to the first `virsh capabilities` with an empty
  capabilities cache, warm restart, `getDomainCapabilities` per call in
  process, `virsh domcapabilities` as a process;
- qcapsd: cold start to /readyz, warm restart, the full document per query
  over HTTP, `qcapsd query … --json` as a process;
- the QEMU execs each side ran: libvirt's counted with strace in a second,
  untimed pass; qcapsd's from its own metrics; the exec path's by
  construction.

libvirtd runs privately (its own config, sockets, log and pid file under a
temporary directory); its capabilities cache directory is moved aside
before the cold runs and put back afterwards. A libvirtd or virtqemud
already running on the machine is never touched: the script refuses.

Prints a Markdown table with the ratios, the machine and the date.
"""

import argparse
import datetime
import glob
import http.client
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

CACHE_DIR = "/var/cache/libvirt/qemu/capabilities"
X86 = "/usr/bin/qemu-system-x86_64"
ARM = "/usr/bin/qemu-system-aarch64"


def fail(msg):
    print("bench-versus: " + msg, file=sys.stderr)
    sys.exit(1)


# Exit status when this machine cannot run the benchmark (not root, or a
# libvirtd of its own runs): the cargo-test smoke run reports a skip.
CANNOT_RUN = 77


def cannot_run(msg):
    print("bench-versus: " + msg, file=sys.stderr)
    sys.exit(CANNOT_RUN)


def running(names):
    """Pids of processes whose command name is in `names`."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/comm" % d) as f:
                if f.read().strip() in names:
                    found.append(int(d))
        except OSError:
            pass
    return found


def median_ms(samples):
    return statistics.median(samples) * 1e3


def timed(fn, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def run_quiet(argv):
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)


# ---- libvirt -------------------------------------------------------------


def kvm_as_udev_sets_it():
    """Gives /dev/kvm the owner and mode Debian's udev rules give it (root:kvm
    0660), so that libvirt's QEMU user may use it, as on a real compute
    node. Returns what to restore, or None when nothing was changed."""
    import grp
    try:
        st = os.stat("/dev/kvm")
        kvm_gid = grp.getgrnam("kvm").gr_gid
    except (OSError, KeyError):
        return None
    mode = st.st_mode & 0o7777
    if st.st_gid == kvm_gid and mode & 0o060 == 0o060:
        return None
    print("bench-versus: /dev/kvm is %s %o; giving it root:kvm 0660 (as udev does) for the run"
          % ("%d:%d" % (st.st_uid, st.st_gid), mode), file=sys.stderr)
    os.chown("/dev/kvm", 0, kvm_gid)
    os.chmod("/dev/kvm", 0o660)
    return (st.st_uid, st.st_gid, mode)


class Libvirtd:
    """A private libvirtd: own config, sockets, log and pid file."""

    def __init__(self, work):
        self.work = work
        self.run_dir = os.path.join(work, "libvirt-run")
        os.makedirs(self.run_dir, exist_ok=True)
        self.conf = os.path.join(work, "libvirtd.conf")
        with open(self.conf, "w") as f:
            f.write(
                'unix_sock_dir = "%s"\n'
                'auth_unix_ro = "none"\n'
                'auth_unix_rw = "none"\n'
                'log_outputs = "3:file:%s"\n'
                % (self.run_dir, os.path.join(work, "libvirtd.log"))
            )
        self.pid_file = os.path.join(work, "libvirtd.pid")
        self.uri = "qemu:///system?socket=%s/libvirt-sock" % self.run_dir
        self.proc = None

    def start(self, strace_to=None):
        argv = ["libvirtd", "-f", self.conf, "-p", self.pid_file]
        if strace_to:
            argv = ["strace", "-f", "-qq", "-e", "trace=execve", "-e", "signal=none",
                    "-o", strace_to] + argv
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def virsh(self, *args):
        return subprocess.run(["virsh", "-c", self.uri] + list(args),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def wait_capabilities(self, timeout=900):
        """Seconds until the first `virsh capabilities` answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                fail("libvirtd exited (status %s); see %s/libvirtd.log"
                     % (self.proc.returncode, self.work))
            r = self.virsh("capabilities")
            if r.returncode == 0 and b"<capabilities>" in r.stdout:
                return
            time.sleep(0.05)
        fail("libvirtd gave no capabilities within %ss" % timeout)

    def stop(self):
        """Stops this libvirtd by its pid (never any other)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        pid = self.proc.pid
        if os.path.exists(self.pid_file):
            with open(self.pid_file) as f:
                pid = int(f.read().strip() or pid)
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def clear_cache():
    if os.path.isdir(CACHE_DIR):
        for f in glob.glob(os.path.join(CACHE_DIR, "*")):
            os.remove(f)


def cached_emulators():
    """The binaries libvirt probed, from its cache files."""
    out = set()
    for f in glob.glob(os.path.join(CACHE_DIR, "*.xml")):
        with open(f) as fh:
            m = re.search(r"<emulator>([^<]+)</emulator>", fh.read())
            if m:
                out.add(m.group(1))
    return sorted(out)


def strace_works():
    r = subprocess.run(["strace", "-f", "-qq", "-e", "trace=execve", "-o", os.devnull, "true"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return r.returncode == 0


def qemu_execs(strace_file, start=0):
    """QEMU execve lines (successful) in a strace log, from line `start`."""
    with open(strace_file) as f:
        lines = f.readlines()
    n = sum(1 for l in lines[start:]
            if "execve(" in l and "qemu-system" in l and "= 0" in l)
    return n, len(lines)


def bench_libvirt(work, n, vm_arch, virttype):
    import libvirt  # python3-libvirt (Debian's python3)

    libvirt.registerErrorHandler(lambda *_: None, None)
    res = {}
    d = Libvirtd(work)
    try:
        clear_cache()
        t = time.perf_counter()
        d.start()
        d.wait_capabilities()
        res["cold"] = time.perf_counter() - t
        res["emulators"] = cached_emulators()
        conn = libvirt.open(d.uri)
        conn.getDomainCapabilities(X86, vm_arch, None, virttype)
        res["domcaps"] = timed(
            lambda: conn.getDomainCapabilities(X86, vm_arch, None, virttype), n * 20)
        conn.close()
        res["virsh"] = timed(
            lambda: run_quiet(["virsh", "-c", d.uri, "domcapabilities", "--emulatorbin", X86,
                               "--arch", vm_arch, "--virttype", virttype]), n)
        d.stop()
        # Warm restart: the cache is valid.
        t = time.perf_counter()
        d.start()
        d.wait_capabilities()
        res["warm"] = time.perf_counter() - t
        d.stop()
        # Untimed pass under strace: count QEMU execs, cold then warm.
        if not strace_works():
            print("bench-versus: strace cannot trace here; libvirt's execs are not counted",
                  file=sys.stderr)
            res["cold_execs"] = res["warm_execs"] = None
            return res
        clear_cache()
        trace = os.path.join(work, "libvirtd.strace")
        d.start(strace_to=trace)
        d.wait_capabilities()
        res["cold_execs"], mark = qemu_execs(trace)
        conn = libvirt.open(d.uri)
        for _ in range(n):
            conn.getDomainCapabilities(X86, vm_arch, None, virttype)
        conn.close()
        for _ in range(n):
            run_quiet(["virsh", "-c", d.uri, "domcapabilities", "--emulatorbin", X86,
                       "--arch", vm_arch, "--virttype", virttype])
        res["warm_execs"], _ = qemu_execs(trace, mark)
        d.stop()
    finally:
        d.stop()
    return res


# ---- qcapsd --------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path, conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    if conn is None:
        c.close()
    return r.status, body


def metric_sum(port, name):
    _, body = get(port, "/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


class Agent:
    def __init__(self, qcapsd, work, emulators):
        self.qcapsd = qcapsd
        self.port = free_port()
        self.cache = os.path.join(work, "qcapsd-cache")
        self.config = os.path.join(work, "qcapsd.yaml")
        with open(self.config, "w") as f:
            f.write("listen: 127.0.0.1:%d\ncache_dir: %s\nemulators:\n" % (self.port, self.cache))
            for e in emulators:
                f.write("  - path: %s\n" % e)
        self.proc = None

    def start_until_ready(self):
        t = time.perf_counter()
        self.proc = subprocess.Popen([self.qcapsd, "run", "--config", self.config],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                fail("qcapsd exited with status %s" % self.proc.returncode)
            try:
                if get(self.port, "/readyz")[0] == 200:
                    return time.perf_counter() - t
            except OSError:
                pass
            time.sleep(0.005)
        fail("qcapsd not ready within 600 s")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def bench_qcapsd(qcapsd, work, emulators, n):
    res = {}
    a = Agent(qcapsd, work, emulators)
    try:
        shutil.rmtree(a.cache, ignore_errors=True)
        res["cold"] = a.start_until_ready()
        res["cold_execs"] = metric_sum(a.port, "qcapsd_exec_duration_seconds_count")
        name = os.path.basename(X86)
        path = "/v1/emulators/" + name
        conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=30)
        status, body = get(a.port, path, conn)
        if status != 200:
            fail("GET %s: %s" % (path, status))
        res["doc_bytes"] = len(body)
        res["query"] = timed(lambda: get(a.port, path, conn), n * 20)
        conn.close()
        addr = "http://127.0.0.1:%d" % a.port
        res["cli"] = timed(
            lambda: run_quiet([qcapsd, "query", "--addr", addr, name, "--json"]), n)
        res["warm_execs"] = metric_sum(a.port, "qcapsd_exec_duration_seconds_count") - res["cold_execs"]
        a.stop()
        res["warm"] = a.start_until_ready()
        res["restart_execs"] = metric_sum(a.port, "qcapsd_exec_duration_seconds_count")
    finally:
        a.stop()
    return res


# ---- the exec path -------------------------------------------------------


def bench_exec_path(calls):
    """`calls` API calls of six help execs each; seconds per call."""
    per_call = []
    for _ in range(calls):
        t = time.perf_counter()
        for b in (X86, ARM):
            for args in (["-cpu", "help"], ["-help"], ["-device", "help"]):
                run_quiet([b] + args)
        per_call.append(time.perf_counter() - t)
    return per_call


# ---- report --------------------------------------------------------------


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.+)", f.read())
            cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    kvm = "with /dev/kvm" if os.path.exists("/dev/kvm") else "without /dev/kvm"
    qemu = subprocess.run([X86, "--version"], stdout=subprocess.PIPE, text=True).stdout.split("\n")[0]
    lv = subprocess.run(["libvirtd", "--version"], stdout=subprocess.PIPE, text=True).stdout.strip()
    return "%s, %d CPUs, %s, kernel %s; %s; %s" % (
        cpu, os.cpu_count() or 0, kvm, platform.release(), qemu, lv)


def count(n):
    return "uncounted" if n is None else str(n)


def ms(s):
    return "%.1f ms" % (s * 1e3) if s < 1 else "%.2f s" % s


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--qcapsd", required=True, help="the qcapsd binary")
    p.add_argument("--short", action="store_true",
                   help="few iterations, one exec-path call (a smoke run)")
    args = p.parse_args()
    if os.geteuid() != 0:
        cannot_run("needs root (a private system libvirtd)")
    busy = running({"libvirtd", "virtqemud"})
    if busy:
        cannot_run("a libvirtd or virtqemud already runs here (pid %s); not disturbing it: "
             "stop it first, or run this on another machine" % ", ".join(map(str, busy)))
    for b in (X86, ARM):
        if not os.access(b, os.X_OK):
            fail("%s is missing (.ci/install-deps installs it)" % b)
    n = 3 if args.short else 20
    vm_arch = "x86_64"
    virttype = "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "qemu"
    kvm_restore = kvm_as_udev_sets_it()
    work = tempfile.mkdtemp(prefix="qcapsd-versus-")
    backup = os.path.join(work, "libvirt-caps-backup")
    had_cache = os.path.isdir(CACHE_DIR)
    if had_cache:
        shutil.copytree(CACHE_DIR, backup)
    try:
        print("bench-versus: libvirt ...", file=sys.stderr)
        lv = bench_libvirt(work, n, vm_arch, virttype)
        emulators = lv["emulators"]
        if X86 not in emulators:
            fail("libvirt did not probe %s" % X86)
        print("bench-versus: qcapsd over libvirt's %d emulators ..." % len(emulators),
              file=sys.stderr)
        qc = bench_qcapsd(args.qcapsd, work, emulators, n)
        print("bench-versus: the exec path ...", file=sys.stderr)
        calls = 1 if args.short else 30
        ex = bench_exec_path(calls)
    finally:
        if kvm_restore:
            uid, gid, mode = kvm_restore
            os.chown("/dev/kvm", uid, gid)
            os.chmod("/dev/kvm", mode)
        if had_cache:
            clear_cache()
            for f in glob.glob(os.path.join(backup, "*")):
                shutil.copy2(f, CACHE_DIR)
        shutil.rmtree(work, ignore_errors=True)

    ne = len(emulators)
    call = statistics.median(ex)
    rows = [
        ("cold start, all %d emulators" % ne,
         "first `virsh capabilities`: %s (%s QEMU execs)" % (ms(lv["cold"]), count(lv["cold_execs"])),
         "`/readyz`: %s (%d execs)" % (ms(qc["cold"]), qc["cold_execs"]),
         lv["cold"] / qc["cold"]),
        ("restart, caches valid",
         "first `virsh capabilities`: %s" % ms(lv["warm"]),
         "`/readyz`: %s (%d execs)" % (ms(qc["warm"]), qc["restart_execs"]),
         lv["warm"] / qc["warm"]),
        ("full x86_64 capabilities, warm, per call",
         "`getDomainCapabilities` in process: %.3f ms" % median_ms(lv["domcaps"]),
         "GET full document (%d KB) over HTTP: %.3f ms" % (qc["doc_bytes"] // 1000,
                                                           median_ms(qc["query"])),
         statistics.median(lv["domcaps"]) / statistics.median(qc["query"])),
        ("as a command",
         "`virsh domcapabilities`: %.1f ms" % median_ms(lv["virsh"]),
         "`qcapsd query x86_64 --json`: %.1f ms" % median_ms(qc["cli"]),
         statistics.median(lv["virsh"]) / statistics.median(qc["cli"])),
        ("periodic query of 30 VMs",
         "exec path, 6 help execs per VM: %s (180 execs)%s"
         % (ms(30 * call), "" if calls == 30 else ", one call x 30"),
         "30 queries: %.1f ms (0 execs)" % (30 * median_ms(qc["query"])),
         (30 * call) / (30 * statistics.median(qc["query"]))),
    ]
    print()
    print("Measured %s on %s." % (datetime.date.today().isoformat(), machine()))
    print("Medians of %d in-process or HTTP calls, %d command runs, %d exec-path calls%s."
          % (n * 20, n, calls, " (a short run)" if args.short else ""))
    print("Warm execs: libvirt %s over %d getDomainCapabilities + %d virsh calls; "
          "qcapsd %d over its queries." % (count(lv["warm_execs"]), n, n, qc["warm_execs"]))
    print()
    print("| work | libvirt / exec path | qcapsd | qcapsd faster by |")
    print("| --- | --- | --- | --- |")
    for work_, left, right, ratio in rows:
        print("| %s | %s | %s | %.0fx |" % (work_, left, right, ratio))


if __name__ == "__main__":
    main()

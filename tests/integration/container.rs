//! The container image (deploy/container/, built by scripts/image on a
//! base holding QEMU, imported from a debootstrap root): the agent inside
//! runs as its non-root user, serves the *image's* QEMU through a unix
//! socket on a mounted volume, restarts with the same cache volume at 0
//! execs, and keeps its shims on the shared volume, where a second
//! container from the base (the "compute" container) gets QEMU's bytes
//! through them with no exec. Containers run with `buildah run --isolation
//! chroot` (`podman run` cannot set rlimits on these machines).

use crate::common::{self, poll_until_for, require_tool, unix_get};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const STORAGE: [&str; 2] = ["--storage-driver", "vfs"];
const UID: u32 = 10733;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn buildah(args: &[&str]) -> String {
    run_ok(Command::new("buildah").args(STORAGE).args(args))
}

/// A working container of `image`, removed on drop.
struct Ctr(String);

impl Ctr {
    fn from(image: &str) -> Ctr {
        Ctr(buildah(&["from", "--pull=never", image]).trim().to_owned())
    }

    /// Drops the image's `VOLUME` at `path` from this working container.
    /// `buildah run` (1.28) mounts an image volume's own directory and a
    /// `-v` at the same path in an order that varies from run to run, so
    /// the `-v` would often be hidden; `podman run` and Kubernetes let the
    /// explicit mount win.
    fn drop_image_volume(&self, path: &str) {
        buildah(&["config", "--volume", &format!("{path}-"), &self.0]);
    }

    /// `buildah run` in it, with `volumes` (host:container), as `argv`.
    fn command(&self, volumes: &[(&Path, &str)], argv: &[&str]) -> Command {
        let mut c = Command::new("buildah");
        c.args(STORAGE)
            .args(["run", "--isolation", "chroot", "--env", "RUST_LOG=debug"]);
        for (host, at) in volumes {
            c.arg("-v").arg(format!("{}:{at}", host.display()));
        }
        c.arg(&self.0).arg("--").args(argv);
        c
    }

    /// Where its root file system is on the host.
    fn mount(&self) -> PathBuf {
        PathBuf::from(buildah(&["mount", &self.0]).trim())
    }
}

impl Drop for Ctr {
    fn drop(&mut self) {
        let _ = Command::new("buildah")
            .args(STORAGE)
            .args(["rm", &self.0])
            .output();
    }
}

/// The agent running in a container, in a process group of its own (so a
/// SIGTERM reaches buildah and the agent alike).
struct Agent(Child);

impl Agent {
    fn start(ctr: &Ctr, volumes: &[(&Path, &str)], log: &Path) -> Agent {
        let log = std::fs::File::create(log).unwrap();
        let child = ctr
            .command(
                volumes,
                &[
                    "/usr/local/bin/qcapsd",
                    "run",
                    "--config",
                    "/etc/qcapsd/config.yaml",
                ],
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        Agent(child)
    }

    fn stop(mut self) {
        let pgid = rustix::process::Pid::from_raw(self.0.id() as i32).unwrap();
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::TERM);
        let stopped = poll_until_for(Duration::from_secs(30), Duration::from_millis(100), || {
            self.0.try_wait().unwrap().is_some()
        });
        if !stopped {
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
            let _ = self.0.wait();
            panic!("the agent in the container did not stop on SIGTERM");
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            if let Some(pgid) = rustix::process::Pid::from_raw(self.0.id() as i32) {
                let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
            }
            let _ = self.0.wait();
        }
    }
}

fn ready(socket: &Path) -> bool {
    poll_until_for(Duration::from_secs(180), Duration::from_millis(250), || {
        std::os::unix::net::UnixStream::connect(socket).is_ok()
            && unix_get(socket, "/readyz").status == 200
    })
}

fn metric_sum(socket: &Path, name: &str) -> f64 {
    let text = unix_get(socket, "/metrics").text();
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `name`'s value per `emulator` label.
fn by_emulator(socket: &Path, name: &str) -> std::collections::BTreeMap<String, f64> {
    let text = unix_get(socket, "/metrics").text();
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix("{")?;
            let (_, after) = rest.split_once("emulator=\"")?;
            let (emulator, _) = after.split_once('"')?;
            let value = l.rsplit(' ').next()?.parse().ok()?;
            Some((emulator.to_owned(), value))
        })
        .collect()
}

#[ignore = "needs root, podman, buildah and debootstrap"]
#[test]
fn the_image_serves_its_own_qemu_restarts_with_no_exec_and_shares_its_shims() {
    for tool in ["podman", "buildah", "debootstrap"] {
        require_tool(tool);
    }
    let built = run_ok(Command::new(repo("scripts/image")).current_dir(repo(".")));
    let image = built.trim();
    assert!(image.starts_with("localhost/qcapsd:"), "{image}");
    // The base it was built on: the image's parent, as scripts/image names it.
    let base = run_ok(Command::new("podman").args(STORAGE).args([
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        "localhost/qcapsd-qemu-base",
    ]));
    let base = base.lines().next().expect("the base image").to_owned();

    let d = tempfile::tempdir().unwrap();
    let (run, cache, etc) = (
        d.path().join("run"),
        d.path().join("cache"),
        d.path().join("etc"),
    );
    for dir in [&run, &cache, &etc] {
        std::fs::create_dir_all(dir).unwrap();
    }
    // The volumes belong to the image's user, as the Kubernetes manifests'
    // init container makes them.
    for dir in [&run, &cache] {
        std::os::unix::fs::chown(dir, Some(UID), Some(UID)).unwrap();
    }
    // The image's own config, on a free metrics port (the containers share
    // this machine's network).
    let config = std::fs::read_to_string(repo("deploy/container/qcapsd.yaml"))
        .unwrap()
        .replace(
            "0.0.0.0:9734",
            &format!("127.0.0.1:{}", common::free_port()),
        );
    std::fs::write(etc.join("config.yaml"), config).unwrap();
    let volumes = [
        (run.as_path(), "/run/qcapsd"),
        (cache.as_path(), "/var/cache/qcapsd"),
        (etc.as_path(), "/etc/qcapsd"),
    ];
    let socket = run.join("qcapsd.sock");

    let ctr = Ctr::from(image);
    ctr.drop_image_volume("/var/cache/qcapsd");
    let agent = Agent::start(&ctr, &volumes, &d.path().join("agent1.log"));
    assert!(
        ready(&socket),
        "not ready: {}",
        std::fs::read_to_string(d.path().join("agent1.log")).unwrap_or_default()
    );
    // The agent runs as the image's user, not root.
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), UID);

    // It serves the image's QEMU: the version that binary prints, and the
    // very file in the image's root (its inode, not the host's).
    let said = run_ok(&mut ctr.command(&[], &["/usr/bin/qemu-system-x86_64", "--version"]));
    let version = said
        .split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .unwrap()
        .to_owned();
    let doc = unix_get(&socket, "/v1/emulators/qemu-system-x86_64").json();
    assert_eq!(doc["emulator"]["path"], "/usr/bin/qemu-system-x86_64");
    assert_eq!(doc["qemu"]["version"], version.as_str());
    let in_image = std::fs::metadata(ctr.mount().join("usr/bin/qemu-system-x86_64")).unwrap();
    let ino = std::os::unix::fs::MetadataExt::ino(&in_image);
    assert_eq!(
        doc["cache"]["fingerprint"]["binary"]["ino"], ino,
        "the image's binary"
    );
    if let Ok(host) = std::fs::metadata("/usr/bin/qemu-system-x86_64") {
        assert_ne!(
            std::os::unix::fs::MetadataExt::ino(&host),
            ino,
            "not the host's"
        );
    }
    let probes = metric_sum(&socket, "qcapsd_probes_total");
    assert!(probes >= 1.0, "a cold cache is probed");

    // The shims are on the shared volume; a second container from the
    // base (the compute container, sharing only that volume) gets QEMU's
    // bytes through them, answered by the agent without an exec.
    let shim = run.join("shims/qemu-system-x86_64");
    assert!(
        std::fs::symlink_metadata(&shim)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(run.join("shims/.qcapsd/qcapsd").is_file());
    let recorded =
        "qcapsd_shim_requests_total{emulator=\"qemu-system-x86_64\",result=\"recorded\"}";
    assert!(
        poll_until_for(Duration::from_secs(60), Duration::from_millis(200), || {
            common::metric(&unix_get(&socket, "/metrics").text(), recorded) == Some(5.0)
        }),
        "the five default queries are recorded after the probe"
    );
    let compute = Ctr::from(&base);
    let shared = [(run.as_path(), "/run/qcapsd")];
    let execs = metric_sum(&socket, "qcapsd_exec_duration_seconds_count");
    for query in [&["-machine", "help"][..], &["-cpu", "help"], &["-version"]] {
        let mut through: Vec<&str> = vec!["/run/qcapsd/shims/qemu-system-x86_64"];
        through.extend(query);
        let mut direct: Vec<&str> = vec!["/usr/bin/qemu-system-x86_64"];
        direct.extend(query);
        let a = compute.command(&shared, &through).output().unwrap();
        let b = compute.command(&shared, &direct).output().unwrap();
        assert_eq!(a.status.code(), b.status.code(), "{query:?}");
        assert_eq!(a.stdout, b.stdout, "{query:?}: stdout");
    }
    assert_eq!(
        metric_sum(&socket, "qcapsd_exec_duration_seconds_count"),
        execs,
        "the prewarmed answers cost no exec"
    );
    assert!(metric_sum(&socket, "qcapsd_shim_requests_total") >= 3.0);

    // A restart with the same cache volume runs no probe of an emulator
    // that was up. (One that failed, e.g. a KVM-only build with no
    // /dev/kvm in the container, is tried again: a failure is not kept on
    // disk.)
    let up = by_emulator(&socket, "qcapsd_emulator_up");
    assert_eq!(up.get("qemu-system-x86_64"), Some(&1.0), "{up:?}");
    let files = || -> Vec<String> {
        std::fs::read_dir(&cache)
            .map(|r| {
                r.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                    .collect()
            })
            .unwrap_or_default()
    };
    // The cache files are on the mounted volume, not in the container.
    for (emulator, v) in &up {
        if *v == 1.0 {
            let file = format!("{emulator}.json");
            assert!(files().contains(&file), "{file} not in {:?}", files());
        }
    }
    agent.stop();
    let agent = Agent::start(&ctr, &volumes, &d.path().join("agent2.log"));
    assert!(ready(&socket), "not ready after a restart");
    let probed = by_emulator(&socket, "qcapsd_probes_total");
    let cached: Vec<_> = up
        .iter()
        .filter(|(_, v)| **v == 1.0)
        .map(|(e, _)| e)
        .collect();
    for emulator in &cached {
        assert_eq!(
            probed.get(*emulator),
            Some(&0.0),
            "{emulator}: 0 execs after a restart; cache volume {:?}; first run:\n{}\nafter the restart:\n{}",
            files(),
            std::fs::read_to_string(d.path().join("agent1.log")).unwrap_or_default(),
            std::fs::read_to_string(d.path().join("agent2.log")).unwrap_or_default()
        );
    }
    assert_eq!(
        unix_get(&socket, "/v1/emulators/qemu-system-x86_64").json()["qemu"]["version"],
        version.as_str()
    );
    agent.stop();
}

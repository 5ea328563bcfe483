//! What a running VM's command line asks QEMU for, read back from its
//! arguments (`/proc/PID/cmdline`): what a restart would ask again. Pure
//! functions over the arguments; the agent reads them.
//!
//! Read: `-machine`/`-M` (its type, and `accel=`), `-accel`,
//! `-enable-kvm`, `-cpu` (the model and its explicit `+feat`, `-feat`,
//! `feat=on|off` flags), `-smp`, every `-device` in the legacy
//! `driver,key=val` form and the JSON form libvirt uses
//! (`-device {"driver":"virtio-blk-pci",...}`), `-name` (`guest=NAME,…`
//! or `NAME`) and `-uuid`. QEMU's option syntax is followed: `--opt` is
//! `-opt`, `,,` is a comma inside a value, a later `-machine` adds to an
//! earlier one. Options that take no value are known by name; any other
//! unknown option takes the next argument as its value unless that starts
//! with `-`, so a positional disk image or an option of a newer QEMU does
//! not derail the rest.
//!
//! What the line holds that cannot be seen from it (`-readconfig` files,
//! NICs made by `-nic`/`-net`) is said in [`VmArgs::unseen`], never
//! guessed. A line that cannot be read (an option qcapsd needs that is not
//! UTF-8, a `-device` JSON that is not an object, an option without its
//! value) is an [`ArgsError`] for that VM alone.

use std::borrow::Cow;

/// The most `-device` options read from one command line.
pub const MAX_DEVICES: usize = 4096;

/// Options that take no value (QEMU 10's `qemu-options.def`, and removed
/// ones older VMs may still run with).
const FLAGS: &[&str] = &[
    "-h",
    "-help",
    "-version",
    "-S",
    "-s",
    "-snapshot",
    "-usb",
    "-nographic",
    "-full-screen",
    "-win2k-hack",
    "-no-fd-bootchk",
    "-no-acpi",
    "-no-hpet",
    "-alt-grab",
    "-ctrl-grab",
    "-no-quit",
    "-portrait",
    "-sdl",
    "-curses",
    "-enable-kvm",
    "-no-kvm",
    "-no-kvm-irqchip",
    "-no-kvm-pit",
    "-no-kvm-pit-reinjection",
    "-xen-attach",
    "-xen-domid-restrict",
    "-no-reboot",
    "-no-shutdown",
    "-daemonize",
    "-only-migratable",
    "-nodefaults",
    "-nodefconfig",
    "-no-user-config",
    "-enable-sync-profile",
    "-perfmap",
    "-jitdump",
    "-preconfig",
    "-singlestep",
    "-enable-fips",
    "-semihosting",
    "-old-param",
    "-no-frame",
    "-mem-prealloc",
    "-rtc-td-hack",
    "-show-cursor",
    "-tdf",
    "-async-teardown",
];

/// What a VM's command line asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmArgs {
    /// `-name guest=NAME` or `-name NAME`.
    pub name: Option<String>,
    /// `-uuid`.
    pub uuid: Option<String>,
    /// The machine type (`-machine TYPE` or `type=TYPE`); `None`: QEMU's
    /// default.
    pub machine: Option<String>,
    /// The accelerators QEMU tries, in order.
    pub accels: Vec<String>,
    /// Whether `accels` is QEMU's default (the line names none).
    pub accel_default: bool,
    /// `-cpu`.
    pub cpu: Option<CpuArg>,
    /// The most vCPUs the VM can have (`maxcpus`, else `cpus`, else the
    /// topology's product); `None`: QEMU's default (1).
    pub cpus: Option<u64>,
    /// Each `-device`'s driver, in order.
    pub devices: Vec<String>,
    /// What the line holds that cannot be seen from it.
    pub unseen: Vec<String>,
}

/// `-cpu MODEL,flags…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuArg {
    pub model: String,
    /// The explicit feature flags, in order (properties that are not
    /// booleans, such as `level=13`, are not flags).
    pub flags: Vec<CpuFlag>,
    /// The whole value, as given.
    pub value: String,
}

/// One explicit CPU feature flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuFlag {
    pub name: String,
    pub on: bool,
}

/// Why a command line cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    #[error("{0} is not UTF-8")]
    NotUtf8(String),
    #[error("{0} has no value")]
    MissingValue(String),
    #[error("{option} {value}: {why}")]
    BadValue {
        option: String,
        value: String,
        why: String,
    },
    #[error("more than {MAX_DEVICES} -device options")]
    TooManyDevices,
}

/// `-opt` for `--opt` (QEMU takes both).
fn option(arg: &str) -> &str {
    match arg.strip_prefix("--") {
        Some(rest) if !rest.is_empty() => &arg[1..],
        _ => arg,
    }
}

/// A value echoed in an error: without control characters, bounded.
fn shown(s: &str) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).take(60).collect();
    if s.chars().count() > 60 {
        out.push('…');
    }
    out
}

/// QEMU's `key=value,…` list: `,,` is a comma inside an item.
pub fn keyval(value: &str) -> Vec<Cow<'_, str>> {
    let mut items = Vec::new();
    let bytes = value.as_bytes();
    let (mut start, mut i, mut escaped) = (0, 0, false);
    while i < bytes.len() {
        if bytes[i] == b',' {
            if bytes.get(i + 1) == Some(&b',') {
                escaped = true;
                i += 2;
                continue;
            }
            items.push(unescape(&value[start..i], escaped));
            start = i + 1;
            escaped = false;
        }
        i += 1;
    }
    items.push(unescape(&value[start..], escaped));
    items
}

fn unescape(item: &str, escaped: bool) -> Cow<'_, str> {
    if escaped {
        Cow::Owned(item.replace(",,", ","))
    } else {
        Cow::Borrowed(item)
    }
}

/// The value of the implied key (the first item, when it has no `=`) or of
/// `key=`, in a keyval list; the last one given wins.
fn implied<'a>(items: &'a [Cow<'a, str>], key: &str) -> Option<&'a str> {
    let mut found = None;
    for (i, item) in items.iter().enumerate() {
        match item.split_once('=') {
            Some((k, v)) if k == key => found = Some(v),
            None if i == 0 && !item.is_empty() => found = Some(item.as_ref()),
            _ => {}
        }
    }
    found
}

fn value_of<'a>(items: &'a [Cow<'a, str>], key: &str) -> Option<&'a str> {
    items
        .iter()
        .rev()
        .find_map(|i| i.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
}

fn bool_of(v: &str) -> Option<bool> {
    match v {
        "on" | "true" | "yes" => Some(true),
        "off" | "false" | "no" => Some(false),
        _ => None,
    }
}

/// Reads `args` (without `argv[0]`) of a QEMU started as `argv0`.
pub fn parse<A: AsRef<[u8]>>(argv0: &str, args: &[A]) -> Result<VmArgs, ArgsError> {
    let mut vm = VmArgs::default();
    let (mut accel_opts, mut machine_accel, mut enable_kvm) = (Vec::new(), None, false);
    let mut i = 0;
    while i < args.len() {
        let raw = args[i].as_ref();
        i += 1;
        let Ok(arg) = std::str::from_utf8(raw) else {
            continue; // a positional argument (an image path) or a value
        };
        if !arg.starts_with('-') || arg == "-" {
            continue;
        }
        let opt = option(arg);
        if FLAGS.contains(&opt) {
            enable_kvm |= opt == "-enable-kvm";
            continue;
        }
        let wanted = matches!(
            opt,
            "-machine" | "-M" | "-accel" | "-cpu" | "-smp" | "-device" | "-name" | "-uuid"
        );
        let value = match args.get(i).map(AsRef::as_ref) {
            Some(v) if wanted || !v.starts_with(b"-") || v == b"-" => {
                i += 1;
                v
            }
            _ if wanted => return Err(ArgsError::MissingValue(opt.to_owned())),
            _ => continue,
        };
        if !wanted {
            match opt {
                "-readconfig" => vm.unseen.push(format!(
                    "-readconfig {}: what that file configures is not read",
                    shown(&String::from_utf8_lossy(value))
                )),
                "-nic" | "-net" => vm.unseen.push(format!(
                    "{opt}: the NIC it makes is not checked (its -device is)"
                )),
                _ => {}
            }
            continue;
        }
        let value = std::str::from_utf8(value).map_err(|_| ArgsError::NotUtf8(opt.to_owned()))?;
        let bad = |why: &str| ArgsError::BadValue {
            option: opt.to_owned(),
            value: shown(value),
            why: why.to_owned(),
        };
        match opt {
            "-machine" | "-M" => {
                if value.starts_with('{') {
                    let v = json_object(value).map_err(|w| bad(&w))?;
                    if let Some(t) = v.get("type").and_then(|t| t.as_str()) {
                        vm.machine = Some(t.to_owned());
                    }
                    if let Some(a) = v.get("accel").and_then(|a| a.as_str()) {
                        machine_accel = Some(a.to_owned());
                    }
                } else {
                    let items = keyval(value);
                    if let Some(t) = implied(&items, "type") {
                        vm.machine = Some(t.to_owned());
                    }
                    if let Some(a) = value_of(&items, "accel") {
                        machine_accel = Some(a.to_owned());
                    }
                }
            }
            "-accel" => {
                let items = keyval(value);
                let name = implied(&items, "accel").ok_or_else(|| bad("no accelerator"))?;
                accel_opts.push(name.to_owned());
            }
            "-cpu" => vm.cpu = Some(cpu(value).ok_or_else(|| bad("no CPU model"))?),
            "-smp" => vm.cpus = smp(value).map_err(|w| bad(&w))?,
            "-device" => {
                if vm.devices.len() == MAX_DEVICES {
                    return Err(ArgsError::TooManyDevices);
                }
                let driver = if value.starts_with('{') {
                    let v = json_object(value).map_err(|w| bad(&w))?;
                    v.get("driver")
                        .and_then(|d| d.as_str())
                        .ok_or_else(|| bad("its JSON has no \"driver\" string"))?
                        .to_owned()
                } else {
                    let items = keyval(value);
                    implied(&items, "driver")
                        .ok_or_else(|| bad("no driver"))?
                        .to_owned()
                };
                if driver.is_empty() {
                    return Err(bad("an empty driver"));
                }
                vm.devices.push(driver);
            }
            "-name" => {
                let items = keyval(value);
                vm.name = implied(&items, "guest")
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned);
            }
            "-uuid" => vm.uuid = Some(value.to_owned()),
            _ => {}
        }
    }
    vm.accel_default = accel_opts.is_empty() && machine_accel.is_none() && !enable_kvm;
    vm.accels = if !accel_opts.is_empty() {
        accel_opts
    } else if let Some(a) = machine_accel {
        a.split(':')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    } else if enable_kvm {
        vec!["kvm".to_owned()]
    } else if argv0.ends_with("kvm") {
        // QEMU's own default: KVM first for a binary called *kvm.
        vec!["kvm".to_owned(), "tcg".to_owned()]
    } else {
        vec!["tcg".to_owned(), "kvm".to_owned()]
    };
    Ok(vm)
}

fn json_object(value: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_str::<serde_json::Value>(value) {
        Ok(serde_json::Value::Object(o)) => Ok(o),
        Ok(_) => Err("its JSON is not an object".to_owned()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

/// `-cpu MODEL,+feat,-feat,feat=on,prop=value…`.
fn cpu(value: &str) -> Option<CpuArg> {
    let items = keyval(value);
    let (model, rest) = items.split_first()?;
    if model.is_empty() || model.contains('=') {
        return None;
    }
    let flags = rest
        .iter()
        .filter_map(|item| {
            let (name, on) = if let Some(f) = item.strip_prefix('+') {
                (f, true)
            } else if let Some(f) = item.strip_prefix('-') {
                (f, false)
            } else if let Some((k, v)) = item.split_once('=') {
                (k, bool_of(v)?)
            } else {
                (item.as_ref(), true)
            };
            (!name.is_empty()).then(|| CpuFlag {
                name: name.to_owned(),
                on,
            })
        })
        .collect();
    Some(CpuArg {
        model: model.to_string(),
        flags,
        value: value.to_owned(),
    })
}

/// The most vCPUs of `-smp`: `maxcpus`, else `cpus`, else the product of
/// the topology given.
fn smp(value: &str) -> Result<Option<u64>, String> {
    let items = keyval(value);
    let number = |v: &str| {
        v.parse::<u64>()
            .map_err(|_| format!("'{}' is not a number", shown(v)))
    };
    let mut cpus = None;
    let mut max = None;
    let mut topology: Option<u64> = None;
    for (i, item) in items.iter().enumerate() {
        match item.split_once('=') {
            None if i == 0 && !item.is_empty() => cpus = Some(number(item)?),
            Some(("cpus", v)) => cpus = Some(number(v)?),
            Some(("maxcpus", v)) => max = Some(number(v)?),
            Some((
                "sockets" | "dies" | "clusters" | "cores" | "threads" | "books" | "drawers"
                | "modules",
                v,
            )) => {
                let n = number(v)?;
                topology = Some(topology.unwrap_or(1).saturating_mul(n));
            }
            _ => {}
        }
    }
    Ok(max.or(cpus).or(topology))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn words(s: &str) -> Vec<&str> {
        s.split_whitespace().collect()
    }

    fn vm(argv0: &str, s: &str) -> VmArgs {
        parse(argv0, &words(s)).unwrap()
    }

    /// A command line as libvirt 11 writes it (JSON devices, `-accel`,
    /// keyval machine with escaped commas in the name).
    #[test]
    fn a_libvirt_command_line_is_read() {
        let args = [
            "-name",
            "guest=web,,01,debug-threads=on",
            "-S",
            "-object",
            r#"{"qom-type":"secret","id":"masterKey0","format":"raw","file":"/var/lib/libvirt/qemu/domain-1-web/master-key.aes"}"#,
            "-machine",
            "pc-q35-10.0,usb=off,dump-guest-core=off,memory-backend=pc.ram,hpet=off,acpi=on",
            "-accel",
            "kvm",
            "-cpu",
            "Haswell-noTSX,vmx=on,-hle,+pdpe1gb,level=13,kvm=off",
            "-m",
            "size=1048576k",
            "-smp",
            "2,maxcpus=4,sockets=4,cores=1,threads=1",
            "-uuid",
            "c7a5fdbd-edaf-9455-926a-d65c16db1809",
            "-no-user-config",
            "-nodefaults",
            "-device",
            r#"{"driver":"pcie-root-port","port":16,"chassis":1,"id":"pci.1","bus":"pcie.0","multifunction":true,"addr":"0x2"}"#,
            "-blockdev",
            r#"{"driver":"file","filename":"/var/lib/libvirt/images/web.qcow2","node-name":"libvirt-1-storage"}"#,
            "-device",
            r#"{"driver":"virtio-blk-pci","bus":"pci.1","addr":"0x0","drive":"libvirt-1-format","id":"virtio-disk0","bootindex":1}"#,
            "-device",
            "virtio-net-pci,netdev=hostnet0,id=net0,mac=52:54:00:00:00:01",
            "-sandbox",
            "on,obsolete=deny",
            "-msg",
            "timestamp=on",
        ];
        let v = parse("/usr/bin/qemu-system-x86_64", &args).unwrap();
        assert_eq!(v.name.as_deref(), Some("web,01"));
        assert_eq!(
            v.uuid.as_deref(),
            Some("c7a5fdbd-edaf-9455-926a-d65c16db1809")
        );
        assert_eq!(v.machine.as_deref(), Some("pc-q35-10.0"));
        assert_eq!(v.accels, ["kvm"]);
        assert!(!v.accel_default);
        let cpu = v.cpu.unwrap();
        assert_eq!(cpu.model, "Haswell-noTSX");
        let flags: Vec<(&str, bool)> = cpu.flags.iter().map(|f| (f.name.as_str(), f.on)).collect();
        assert_eq!(
            flags,
            [
                ("vmx", true),
                ("hle", false),
                ("pdpe1gb", true),
                ("kvm", false)
            ]
        );
        assert_eq!(v.cpus, Some(4));
        assert_eq!(
            v.devices,
            ["pcie-root-port", "virtio-blk-pci", "virtio-net-pci"]
        );
        assert!(v.unseen.is_empty());
    }

    #[test]
    fn legacy_forms_and_qemu_defaults_are_read() {
        let v = vm(
            "qemu-system-x86_64",
            "--name web -M pc,accel=kvm:tcg -machine dump-guest-core=off disk.img -smp 3 -device driver=e1000,id=n -nographic -device virtio-rng-pci",
        );
        assert_eq!(v.name.as_deref(), Some("web"));
        assert_eq!(v.machine.as_deref(), Some("pc"), "a later -machine adds");
        assert_eq!(v.accels, ["kvm", "tcg"]);
        assert_eq!(v.cpus, Some(3));
        assert_eq!(v.cpu, None);
        assert_eq!(v.devices, ["e1000", "virtio-rng-pci"]);

        let v = vm("qemu-system-x86_64", "-enable-kvm -machine type=q35");
        assert_eq!(
            (v.machine.as_deref(), v.accels.as_slice()),
            (Some("q35"), &["kvm".to_owned()][..])
        );
        // No accelerator: QEMU's default, KVM first only for a *kvm binary.
        let v = vm("qemu-system-aarch64", "-M virt");
        assert!(v.accel_default);
        assert_eq!(v.accels, ["tcg", "kvm"]);
        assert_eq!(vm("/usr/bin/kvm", "").accels, ["kvm", "tcg"]);
        assert_eq!(vm("q", "-smp sockets=2,cores=4,threads=2").cpus, Some(16));
        assert_eq!(vm("q", "-smp cpus=2").cpus, Some(2));
        assert_eq!(
            vm("q", "-name guest=a,process=b").name.as_deref(),
            Some("a")
        );
        assert_eq!(vm("q", "-cpu host").cpu.unwrap().flags, []);
        // An unknown option takes its value; one before a flag does not
        // take the flag.
        let v = vm(
            "q",
            "-newopt x -device e1000 -newflag -device virtio-rng-pci",
        );
        assert_eq!(v.devices, ["e1000", "virtio-rng-pci"]);
        let v = vm("q", "-readconfig /etc/vm.cfg -nic user,model=virtio");
        assert_eq!(v.unseen.len(), 2, "{:?}", v.unseen);
    }

    #[test]
    fn unreadable_lines_are_errors_naming_the_option() {
        let says = |args: &[&[u8]], what: &str| {
            let e = parse("q", args).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        };
        says(&[b"-device", b"{\"driver\":[1]}"], "no \"driver\"");
        says(&[b"-device", b"{\"bus\":\"pci.0\"}"], "no \"driver\"");
        says(&[b"-device", b"{oops"], "not JSON");
        says(&[b"-device", b"id=x"], "no driver");
        says(&[b"-machine"], "no value");
        says(&[b"-cpu", b"\xff\xfe"], "not UTF-8");
        says(&[b"-smp", b"four"], "not a number");
        says(&[b"-cpu", b",+x"], "no CPU model");
        // What qcapsd does not need may be anything.
        assert!(parse("q", &[&b"/img/\xff.qcow2"[..], b"-m", b"\xff"]).is_ok());
        // QEMU takes only a value starting with `{` for JSON: anything
        // else is a driver name, which the check then refuses.
        assert_eq!(vm("q", "-device [1,2]").devices, ["[1"]);
        let many: Vec<&str> = std::iter::repeat_n(["-device", "e1000"], MAX_DEVICES + 1)
            .flatten()
            .collect();
        assert_eq!(parse("q", &many).unwrap_err(), ArgsError::TooManyDevices);
        let thousand: Vec<&str> = std::iter::repeat_n(["-device", "e1000"], 1000)
            .flatten()
            .collect();
        assert_eq!(parse("q", &thousand).unwrap().devices.len(), 1000);
    }

    #[test]
    fn keyval_takes_doubled_commas_as_commas() {
        assert_eq!(keyval("a,,b,c=d,,e,"), ["a,b", "c=d,e", ""]);
        assert_eq!(keyval(""), [""]);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..Default::default() })]
        /// Any argument list, of options qcapsd reads and bytes of any
        /// kind, gives a verdict or a reason: never a panic.
        #[test]
        fn any_command_line_parses_or_says_why(
            args in proptest::collection::vec(
                prop_oneof![
                    proptest::sample::select(vec![
                        "-device", "-machine", "-M", "-cpu", "-smp", "-name", "-uuid",
                        "-accel", "-enable-kvm", "-S", "{", "driver=", ",", "=",
                    ]).prop_map(|s| s.as_bytes().to_vec()),
                    proptest::collection::vec(any::<u8>(), 0..40),
                    "[-{}a-z0-9=,:+\"]{0,40}".prop_map(String::into_bytes),
                ],
                0..24,
            )
        ) {
            if let Ok(v) = parse::<Vec<u8>>("qemu-system-x86_64", &args) {
                prop_assert!(v.devices.len() <= MAX_DEVICES);
            }
        }
    }
}

//! The accelerators qcapsd probes and checks VMs under.

/// Which accelerator QEMU is asked for.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM where it works, TCG otherwise (`accel=kvm:tcg`).
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl Accel {
    /// The `-machine` of a probe under this accelerator.
    pub fn machine_arg(self) -> &'static str {
        match self {
            Accel::Auto => "none,accel=kvm:tcg",
            Accel::Kvm => "none,accel=kvm",
            Accel::Tcg => "none,accel=tcg",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// `kvm` or `tcg`: an accelerator a VM runs under (not `auto`).
    pub fn concrete(name: &str) -> Result<Accel, UnknownAccel> {
        match name.parse()? {
            Accel::Auto => Err(UnknownAccel(name.to_owned())),
            a => Ok(a),
        }
    }
}

/// A name that is not an accelerator qcapsd knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown accelerator '{}': use kvm or tcg", .0.escape_debug())]
pub struct UnknownAccel(pub String);

impl std::str::FromStr for Accel {
    type Err = UnknownAccel;
    fn from_str(s: &str) -> Result<Accel, UnknownAccel> {
        match s {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            _ => Err(UnknownAccel(s.to_owned())),
        }
    }
}

//! Small leaf helpers with no knowledge of QEMU or the agent: a content
//! hash that is stable across builds, RFC 3339 timestamps, base64, atomic
//! file replacement, the shim directory's layout and node-feature-discovery's
//! label rules.

pub mod base64;
pub mod digest;
pub mod files;
pub mod nfd;
pub mod shim_dir;
pub mod timefmt;

/// Declares a fieldless enum whose variants each carry a fixed label — a
/// metric label value, which is also the variant's serde name — listing
/// every variant once: the enum, `ALL` (every variant, in order) and
/// `as_str` come from the one list. The enum must derive serde's
/// `Serialize`/`Deserialize` (each variant gets `#[serde(rename)]`).
macro_rules! labelled {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $label:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $( $(#[$vmeta])* #[serde(rename = $label)] $variant ),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The label (also the serde name).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $label),+
                }
            }
        }
    };
}
pub(crate) use labelled;

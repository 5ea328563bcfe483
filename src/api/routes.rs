//! The route table: every route of the API once — its method, its
//! template and the listeners that serve it. The routers
//! ([`crate::api::router`] and the others), the OpenAPI description
//! ([`crate::api::openapi`]), the request metrics, the client, the CLI and
//! the shim all derive from it; each of them matches on [`Id`]
//! exhaustively, so a route added here cannot be left out of one.

/// The HTTP methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Post => "post",
        }
    }
}

/// Which listener serves a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    /// The query API (`listen`, `unix_socket`).
    Query,
    /// The socket in the shim directory, which any caller of a shim may
    /// reach: only the shims' route and liveness.
    Shims,
    /// `metrics_listen`: metrics and health only.
    Metrics,
}

/// One route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub id: Id,
    pub method: Method,
    /// The template, axum's syntax (`{name}`).
    pub path: &'static str,
    pub on: &'static [On],
}

/// Declares [`Id`] and [`ROUTES`] from one list: each route's name,
/// method, template and listeners.
macro_rules! routes {
    ($( $(#[$m:meta])* $id:ident = $method:ident $path:literal on [$($on:ident),+] ),+ $(,)?) => {
        /// A route.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Id {
            $( $(#[$m])* $id ),+
        }

        /// Every route, in the order the index page and OpenAPI list them.
        pub const ROUTES: &[Route] = &[
            $( Route {
                id: Id::$id,
                method: Method::$method,
                path: $path,
                on: &[$(On::$on),+],
            } ),+
        ];
    };
}

routes! {
    Index = Get "/" on [Query],
    Emulators = Get "/v1/emulators" on [Query],
    Emulator = Get "/v1/emulators/{name}" on [Query],
    Machines = Get "/v1/emulators/{name}/machines" on [Query],
    CpuModels = Get "/v1/emulators/{name}/cpu-models" on [Query],
    Devices = Get "/v1/emulators/{name}/devices" on [Query],
    Device = Get "/v1/emulators/{name}/devices/{device}" on [Query],
    Commands = Get "/v1/emulators/{name}/commands" on [Query],
    Revalidate = Post "/v1/emulators/{name}/revalidate" on [Query],
    Changes = Get "/v1/emulators/{name}/changes" on [Query],
    /// What the shims ask: also on the shims' socket.
    Help = Get "/v1/emulators/{name}/help" on [Query, Shims],
    AllChanges = Get "/v1/changes" on [Query],
    Check = Get "/v1/check" on [Query],
    Vms = Get "/v1/vms" on [Query],
    /// The one route whose body is a document.
    VmsAgainst = Post "/v1/vms/against" on [Query],
    Host = Get "/v1/host" on [Query],
    OpenApi = Get "/v1/openapi.json" on [Query],
    Healthz = Get "/healthz" on [Query, Shims, Metrics],
    Readyz = Get "/readyz" on [Query, Metrics],
    Metrics = Get "/metrics" on [Query, Metrics],
}

impl Id {
    /// Its entry in [`ROUTES`] (the macro gives every Id one).
    pub fn route(self) -> &'static Route {
        &ROUTES[self as usize]
    }

    /// Its template.
    pub fn template(self) -> &'static str {
        self.route().path
    }

    /// Its path with `params` in place of its `{…}` parameters, in order,
    /// each percent-encoded (a name may hold `/`).
    pub fn path(self, params: &[&str]) -> String {
        let mut out = String::new();
        let mut params = params.iter();
        for (i, piece) in self.template().split('{').enumerate() {
            if i == 0 {
                out.push_str(piece);
                continue;
            }
            let rest = piece.split_once('}').map_or("", |(_, r)| r);
            out.push_str(&percent_encode(params.next().copied().unwrap_or("")));
            out.push_str(rest);
        }
        out
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986), for
/// a path segment or a query value.
pub fn percent_encode(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_id_has_one_route_and_paths_fill_in() {
        for r in ROUTES {
            assert_eq!(r.id.route(), r);
        }
        assert_eq!(
            Id::Device.path(&["x86_64", "a/b c"]),
            "/v1/emulators/x86_64/devices/a%2Fb%20c"
        );
        assert_eq!(Id::Vms.path(&[]), "/v1/vms");
        assert_eq!(Id::Help.path(&["x"]), "/v1/emulators/x/help");
    }
}

//! Query strings, strictly: percent-decoded into UTF-8 `(name, value)`
//! pairs in order, with a bound on their size. Handlers take what they
//! know and refuse the rest, so a typo is a 400, never silently ignored.

use std::fmt::Write as _;

/// The most bytes of query string a request may carry.
pub const MAX_QUERY_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    #[error("query string over {MAX_QUERY_BYTES} bytes")]
    TooLong,
    #[error("bad percent-encoding in the query string")]
    BadEscape,
    #[error("the query string is not UTF-8")]
    NotUtf8,
    #[error("unknown parameter '{0}' (allowed: {1})")]
    Unknown(String, &'static str),
    #[error("parameter '{0}' given more than once")]
    Repeated(String),
    #[error("{0}: {1}")]
    BadValue(&'static str, String),
}

/// The pairs of a raw query string (`None`: no `?`).
pub fn parse(raw: Option<&str>) -> Result<Vec<(String, String)>, QueryError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    if raw.len() > MAX_QUERY_BYTES {
        return Err(QueryError::TooLong);
    }
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

fn decode(s: &str) -> Result<String, QueryError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3).ok_or(QueryError::BadEscape)?;
                let hex = std::str::from_utf8(hex).map_err(|_| QueryError::BadEscape)?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| QueryError::BadEscape)?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| QueryError::NotUtf8)
}

/// The pairs, each name among `allowed` (a `|`-separated list for the
/// message) and, unless `repeatable` says so, at most once.
pub fn only<'a>(
    pairs: &'a [(String, String)],
    allowed: &'static str,
    repeatable: &[&str],
) -> Result<&'a [(String, String)], QueryError> {
    for (i, (k, _)) in pairs.iter().enumerate() {
        if !allowed.split('|').any(|a| a == k) {
            let mut shown = String::new();
            let _ = write!(shown, "{}", k.chars().take(40).collect::<String>());
            return Err(QueryError::Unknown(shown, allowed));
        }
        if !repeatable.contains(&k.as_str()) && pairs[..i].iter().any(|(p, _)| p == k) {
            return Err(QueryError::Repeated(k.clone()));
        }
    }
    Ok(pairs)
}

/// The value of `name`, if given.
pub fn value<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A yes/no parameter: `true` or `false` (absent: `false`).
pub fn flag(pairs: &[(String, String)], key: &'static str) -> Result<bool, QueryError> {
    match value(pairs, key) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(v) => Err(QueryError::BadValue(
            key,
            format!(
                "'{}' is not true or false",
                v.chars()
                    .filter(|c| !c.is_control())
                    .take(40)
                    .collect::<String>()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_pairs_in_order() {
        let p = parse(Some("device=virtio-blk-pci&device=a%2Fb&cpus=4&x")).unwrap();
        assert_eq!(
            p,
            [
                ("device".into(), "virtio-blk-pci".into()),
                ("device".into(), "a/b".into()),
                ("cpus".into(), "4".into()),
                ("x".into(), String::new()),
            ]
        );
        assert_eq!(parse(None).unwrap(), []);
        assert_eq!(parse(Some("a=%C3%A9")).unwrap()[0].1, "é");
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert_eq!(parse(Some("a=%FF")), Err(QueryError::NotUtf8));
        assert_eq!(parse(Some("a=%2")), Err(QueryError::BadEscape));
        assert_eq!(parse(Some("a=%zz")), Err(QueryError::BadEscape));
        assert_eq!(parse(Some(&"a".repeat(5000))), Err(QueryError::TooLong));
    }

    #[test]
    fn only_known_names_and_repeats_where_allowed() {
        let p = parse(Some("device=a&device=b&cpus=1")).unwrap();
        assert!(only(&p, "device|cpus", &["device"]).is_ok());
        assert_eq!(
            only(&p, "device|cpus", &[]),
            Err(QueryError::Repeated("device".into()))
        );
        assert!(matches!(
            only(&p, "cpus", &[]),
            Err(QueryError::Unknown(..))
        ));
    }
}

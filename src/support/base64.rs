//! Standard base64 (RFC 4648, with padding): QEMU's output carried byte for
//! byte inside JSON (the shim's answers, the memo's files).

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// `bytes` as base64 text. (Written into a buffer of the final size, by
/// index: no copy call per group, which musl's memcpy makes costly.)
pub fn encode(bytes: &[u8]) -> String {
    let mut out = vec![b'='; bytes.len().div_ceil(3) * 4];
    let sextet = |n: u32, shift: u32| ALPHABET[(n >> shift & 63) as usize];
    for (c, o) in bytes.chunks(3).zip(out.chunks_exact_mut(4)) {
        let b = |i: usize| u32::from(c.get(i).copied().unwrap_or(0));
        let n = b(0) << 16 | b(1) << 8 | b(2);
        o[0] = sextet(n, 18);
        o[1] = sextet(n, 12);
        if c.len() > 1 {
            o[2] = sextet(n, 6);
        }
        if c.len() > 2 {
            o[3] = sextet(n, 0);
        }
    }
    // The alphabet and '=' are ASCII.
    String::from_utf8(out).unwrap_or_default()
}

/// Text that is not base64.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not base64 (at byte {0})")]
pub struct NotBase64(pub usize);

/// Each byte's value in the alphabet, 255 for bytes outside it.
const VALUES: [u8; 256] = {
    let mut t = [255u8; 256];
    let mut i = 0;
    while i < 64 {
        t[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    t
};

fn value(c: u8) -> Option<u32> {
    match VALUES[c as usize] {
        255 => None,
        v => Some(u32::from(v)),
    }
}

/// The bytes `text` encodes (padding required, no whitespace).
pub fn decode(text: &str) -> Result<Vec<u8>, NotBase64> {
    let t = text.as_bytes();
    if t.len() % 4 != 0 {
        return Err(NotBase64(t.len()));
    }
    let pad = t.iter().rev().take_while(|&&c| c == b'=').count();
    if pad > 2 {
        return Err(NotBase64(t.len() - pad));
    }
    let mut out = vec![0u8; t.len() / 4 * 3];
    for (k, (quad, o)) in t.chunks_exact(4).zip(out.chunks_exact_mut(3)).enumerate() {
        let last = (k + 1) * 4 == t.len();
        let mut n = 0u32;
        for (i, &c) in quad.iter().enumerate() {
            let v = if last && i >= 4 - pad {
                0
            } else {
                value(c).ok_or(NotBase64(k * 4 + i))?
            };
            n = n << 6 | v;
        }
        o[0] = (n >> 16) as u8;
        o[1] = (n >> 8) as u8;
        o[2] = n as u8;
    }
    out.truncate(out.len() - pad);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_4648_vectors() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode(plain.as_bytes()), coded);
            assert_eq!(decode(coded).unwrap(), plain.as_bytes());
        }
    }

    #[test]
    fn every_byte_round_trips_and_garbage_is_refused() {
        let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        for n in 0..all.len() {
            assert_eq!(decode(&encode(&all[..n])).unwrap(), &all[..n]);
        }
        for bad in ["Zg=", "Zg==Zg==", "Z===", "Zm9v!A==", "Zm 9", "===="] {
            assert!(decode(bad).is_err(), "{bad}");
        }
    }
}

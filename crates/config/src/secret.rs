//! [`Secret`]: a string that never shows itself in Debug, Display or serialized output;
//! [`KeyDigest`]: what the configuration keeps of a bearer token instead of the token.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A provider API key or tenant key. Its `Debug` and `Display` print `*****`;
/// read the value only where it is sent, with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("*****")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("*****")
    }
}

/// The SHA-256 digest of a bearer token (a tenant key, the admin key): all the
/// configuration keeps of it. Written in the file as the token itself (`key`, hashed at
/// load) or as its digest (`key_sha256`, 64 hex digits, so the file never holds the key).
///
/// A presented token is hashed once and compared with [`KeyDigest::matches`], in
/// constant time, so the time taken tells nothing about how much of a key was right.
///
/// ```
/// use sluice_config::KeyDigest;
/// let stored = KeyDigest::from_hex(
///     "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", // sha256("test")
/// ).unwrap();
/// assert!(stored.matches(&KeyDigest::of("test")));
/// assert!(!stored.matches(&KeyDigest::of("tess")));
/// ```
#[derive(Clone)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    /// The digest of `key`.
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// A digest written as 64 hexadecimal digits (either case); `None` otherwise.
    pub fn from_hex(hex: &str) -> Option<Self> {
        let hex = hex.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
            let digit = |c: u8| char::from(c).to_digit(16);
            *byte = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
        }
        Some(Self(out))
    }

    /// The digest as 64 lowercase hexadecimal digits (what `key_sha256` holds; not the
    /// key, which cannot be recovered from it).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// True when both digests are the same, compared in constant time.
    pub fn matches(&self, other: &KeyDigest) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyDigest(*****)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_parse_from_hex_and_compare() {
        let d = KeyDigest::of("tenant-key-1");
        let hex: String = d.0.iter().map(|b| format!("{b:02x}")).collect();
        assert!(KeyDigest::from_hex(&hex).unwrap().matches(&d));
        assert!(
            KeyDigest::from_hex(&hex.to_uppercase())
                .unwrap()
                .matches(&d)
        );
        assert!(!KeyDigest::of("tenant-key-2").matches(&d));
        for bad in [
            "",
            "abc",
            &hex[1..],
            &format!("{}g", &hex[1..]),
            &format!("{hex}0"),
        ] {
            assert!(KeyDigest::from_hex(bad).is_none(), "{bad}");
        }
        assert_eq!(format!("{d:?}"), "KeyDigest(*****)");
    }

    #[test]
    fn never_prints_itself() {
        let s = Secret::new("sk-live-123");
        assert_eq!(format!("{s} {s:?}"), "***** *****");
        assert_eq!(s.expose(), "sk-live-123");
    }
}

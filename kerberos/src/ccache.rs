//! The default principal of a FILE ticket cache, read from the file.
//!
//! `idbridge login` needs the principal on every kubectl run, only to pick the cached session
//! (so another `kinit` never reuses it); asking GSS-API costs about 2 ms of library start-up,
//! a third of the whole run. A FILE cache (MIT's format, versions 3 and 4, as `kinit` writes it)
//! is read directly instead: its header names the default principal, and a ticket counts as
//! held while one credential in it has not expired; the principal of an expired cache is known
//! too, so a session it started can still be refreshed. Any other cache type, or a file that
//! does not parse, goes through GSS-API as before. The login itself always goes through GSS-API.

use std::path::PathBuf;

use crate::wire::{Reader, unparse};

/// What the cache file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FileCache {
    /// The default principal, with a credential still valid.
    Principal(String),
    /// The file does not exist, or holds no credential.
    NoTicket(String),
    /// Every credential of this principal in it has expired.
    Expired(String),
    /// Not a FILE cache, or not one this parser reads: ask GSS-API.
    Unknown,
}

/// The FILE cache `KRB5CCNAME` names, if it names one.
fn file_cache() -> Option<PathBuf> {
    let name = std::env::var("KRB5CCNAME").ok()?;
    match name.split_once(':') {
        Some(("FILE", path)) => Some(PathBuf::from(path)),
        // A cache type (KCM:, KEYRING:, DIR:, MEMORY:, ...): not a file read here.
        Some((kind, _)) if !kind.contains('/') => None,
        _ => Some(PathBuf::from(name)),
    }
}

/// Reads the cache `KRB5CCNAME` names, when it is a FILE cache.
pub(crate) fn read(now_unix: u64) -> FileCache {
    let Some(path) = file_cache() else {
        return FileCache::Unknown;
    };
    match std::fs::read(&path) {
        Ok(bytes) => parse(&bytes, now_unix),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            FileCache::NoTicket(format!("{} does not exist", path.display()))
        }
        Err(_) => FileCache::Unknown,
    }
}

/// The ticket cache's own reads: a principal.
trait CacheReads {
    fn principal(&mut self) -> Option<(String, Vec<String>)>;
}

impl CacheReads for Reader<'_> {
    /// A principal: name type, component count, realm, components.
    fn principal(&mut self) -> Option<(String, Vec<String>)> {
        self.u32()?;
        let count = self.u32()?;
        if count > 64 {
            return None;
        }
        let realm = String::from_utf8(self.data()?.to_vec()).ok()?;
        let mut parts = Vec::new();
        for _ in 0..count {
            parts.push(String::from_utf8(self.data()?.to_vec()).ok()?);
        }
        Some((realm, parts))
    }
}

fn parse(bytes: &[u8], now_unix: u64) -> FileCache {
    parse_inner(bytes, now_unix).unwrap_or(FileCache::Unknown)
}

fn parse_inner(bytes: &[u8], now_unix: u64) -> Option<FileCache> {
    let mut r = Reader(bytes);
    let version = r.u16()?;
    match version {
        0x0504 => {
            let header = usize::from(r.u16()?);
            r.take(header)?;
        }
        0x0503 => {}
        // Versions 1 and 2 are in the host's byte order: leave them to GSS-API.
        _ => return None,
    }
    let (realm, parts) = r.principal()?;
    let principal = unparse(&realm, &parts);
    // The credentials: is one of them (not a configuration entry) still valid?
    let mut saw_one = false;
    while !r.0.is_empty() {
        r.principal()?;
        let (server_realm, _) = r.principal()?;
        r.u16()?; // key type
        if version == 0x0503 {
            r.u16()?; // version 3 writes the key type twice
        }
        r.data()?; // key
        r.u32()?; // auth time
        r.u32()?; // start time
        let end = u64::from(r.u32()?);
        r.u32()?; // renew till
        r.take(1)?; // is_skey
        r.u32()?; // flags
        for _ in 0..r.u32()? {
            r.u16()?;
            r.data()?;
        } // addresses
        for _ in 0..r.u32()? {
            r.u16()?;
            r.data()?;
        } // authorization data
        r.data()?; // ticket
        r.data()?; // second ticket
        if server_realm != "X-CACHECONF:" {
            if end > now_unix {
                return Some(FileCache::Principal(principal));
            }
            saw_one = true;
        }
    }
    Some(if saw_one {
        FileCache::Expired(principal)
    } else {
        FileCache::NoTicket(format!("the cache of {principal} holds no ticket"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(out: &mut Vec<u8>, d: &[u8]) {
        out.extend_from_slice(&u32::try_from(d.len()).unwrap().to_be_bytes());
        out.extend_from_slice(d);
    }

    fn principal(out: &mut Vec<u8>, realm: &str, parts: &[&str]) {
        out.extend_from_slice(&1u32.to_be_bytes());
        out.extend_from_slice(&u32::try_from(parts.len()).unwrap().to_be_bytes());
        data(out, realm.as_bytes());
        for p in parts {
            data(out, p.as_bytes());
        }
    }

    fn cred(out: &mut Vec<u8>, v3: bool, server_realm: &str, end: u32) {
        principal(out, "EXAMPLE.COM", &["alice"]);
        principal(out, server_realm, &["krbtgt", "EXAMPLE.COM"]);
        out.extend_from_slice(&18u16.to_be_bytes());
        if v3 {
            out.extend_from_slice(&18u16.to_be_bytes());
        }
        data(out, &[7; 32]);
        for t in [1u32, 1, end, end] {
            out.extend_from_slice(&t.to_be_bytes());
        }
        out.push(0);
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        data(out, b"ticket");
        data(out, b"");
    }

    fn cache(creds: &[(&str, u32)]) -> Vec<u8> {
        let mut out = vec![0x05, 0x04, 0, 12, 0, 1, 0, 8];
        out.extend_from_slice(&[0; 8]);
        principal(&mut out, "EXAMPLE.COM", &["alice", "admin"]);
        for (realm, end) in creds {
            cred(&mut out, false, realm, *end);
        }
        out
    }

    fn cache_v3(creds: &[(&str, u32)]) -> Vec<u8> {
        let mut out = vec![0x05, 0x03];
        principal(&mut out, "EXAMPLE.COM", &["alice", "admin"]);
        for (realm, end) in creds {
            cred(&mut out, true, realm, *end);
        }
        out
    }

    #[test]
    fn the_default_principal_of_a_cache_with_a_valid_ticket() {
        let c = cache(&[("X-CACHECONF:", 5000), ("EXAMPLE.COM", 2000)]);
        assert_eq!(
            parse(&c, 1000),
            FileCache::Principal("alice/admin@EXAMPLE.COM".into())
        );
    }

    #[test]
    fn version_3_writes_the_key_type_twice() {
        let c = cache_v3(&[("EXAMPLE.COM", 900), ("EXAMPLE.COM", 2000)]);
        assert_eq!(
            parse(&c, 1000),
            FileCache::Principal("alice/admin@EXAMPLE.COM".into())
        );
        assert_eq!(
            parse(&cache_v3(&[("EXAMPLE.COM", 900)]), 1000),
            FileCache::Expired("alice/admin@EXAMPLE.COM".into())
        );
    }

    #[test]
    fn expired_or_no_credentials_are_no_ticket() {
        assert_eq!(
            parse(
                &cache(&[("EXAMPLE.COM", 900), ("X-CACHECONF:", 5000)]),
                1000
            ),
            FileCache::Expired("alice/admin@EXAMPLE.COM".into())
        );
        assert!(matches!(parse(&cache(&[]), 1000), FileCache::NoTicket(_)));
    }

    #[test]
    fn anything_else_is_left_to_gss_api() {
        let c = cache(&[("EXAMPLE.COM", 2000)]);
        for cut in [0, 1, 3, 10, 30, c.len() - 1] {
            assert_eq!(parse(&c[..cut], 1000), FileCache::Unknown, "cut at {cut}");
        }
        let mut v2 = c.clone();
        v2[1] = 2;
        assert_eq!(parse(&v2, 1000), FileCache::Unknown);
    }

    #[test]
    fn names_are_written_as_krb5_writes_them() {
        assert_eq!(unparse("R", &["a/b".into(), "c@d".into()]), "a\\/b/c\\@d@R");
    }
}

//! MIT keytab files, read and written by idbridge's own code (format version 0x502, the one
//! MIT Kerberos and Heimdal write; the old native-endian 0x501 is refused by name).
//!
//! A keytab is the version, then records: a signed 32-bit length (negative: a hole of that
//! size, left by a deleted entry), then the entry: the component count (the realm not counted),
//! the realm and each component as 16-bit-counted bytes, the name type, a timestamp, an 8-bit
//! key version, the key (16-bit enctype, 16-bit-counted contents) and, when the record has room,
//! the 32-bit key version that replaces the 8-bit one. All integers are big-endian.
//!
//! Keys are secrets: an entry's `Debug` never shows its key, and the key's bytes are zeroed when
//! the entry is dropped.

use crate::wire::{Reader, unparse};

/// The format version this module reads and writes.
const VERSION: u16 = 0x0502;

/// One key of one principal.
#[derive(Clone, PartialEq, Eq)]
pub struct KeytabEntry {
    /// The realm.
    pub realm: String,
    /// The name's components (`HTTP`, `web.example.com`).
    pub components: Vec<String>,
    /// The name type (1: principal, 3: service with host).
    pub name_type: u32,
    /// When the key was written (Unix seconds).
    pub timestamp: u32,
    /// The key version number.
    pub kvno: u32,
    /// The encryption type (17: aes128-cts-hmac-sha1-96, 18: aes256-cts-hmac-sha1-96, …).
    pub enctype: u16,
    key: Vec<u8>,
}

impl KeytabEntry {
    /// An entry for `realm` and `components` holding `key`.
    #[must_use]
    pub fn new(
        realm: &str,
        components: &[&str],
        name_type: u32,
        kvno: u32,
        enctype: u16,
        key: Vec<u8>,
        timestamp: u32,
    ) -> Self {
        Self {
            realm: realm.to_owned(),
            components: components.iter().map(|c| (*c).to_owned()).collect(),
            name_type,
            timestamp,
            kvno,
            enctype,
            key,
        }
    }

    /// The principal as Kerberos writes it (`HTTP/web.example.com@EXAMPLE.COM`).
    #[must_use]
    pub fn principal(&self) -> String {
        unparse(&self.realm, &self.components)
    }

    /// The key's bytes.
    #[must_use]
    pub fn key(&self) -> &[u8] {
        &self.key
    }
}

impl std::fmt::Debug for KeytabEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeytabEntry")
            .field("principal", &self.principal())
            .field("name_type", &self.name_type)
            .field("timestamp", &self.timestamp)
            .field("kvno", &self.kvno)
            .field("enctype", &self.enctype)
            .field("key", &format_args!("<{} bytes>", self.key.len()))
            .finish()
    }
}

impl Drop for KeytabEntry {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

/// Why bytes are not a keytab this module reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeytabError {
    /// Too short for a version, or the version is not 0x502.
    #[error("not a keytab this idbridge reads: {0}")]
    Version(String),
    /// A record is cut short or does not hold an entry.
    #[error("the keytab's record {record} (at byte {offset}) is damaged: {why}")]
    Damaged {
        /// The record's number, from 1.
        record: usize,
        /// Where it starts.
        offset: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// An entry cannot be written (a name or key longer than the format holds).
    #[error("cannot write {0} in a keytab: {1}")]
    TooLong(String, &'static str),
}

/// The entries of a keytab file's bytes, in file order (holes skipped).
///
/// # Errors
/// [`KeytabError`], naming the record at fault.
pub fn parse(bytes: &[u8]) -> Result<Vec<KeytabEntry>, KeytabError> {
    let mut r = Reader(bytes);
    match r.u16() {
        Some(VERSION) => {}
        Some(0x0501) => {
            return Err(KeytabError::Version(
                "version 0x501 (the old native-endian format); rewrite it with ktutil".into(),
            ));
        }
        Some(v) => return Err(KeytabError::Version(format!("version {v:#06x}"))),
        None => return Err(KeytabError::Version("shorter than its version".into())),
    }
    let mut out = Vec::new();
    let mut record = 0;
    while !r.0.is_empty() {
        record += 1;
        let offset = bytes.len() - r.0.len();
        let damaged = |why| KeytabError::Damaged {
            record,
            offset,
            why,
        };
        let len = r
            .u32()
            .map(|l| i32::from_be_bytes(l.to_be_bytes()))
            .ok_or_else(|| damaged("its length is cut short"))?;
        let size = usize::try_from(len.unsigned_abs()).map_err(|_| damaged("its length"))?;
        let body = r
            .take(size)
            .ok_or_else(|| damaged("it is longer than the file"))?;
        if len <= 0 {
            continue; // a hole
        }
        out.push(entry(body).ok_or_else(|| damaged("its entry does not parse"))?);
    }
    Ok(out)
}

fn entry(body: &[u8]) -> Option<KeytabEntry> {
    let mut r = Reader(body);
    let count = r.u16()?;
    if count > 64 {
        return None;
    }
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).ok();
    let realm = text(r.data16()?)?;
    let mut components = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        components.push(text(r.data16()?)?);
    }
    let name_type = r.u32()?;
    let timestamp = r.u32()?;
    let vno8 = r.u8()?;
    let enctype = r.u16()?;
    let key = r.data16()?.to_vec();
    // The 32-bit key version, when the record has room for it and it is set.
    let kvno = match r.u32() {
        Some(v) if v != 0 => v,
        _ => u32::from(vno8),
    };
    Some(KeytabEntry {
        realm,
        components,
        name_type,
        timestamp,
        kvno,
        enctype,
        key,
    })
}

fn counted(out: &mut Vec<u8>, b: &[u8], what: &str) -> Result<(), KeytabError> {
    let n = u16::try_from(b.len())
        .map_err(|_| KeytabError::TooLong(what.to_owned(), "longer than 65535 bytes"))?;
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(b);
    Ok(())
}

/// A keytab file's bytes holding `entries`, in order.
///
/// # Errors
/// [`KeytabError::TooLong`] for a name part or key the format cannot hold.
pub fn to_bytes(entries: &[KeytabEntry]) -> Result<Vec<u8>, KeytabError> {
    let mut out = VERSION.to_be_bytes().to_vec();
    for e in entries {
        let who = e.principal();
        let mut body = Vec::new();
        let count = u16::try_from(e.components.len())
            .map_err(|_| KeytabError::TooLong(who.clone(), "too many name components"))?;
        body.extend_from_slice(&count.to_be_bytes());
        counted(&mut body, e.realm.as_bytes(), &who)?;
        for c in &e.components {
            counted(&mut body, c.as_bytes(), &who)?;
        }
        body.extend_from_slice(&e.name_type.to_be_bytes());
        body.extend_from_slice(&e.timestamp.to_be_bytes());
        // The 8-bit version as MIT writes it (its low byte); the 32-bit one after the key.
        body.push(e.kvno.to_be_bytes()[3]);
        body.extend_from_slice(&e.enctype.to_be_bytes());
        counted(&mut body, &e.key, &who)?;
        body.extend_from_slice(&e.kvno.to_be_bytes());
        let len = i32::try_from(body.len())
            .map_err(|_| KeytabError::TooLong(who, "an entry over 2 GiB"))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&body);
        // The body held a copy of the key: zero it.
        zeroize::Zeroize::zeroize(&mut body);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<KeytabEntry> {
        vec![
            KeytabEntry::new(
                "EXAMPLE.COM",
                &["HTTP", "web.example.com"],
                3,
                2,
                18,
                vec![7; 32],
                1_700_000_000,
            ),
            KeytabEntry::new(
                "EXAMPLE.COM",
                &["svc"],
                1,
                300,
                17,
                vec![9; 16],
                1_700_000_001,
            ),
        ]
    }

    #[test]
    fn entries_round_trip_with_32_bit_versions() {
        let bytes = to_bytes(&sample()).unwrap();
        assert_eq!(&bytes[..2], &[5, 2]);
        let back = parse(&bytes).unwrap();
        assert_eq!(back, sample());
        assert_eq!(back[0].principal(), "HTTP/web.example.com@EXAMPLE.COM");
        assert_eq!(back[1].kvno, 300, "beyond the 8-bit version");
    }

    #[test]
    fn holes_are_skipped_and_an_old_record_without_a_32_bit_version_reads_its_8_bit_one() {
        let mut bytes = to_bytes(&sample()[..1]).unwrap();
        // A hole of 10 bytes, as a deleted entry leaves.
        bytes.extend_from_slice(&(-10i32).to_be_bytes());
        bytes.extend_from_slice(&[0; 10]);
        // An entry without the trailing 32-bit version.
        let mut old = to_bytes(&sample()[1..]).unwrap()[2..].to_vec();
        old.truncate(old.len() - 4);
        let len = i32::from_be_bytes([old[0], old[1], old[2], old[3]]) - 4;
        old[..4].copy_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(&old);
        let back = parse(&bytes).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].kvno, 300 % 256);
    }

    #[test]
    fn damage_and_other_versions_are_named() {
        let bytes = to_bytes(&sample()).unwrap();
        let cut = parse(&bytes[..bytes.len() - 3]).unwrap_err();
        assert!(
            matches!(cut, KeytabError::Damaged { record: 2, .. }),
            "{cut}"
        );
        assert!(parse(&[5, 1]).unwrap_err().to_string().contains("0x501"));
        assert!(parse(&[]).is_err());
        assert!(parse(&[5, 2]).unwrap().is_empty());
    }

    #[test]
    fn debug_never_shows_a_key() {
        let shown = format!("{:?}", sample()[0]);
        assert!(
            shown.contains("<32 bytes>") && !shown.contains("7, 7"),
            "{shown}"
        );
    }
}

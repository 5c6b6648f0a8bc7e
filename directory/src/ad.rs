//! Active Directory's quirks: binary GUIDs and SIDs, `userAccountControl` bits, FILETIME dates
//! and the bind sub-codes in a failed bind's diagnostic message.

use idbridge_core::AccountProblem;

/// `userAccountControl`: ACCOUNTDISABLE.
pub(crate) const UAC_DISABLED: u64 = 0x2;
/// `msDS-User-Account-Control-Computed`: LOCKOUT.
pub(crate) const UACC_LOCKOUT: u64 = 0x10;

/// An `objectGUID` as text, in the mixed-endian form AD tools print.
pub(crate) fn guid_to_string(b: &[u8]) -> Option<String> {
    let b: &[u8; 16] = b.try_into().ok()?;
    Some(format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3],
        b[2],
        b[1],
        b[0],
        b[5],
        b[4],
        b[7],
        b[6],
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    ))
}

/// The 16 bytes of a GUID printed by [`guid_to_string`].
pub(crate) fn guid_from_string(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || s.len() != 36 {
        return None;
    }
    let mut v = [0u8; 16];
    for (i, byte) in v.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    let mut out = v;
    out[..4].copy_from_slice(&[v[3], v[2], v[1], v[0]]);
    out[4..6].copy_from_slice(&[v[5], v[4]]);
    out[6..8].copy_from_slice(&[v[7], v[6]]);
    Some(out)
}

/// Bytes escaped for an LDAP filter value (RFC 4515), every byte as `\xx`.
pub(crate) fn escape_bytes(b: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(b.len() * 3);
    for byte in b {
        let _ = write!(s, "\\{byte:02x}");
    }
    s
}

/// Whether an `accountExpires` value (FILETIME, 100 ns since 1601; 0 or i64::MAX for never)
/// lies before `now` (Unix seconds).
pub(crate) fn account_expired(value: &str, now: i64) -> bool {
    const EPOCH_DIFF: i64 = 11_644_473_600;
    match value.trim().parse::<i64>() {
        Ok(0 | i64::MAX) | Err(_) => false,
        Ok(ft) => ft / 10_000_000 - EPOCH_DIFF <= now,
    }
}

/// What a failed simple bind's diagnostic says, when AD (or Samba) gave a sub-code. `None` is a
/// wrong password or unknown user (`52e`, `525`), a locked account (`775`, which AD answers
/// whether or not the password was right), or no sub-code at all: all the same answer.
pub(crate) fn bind_problem(diagnostic: &str) -> Option<AccountProblem> {
    let lower = diagnostic.to_ascii_lowercase();
    let code = lower
        .split("data ")
        .nth(1)?
        .split(|c: char| !c.is_ascii_hexdigit())
        .next()?;
    match code {
        "530" | "531" => Some(AccountProblem::NotPermittedNow),
        "532" => Some(AccountProblem::PasswordExpired),
        "533" => Some(AccountProblem::Disabled),
        "701" => Some(AccountProblem::AccountExpired),
        "773" => Some(AccountProblem::MustChangePassword),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_round_trip_in_ad_byte_order() {
        let raw = [
            0x9c, 0x46, 0x9d, 0xde, 0x84, 0x77, 0x46, 0x43, 0xb5, 0xda, 0x72, 0x9f, 0x43, 0x8e,
            0x3e, 0x52,
        ];
        let s = guid_to_string(&raw).unwrap();
        assert_eq!(s, "de9d469c-7784-4346-b5da-729f438e3e52");
        assert_eq!(guid_from_string(&s).unwrap(), raw);
        assert!(guid_from_string("nope").is_none());
        assert!(guid_to_string(&raw[..15]).is_none());
    }

    #[test]
    fn bind_sub_codes() {
        let d = |c| {
            format!(
                "80090308: LdapErr: DSID-0C09030B, comment: AcceptSecurityContext error, data {c}, v893"
            )
        };
        assert_eq!(
            bind_problem(&d("532")),
            Some(AccountProblem::PasswordExpired)
        );
        assert_eq!(
            bind_problem(&d("773")),
            Some(AccountProblem::MustChangePassword)
        );
        assert_eq!(bind_problem(&d("533")), Some(AccountProblem::Disabled));
        assert_eq!(
            bind_problem(&d("701")),
            Some(AccountProblem::AccountExpired)
        );
        assert_eq!(bind_problem(&d("52e")), None);
        assert_eq!(bind_problem(&d("525")), None);
        assert_eq!(bind_problem(&d("775")), None);
        assert_eq!(bind_problem("invalid credentials"), None);
    }

    #[test]
    fn account_expiry() {
        assert!(!account_expired("0", 2_000_000_000));
        assert!(!account_expired("9223372036854775807", 2_000_000_000));
        // 2001-01-01 as FILETIME.
        assert!(account_expired("126227808000000000", 2_000_000_000));
        assert!(!account_expired("126227808000000000", 900_000_000));
    }

    #[test]
    fn bytes_are_escaped_for_filters() {
        assert_eq!(escape_bytes(&[0, 0x2a, 0xff]), "\\00\\2a\\ff");
    }
}

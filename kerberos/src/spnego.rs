//! What a client sent before GSS-API sees it: a Kerberos token (raw, or SPNEGO with Kerberos as
//! the preferred mechanism), NTLM (raw or inside SPNEGO), or something else. Only the outer
//! DER structure is read (RFC 2743 section 3.1, RFC 4178 section 4.2); the Kerberos token
//! itself is GSS-API's to check.

/// Kerberos 5 (RFC 1964).
const KRB5: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02];
/// The OID that old Windows versions send for Kerberos 5.
const MS_KRB5: &[u8] = &[0x2a, 0x86, 0x48, 0x82, 0xf7, 0x12, 0x01, 0x02, 0x02];
/// SPNEGO (RFC 4178).
const SPNEGO: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x02];
/// NTLM inside SPNEGO.
const NTLM: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x02, 0x0a];
/// A raw NTLM message.
const NTLMSSP: &[u8] = b"NTLMSSP\0";

/// What kind of initial token a client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A Kerberos AP-REQ, raw or as SPNEGO's optimistic token: hand it to GSS-API.
    Kerberos,
    /// NTLM: refused, Kerberos is required.
    Ntlm,
    /// SPNEGO that offers Kerberos but carries no Kerberos token (it would need a second round
    /// trip, which a token request cannot make).
    NoKerberosToken,
    /// Another mechanism, or not a GSS-API initial token at all.
    Unsupported,
}

/// Classifies an initial context token. Never panics, whatever the bytes.
#[must_use]
pub fn classify(token: &[u8]) -> TokenKind {
    if token.starts_with(NTLMSSP) {
        return TokenKind::Ntlm;
    }
    classify_gss(token).unwrap_or(TokenKind::Unsupported)
}

fn classify_gss(token: &[u8]) -> Option<TokenKind> {
    // InitialContextToken ::= [APPLICATION 0] IMPLICIT SEQUENCE { thisMech OID, innerToken }
    let (body, _) = Der::new(token).expect(0x60)?;
    let mut body = Der::new(body);
    let (mech, _) = body.expect(0x06)?;
    if mech == KRB5 || mech == MS_KRB5 {
        return Some(TokenKind::Kerberos);
    }
    if mech != SPNEGO {
        return Some(TokenKind::Unsupported);
    }
    // NegotiationToken ::= CHOICE { negTokenInit [0] NegTokenInit, ... }
    let (init, _) = body.expect(0xa0)?;
    let (fields, _) = Der::new(init).expect(0x30)?;
    let mut fields = Der::new(fields);
    let mut mechs: Vec<&[u8]> = Vec::new();
    let mut mech_token: Option<&[u8]> = None;
    while !fields.is_empty() {
        let (tag, value) = fields.next()?;
        match tag {
            0xa0 => {
                let (list, _) = Der::new(value).expect(0x30)?;
                let mut list = Der::new(list);
                while !list.is_empty() {
                    let (oid, _) = list.expect(0x06)?;
                    mechs.push(oid);
                }
            }
            0xa2 => mech_token = Some(Der::new(value).expect(0x04)?.0),
            _ => {}
        }
    }
    let preferred = mechs.first().copied();
    Some(match (preferred, mech_token) {
        (Some(m), Some(_)) if m == KRB5 || m == MS_KRB5 => TokenKind::Kerberos,
        (_, Some(t)) if t.starts_with(NTLMSSP) => TokenKind::Ntlm,
        (Some(m), _) if m == NTLM => TokenKind::Ntlm,
        _ if mechs.iter().any(|m| *m == KRB5 || *m == MS_KRB5) => TokenKind::NoKerberosToken,
        _ if mechs.contains(&NTLM) => TokenKind::Ntlm,
        _ => TokenKind::Unsupported,
    })
}

/// A bounds-checked reader of DER tag-length-value items.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    fn new(b: &'a [u8]) -> Self {
        Self(b)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The next item's tag and value.
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.0.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |a, b| (a << 8) | usize::from(*b));
            rest = &rest[n..];
            len
        };
        if rest.len() < len {
            return None;
        }
        let (value, after) = rest.split_at(len);
        self.0 = after;
        Some((tag, value))
    }

    /// The next item's value, if it has tag `want`; and what follows it.
    fn expect(&mut self, want: u8) -> Option<(&'a [u8], &'a [u8])> {
        let (tag, value) = self.next()?;
        (tag == want).then_some((value, self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if value.len() < 0x80 {
            out.push(u8::try_from(value.len()).unwrap());
        } else {
            out.push(0x82);
            out.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
        }
        out.extend_from_slice(value);
        out
    }

    fn spnego(mechs: &[&[u8]], token: Option<&[u8]>) -> Vec<u8> {
        let list: Vec<u8> = mechs.iter().flat_map(|m| tlv(0x06, m)).collect();
        let mut fields = tlv(0xa0, &tlv(0x30, &list));
        if let Some(t) = token {
            fields.extend(tlv(0xa2, &tlv(0x04, t)));
        }
        let inner = tlv(0xa0, &tlv(0x30, &fields));
        let mut body = tlv(0x06, SPNEGO);
        body.extend(inner);
        tlv(0x60, &body)
    }

    fn krb5_raw(ap_req: &[u8]) -> Vec<u8> {
        let mut body = tlv(0x06, KRB5);
        body.extend_from_slice(&[0x01, 0x00]);
        body.extend_from_slice(ap_req);
        tlv(0x60, &body)
    }

    #[test]
    fn kerberos_raw_and_in_spnego() {
        let ap = vec![0x6e; 300];
        assert_eq!(classify(&krb5_raw(&ap)), TokenKind::Kerberos);
        assert_eq!(
            classify(&spnego(&[KRB5, NTLM], Some(&krb5_raw(&ap)))),
            TokenKind::Kerberos
        );
        assert_eq!(
            classify(&spnego(&[MS_KRB5, KRB5], Some(&krb5_raw(&ap)))),
            TokenKind::Kerberos
        );
    }

    #[test]
    fn ntlm_in_every_form() {
        assert_eq!(classify(b"NTLMSSP\0\x01\0\0\0"), TokenKind::Ntlm);
        assert_eq!(
            classify(&spnego(&[NTLM], Some(b"NTLMSSP\0\x01\0\0\0"))),
            TokenKind::Ntlm
        );
        assert_eq!(classify(&spnego(&[NTLM], None)), TokenKind::Ntlm);
        // Kerberos listed second, NTLM's token sent: still NTLM.
        assert_eq!(
            classify(&spnego(&[NTLM, KRB5], Some(b"NTLMSSP\0\x01\0\0\0"))),
            TokenKind::Ntlm
        );
    }

    #[test]
    fn kerberos_offered_without_a_token() {
        assert_eq!(classify(&spnego(&[KRB5], None)), TokenKind::NoKerberosToken);
    }

    #[test]
    fn garbage_and_truncation_never_panic() {
        let good = spnego(&[KRB5], Some(&krb5_raw(&[0x6e; 200])));
        for n in 0..good.len() {
            let k = classify(&good[..n]);
            assert_ne!(k, TokenKind::Kerberos, "truncated at {n}");
        }
        for bytes in [
            &b""[..],
            b"\x60",
            b"\x60\x84\xff\xff\xff\xff",
            b"\x60\x80",
            b"hello, world",
            &[0xff; 64],
        ] {
            assert_eq!(classify(bytes), TokenKind::Unsupported);
        }
        let mut other = tlv(0x06, &[0x2b, 0x06, 0x01, 0x05, 0x02, 0x05]);
        other.extend_from_slice(b"iakerb");
        assert_eq!(classify(&tlv(0x60, &other)), TokenKind::Unsupported);
    }
}

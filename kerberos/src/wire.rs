//! Reading the big-endian binary formats of MIT Kerberos files (ticket caches, keytabs).

/// A cursor over bytes; every read is checked, `None` past the end.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// Bytes counted by a 32-bit length.
    pub(crate) fn data(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u32()?).ok()?;
        self.take(n)
    }
    /// Bytes counted by a 16-bit length.
    pub(crate) fn data16(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }
}

/// A principal as `krb5_unparse_name` writes it: components joined by `/`, then `@realm`, with
/// `/`, `@` and `\` escaped.
pub(crate) fn unparse(realm: &str, parts: &[String]) -> String {
    let escape = |s: &str| {
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            match c {
                '/' | '@' | '\\' => {
                    out.push('\\');
                    out.push(c);
                }
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\0' => out.push_str("\\0"),
                c => out.push(c),
            }
        }
        out
    };
    let name: Vec<String> = parts.iter().map(|p| escape(p)).collect();
    format!("{}@{}", name.join("/"), escape(realm))
}

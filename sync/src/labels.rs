//! Which labels sync writes on an account, and the rule that turns any group name into a valid
//! label key without two groups ever sharing one.
//!
//! The group labels name groups as the directory does (after `directory.groups.include` and
//! `exclude`, without `directory.groups.prefix`, which is for tokens).
//!
//! - A group whose name is a valid label name (at most 63 characters of `A-Z a-z 0-9 - _ .`,
//!   starting and ending with a letter or digit) gets `groups.idbridge.io/<name>: member`.
//! - Any other name (`Domain Users`, `ops@example`, 80 characters) gets
//!   `hashed.groups.idbridge.io/<readable>-<hash>: member`: `<readable>` is the name with every
//!   other character replaced by `-`, cut to 50 characters, and `<hash>` the first 12 hex digits
//!   of the SHA-256 of the exact name. The two forms live under different prefixes, so a plain
//!   name never takes a hashed one's key; two names whose hashed keys are equal (48 bits of hash
//!   alike) are both reported and neither is labelled, never one silently for the other.
//! - Role labels: `roles.idbridge.io/<role>: "true"` for a member of a group a rule maps to the
//!   role.
//! - `sync.idbridge.io/disabled: directory` (or `deleted`) on an account sync disabled, so that
//!   sync re-enables only the accounts it disabled itself, never one an administrator disabled.
//!
//! Every other label on an account is the administrator's and is kept as it is.

use idbridge_core::LabelKey;

/// Labels of groups with label-safe names.
pub const GROUP_PREFIX: &str = "groups.idbridge.io/";
/// Labels of groups whose names need the hashed form.
pub const HASHED_GROUP_PREFIX: &str = "hashed.groups.idbridge.io/";
/// Role labels.
pub const ROLE_PREFIX: &str = "roles.idbridge.io/";
/// The label sync puts on an account it disabled (an administrator's disable or enable
/// removes it).
pub const DISABLED_BY_SYNC: &str = idbridge_tokens::admin::SYNC_DISABLED_LABEL;
/// The value of a group label.
pub const MEMBER: &str = "member";

/// Whether `s` is a valid label name (the part after the prefix) or label value.
#[must_use]
pub fn is_label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// Whether `s` is a valid label value (empty, or as a label name).
#[must_use]
pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_label_name(s)
}

/// Whether a label key is one sync owns (it replaces these, and keeps all others).
#[must_use]
pub fn owned(key: &str) -> bool {
    [GROUP_PREFIX, HASHED_GROUP_PREFIX, ROLE_PREFIX]
        .iter()
        .any(|p| key.starts_with(p))
        || key == DISABLED_BY_SYNC
}

/// The label key of a group (see the module docs).
#[must_use]
pub fn group_key(group: &str) -> LabelKey {
    let key = if is_label_name(group) {
        format!("{GROUP_PREFIX}{group}")
    } else {
        let hash = hash12(&[group]);
        let readable = label_text(group, 50);
        if readable.is_empty() {
            format!("{HASHED_GROUP_PREFIX}g-{hash}")
        } else {
            format!("{HASHED_GROUP_PREFIX}{readable}-{hash}")
        }
    };
    // Both forms are valid by construction; a test holds them to it.
    key.parse().unwrap_or_else(|_| {
        format!("{HASHED_GROUP_PREFIX}g")
            .parse()
            .unwrap_or_else(|_| unreachable!("a constant label key"))
    })
}

/// `s` as label-value text: letters, digits, `_` and `.` kept, every other character `-`, at
/// most `max` characters, starting and ending with a letter or digit (maybe empty).
#[must_use]
pub fn label_text(s: &str, max: usize) -> String {
    let mapped: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(max)
        .collect();
    mapped
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

/// The first 12 hex digits of the SHA-256 of `parts` joined by NUL bytes (of the text itself
/// for one part).
#[must_use]
pub fn hash12(parts: &[&str]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            ctx.update(&[0]);
        }
        ctx.update(p.as_bytes());
    }
    ctx.finish().as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The role label key of `role` (a valid label name, checked in the config).
#[must_use]
pub fn role_key(role: &str) -> Option<LabelKey> {
    format!("{ROLE_PREFIX}{role}").parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_safe_names_are_kept_and_others_hashed_apart() {
        assert_eq!(group_key("dev").as_str(), "groups.idbridge.io/dev");
        assert_eq!(
            group_key("Team_A.ops-1").as_str(),
            "groups.idbridge.io/Team_A.ops-1"
        );
        let du = group_key("Domain Users");
        assert!(
            du.as_str()
                .starts_with("hashed.groups.idbridge.io/Domain-Users-"),
            "{du}"
        );
        // Names that read alike get different keys.
        assert_ne!(group_key("Domain Users"), group_key("Domain-Users "));
        assert_ne!(group_key("a b"), group_key("a-b"));
        // The hashed form never equals a plain one, whatever the plain name.
        assert!(
            !group_key("Domain-Users")
                .as_str()
                .starts_with(HASHED_GROUP_PREFIX)
        );
        for odd in [
            "",
            "-",
            "ä",
            "日本語",
            &"x".repeat(300),
            "-a-",
            "a/b",
            "@@@",
        ] {
            let k = group_key(odd);
            assert!(k.as_str().starts_with(HASHED_GROUP_PREFIX), "{odd:?}: {k}");
            assert!(k.as_str().len() <= HASHED_GROUP_PREFIX.len() + 63, "{k}");
        }
        assert_ne!(group_key("ä"), group_key("日本語"));
    }

    #[test]
    fn owned_labels_are_only_syncs() {
        assert!(owned("groups.idbridge.io/dev"));
        assert!(owned("hashed.groups.idbridge.io/x-0123456789ab"));
        assert!(owned("roles.idbridge.io/admin"));
        assert!(owned(DISABLED_BY_SYNC));
        assert!(!owned("idbridge.io/department"));
        assert!(!owned("team"));
    }
}

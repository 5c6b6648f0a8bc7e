/// Errors from parsing idbridge's domain values.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A value was empty where one is required.
    #[error("{what} must not be empty")]
    Empty {
        /// The kind of value, e.g. "account name".
        what: &'static str,
    },
    /// A value was longer than its limit.
    #[error("{what} is longer than {max} characters")]
    TooLong {
        /// The kind of value.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// A value used a reserved prefix such as `system:`.
    #[error("{what} {value:?} uses the reserved prefix {prefix:?}")]
    Reserved {
        /// The kind of value.
        what: &'static str,
        /// The value as given.
        value: String,
        /// The reserved prefix.
        prefix: &'static str,
    },
    /// A value held a character that is not allowed.
    #[error("{what} {value:?} is not valid: {why}")]
    Invalid {
        /// The kind of value.
        what: &'static str,
        /// The value as given.
        value: String,
        /// Why it was refused.
        why: &'static str,
    },
}

/// Errors a [`crate::Store`] implementation reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A uniqueness rule was violated (e.g. an account name already taken).
    #[error("{0} already exists")]
    Conflict(String),
    /// The record to change does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// Stored data could not be decoded; the store is damaged or from a newer version.
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// The backend failed (I/O, locking, connection).
    #[error("store backend failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A change of a batch ([`crate::AccountStore::apply_account_changes`]) failed, so none of
    /// the batch was applied.
    #[error("change {index} of the batch failed: {error}")]
    InBatch {
        /// The failed change's index in the batch.
        index: usize,
        /// Why it failed.
        error: Box<StoreError>,
    },
}

impl StoreError {
    /// The error itself, or for a failed batch the error of the change that failed.
    #[must_use]
    pub fn innermost(&self) -> &StoreError {
        match self {
            Self::InBatch { error, .. } => error.innermost(),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_batch_names_its_change_and_keeps_why() {
        let e = StoreError::InBatch {
            index: 2,
            error: Box::new(StoreError::Conflict("account alice".into())),
        };
        assert_eq!(
            e.to_string(),
            "change 2 of the batch failed: account alice already exists"
        );
        assert!(matches!(e.innermost(), StoreError::Conflict(w) if w == "account alice"));
        let plain = StoreError::NotFound("account x".into());
        assert!(matches!(plain.innermost(), StoreError::NotFound(_)));
    }
}

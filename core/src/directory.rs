//! The directory seam: LDAP / Active Directory as a login source. The implementation lives in
//! the `idbridge-directory` crate.

use std::fmt;

use async_trait::async_trait;

/// A directory user as a login or a refresh sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryUser {
    /// The entry's stable id (`objectGUID` or `entryUUID`), the account's link.
    pub id: String,
    /// The login name (`uid`, `sAMAccountName`), used as the account name.
    pub name: String,
    /// The entry's DN.
    pub dn: String,
    /// Every group the user is in, nested ones included, before shaping; empty unless `status`
    /// is active (nothing uses the groups of an entry that may not log in).
    pub groups: Vec<String>,
    /// Whether the entry may log in now.
    pub status: DirectoryStatus,
}

/// Whether a directory entry may log in, as the entry itself says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectoryStatus {
    /// It may.
    Active,
    /// Disabled by an administrator (AD `userAccountControl` bit 2, an OpenLDAP administrative
    /// lock).
    Disabled,
    /// Locked after failed logins (AD lockout, OpenLDAP ppolicy).
    Locked,
    /// Past its account expiry date.
    Expired,
}

impl fmt::Display for DirectoryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
            Self::Locked => "locked",
            Self::Expired => "expired",
        })
    }
}

/// Why a user whose password was right may still not log in (AD's bind sub-codes and the
/// entry's own state). Never reported for a wrong password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountProblem {
    /// The password has expired.
    PasswordExpired,
    /// The password must be changed before the first login.
    MustChangePassword,
    /// The account is locked.
    Locked,
    /// The account is disabled.
    Disabled,
    /// The account has expired.
    AccountExpired,
    /// Logins are not allowed at this time or from here.
    NotPermittedNow,
}

impl fmt::Display for AccountProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::PasswordExpired => {
                "your directory password has expired; change it, then log in again"
            }
            Self::MustChangePassword => {
                "your directory password must be changed before the first login; change it, then log in again"
            }
            Self::Locked => "your directory account is locked; ask your directory administrator",
            Self::Disabled => "your directory account is disabled",
            Self::AccountExpired => "your directory account has expired",
            Self::NotPermittedNow => {
                "your directory account may not log in at this time or from this place"
            }
        })
    }
}

/// What can go wrong asking the directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// Unknown user, wrong password or empty password: one answer for all, by design.
    #[error("invalid username or password")]
    InvalidCredentials,
    /// The password was right, but the account may not log in.
    #[error("{0}")]
    Refused(AccountProblem),
    /// No directory server answered (every URL tried); nothing was decided.
    #[error("the directory is unavailable: {0}")]
    Unavailable(String),
    /// A password bind was sent and no answer came in time: nothing was decided here, but the
    /// directory may have counted a failure (throttling counts it as one).
    #[error("the directory did not answer in time: {0}")]
    NoAnswer(String),
    /// The directory answered with something idbridge cannot use (a configuration problem).
    #[error("directory error: {0}")]
    Failed(String),
}

/// A login name looked up in the directory before any password is tried. The caller counts
/// an attempt against [`key`](Self::key) between the look-up and the bind, so that parallel
/// attempts cannot outrun the count and every spelling of one entry's name shares it.
pub struct LoginCandidate {
    /// What per-user limits count: `id:` and the entry's stable id, or, when no entry has the
    /// name, `name:` and the name as [`normalised_login`] gives it.
    pub key: String,
    /// Whether an entry has the name (never shown to the user).
    pub found: bool,
    /// The implementation's own state: the entry it found.
    pub state: Box<dyn std::any::Any + Send + Sync>,
}

impl fmt::Debug for LoginCandidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginCandidate")
            .field("key", &self.key)
            .field("found", &self.found)
            .finish_non_exhaustive()
    }
}

/// A typed login name as per-user limits count it when no entry has it: surrounding white
/// space dropped, lower case.
#[must_use]
pub fn normalised_login(name: &str) -> String {
    name.trim().to_lowercase()
}

/// A directory that checks passwords and resolves users and their groups.
#[async_trait]
pub trait Directory: Send + Sync + fmt::Debug {
    /// Looks the login name up with the service account; binds nothing.
    async fn find_login(&self, username: &str) -> Result<LoginCandidate, DirectoryError>;

    /// Checks the password of a name [`find_login`](Self::find_login) looked up: binds as the
    /// entry, or, when there is none, spends what a wrong password would, and answers
    /// [`DirectoryError::InvalidCredentials`]. An empty password fails without any bind.
    async fn check_password(
        &self,
        candidate: LoginCandidate,
        password: &str,
    ) -> Result<DirectoryUser, DirectoryError>;

    /// Both steps at once: look the name up, then check the password.
    async fn authenticate(
        &self,
        username: &str,
        password: &str,
    ) -> Result<DirectoryUser, DirectoryError> {
        let candidate = self.find_login(username).await?;
        self.check_password(candidate, password).await
    }

    /// Reads a user again by stable id (for refresh); `None` when the entry is gone.
    async fn user_by_id(&self, id: &str) -> Result<Option<DirectoryUser>, DirectoryError>;

    /// Finds a user by Kerberos principal (for Kerberos logins); `None` when no entry has it.
    async fn user_by_principal(
        &self,
        principal: &str,
    ) -> Result<Option<DirectoryUser>, DirectoryError>;

    /// The user's groups as a token for `audience` carries them (include and exclude patterns,
    /// prefix, the per-audience cap), and how many the cap dropped.
    fn token_groups(&self, user: &DirectoryUser, audience: &str) -> (Vec<String>, usize);
}

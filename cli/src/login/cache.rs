//! The session cache: one file per issuer, audience and identity, written atomically and readable
//! by its owner only, and the lock that lets one process at a time refresh or log in for it.
//!
//! Ten `kubectl` runs started together with a stale token all run `idbridge login`: the first
//! takes the entry's lock and refreshes, the others wait on the lock, then find a fresh token in
//! the file and use it. The lock is an advisory file lock (`flock`), so it is released when its
//! holder exits, however it exits; the lock file holds the holder's pid for the waiting message.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// What identifies a cache entry: the server, the audience asked for and whose session it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Key<'a> {
    pub issuer: &'a str,
    pub audience: Option<&'a str>,
    /// `krb5:<principal>`, `password:<username>`, or `web` for a login in a browser (whoever logs
    /// in there).
    pub identity: &'a str,
}

/// A cached session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Session {
    pub access_token: String,
    /// Unix seconds.
    pub expires_at: u64,
    pub refresh_token: Option<String>,
    /// The entry's key, kept so `whoami` and `logout` can find and describe it.
    #[serde(default)]
    pub issuer: String,
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default)]
    pub identity: String,
    /// The CA bundle the login trusted for the issuer, so `logout` can reach it again.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// The cache directory: `--cache-dir`, else `$XDG_CACHE_HOME/idbridge`, else `~/.cache/idbridge`.
pub(crate) fn dir(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(d) = explicit {
        return Ok(d.to_owned());
    }
    Ok(std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("no cache directory: set --cache-dir, XDG_CACHE_HOME or HOME")?
        .join("idbridge"))
}

/// One entry of the cache: its session file and its lock file.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub path: PathBuf,
    lock_path: PathBuf,
}

impl Entry {
    /// The entry for `key` in `dir`. The name is readable (identity and issuer host) and ends in
    /// a hash of the exact key, so two keys never share a file.
    pub(crate) fn new(dir: &Path, key: &Key<'_>) -> Self {
        let exact = format!("{}\n{}\n{:?}", key.identity, key.issuer, key.audience);
        // FNV-1a: the name only has to differ between keys, and a cryptographic hash would
        // start the crypto library (and its entropy source) on every kubectl run.
        let hash = exact.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        let host = key
            .issuer
            .split_once("://")
            .map_or(key.issuer, |(_, rest)| rest);
        let readable: String = format!("{}-{host}", key.identity)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(80)
            .collect();
        let stem = format!("session-{readable}-{hash:016x}");
        Self {
            path: dir.join(format!("{stem}.json")),
            lock_path: dir.join(format!("{stem}.lock")),
        }
    }

    fn from_session_file(path: PathBuf) -> Self {
        let lock_path = path.with_extension("lock");
        Self { path, lock_path }
    }

    /// The cached session, if there is a readable one.
    pub(crate) fn read(&self) -> Option<Session> {
        serde_json::from_slice(&std::fs::read(&self.path).ok()?).ok()
    }

    /// Takes the entry's lock, waiting at most `timeout` for another process holding it; says on
    /// standard error what it waits for when the wait is longer than a moment.
    pub(crate) async fn lock(&self, timeout: Duration) -> anyhow::Result<Held> {
        let dir = self.path.parent().context("cache path has no directory")?;
        crate::files::create_dir(dir)?;
        let start = Instant::now();
        let mut told = false;
        let mut pause = Duration::from_millis(10);
        let mut file = self.open_lock()?;
        loop {
            match file.try_lock() {
                // The holder removes the lock file as it lets go: a lock on a file that is no
                // longer at the path is a lock nobody else sees, so open the path again.
                Ok(()) if still_at(&file, &self.lock_path) => break,
                Ok(()) => {
                    file = self.open_lock()?;
                    continue;
                }
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(e)) => {
                    return Err(e)
                        .with_context(|| format!("cannot lock {}", self.lock_path.display()));
                }
            }
            let waited = start.elapsed();
            if waited >= timeout {
                bail!(
                    "another idbridge login ({}) still holds {} after {:.1}s; stop it if it hangs, or wait longer with --lock-timeout",
                    holder(&mut file),
                    self.lock_path.display(),
                    timeout.as_secs_f64()
                );
            }
            if !told && waited >= Duration::from_millis(500) {
                eprintln!(
                    "waiting for another idbridge login ({}) to finish…",
                    holder(&mut file)
                );
                told = true;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
        // Ours now: say who holds it, for those who wait.
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        held_paths().push(self.lock_path.clone());
        Ok(Held {
            file,
            path: self.lock_path.clone(),
        })
    }

    fn open_lock(&self) -> anyhow::Result<File> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        opts.open(&self.lock_path)
            .with_context(|| format!("cannot open the lock {}", self.lock_path.display()))
    }

    /// Writes `session` atomically (a temporary file, fsync, rename, fsync of the directory),
    /// readable by its owner only. Call it holding the entry's lock.
    pub(crate) fn write(&self, _held: &Held, session: &Session) -> anyhow::Result<()> {
        crate::files::replace(
            &self.path,
            &self.path.with_extension("json.tmp"),
            &serde_json::to_vec(session)?,
            0o600,
            "save the session to",
        )
    }

    /// Removes the session file (holding the lock).
    pub(crate) fn remove(&self, _held: &Held) -> anyhow::Result<()> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", self.path.display())),
        }
    }
}

/// Who holds a lock, as its file says.
fn holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.rewind().and_then(|()| file.read_to_string(&mut text));
    match text.trim() {
        "" => "pid unknown".to_owned(),
        pid => format!("pid {pid}"),
    }
}

/// Whether `file` is still the file at `path` (not removed or replaced since it was opened).
fn still_at(file: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), std::fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        true
    }
}

/// A held entry lock, released when dropped (or when the process ends, however it ends).
///
/// Letting go removes the lock file first, so a cache leaves no lock files behind; whoever was
/// waiting on the removed file sees that it is gone and locks a new one (see [`Entry::lock`]).
#[derive(Debug)]
pub(crate) struct Held {
    file: File,
    path: PathBuf,
}

impl Drop for Held {
    fn drop(&mut self) {
        #[cfg(unix)]
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
        held_paths().retain(|p| p != &self.path);
    }
}

/// The lock files this process holds, for a signal that ends it (see [`remove_held_locks`]).
static HELD: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

fn held_paths() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    HELD.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Removes the lock files this process holds: for a signal that ends the process, which runs
/// no destructors. The locks themselves go with the process.
pub(crate) fn remove_held_locks() {
    remove_held_locks_where(|_| true);
}

fn remove_held_locks_where(which: impl Fn(&Path) -> bool) {
    held_paths().retain(|p| {
        if which(p) {
            let _ = std::fs::remove_file(p);
            return false;
        }
        true
    });
}

/// Every entry in `dir` with its session, by file name.
pub(crate) fn entries(dir: &Path) -> Vec<(Entry, Session)> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = read
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("session-") && n.ends_with(".json"))
        })
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(Entry::from_session_file)
        .filter_map(|e| {
            let s = e.read()?;
            (!s.issuer.is_empty()).then_some((e, s))
        })
        .collect()
}

/// Makes sure the cache directory is private (the file names show the user and the issuer):
/// creates it so, and makes the default one so if it is not; a directory the user named
/// (`--cache-dir`) is never changed, and refused if others may read it.
pub(crate) fn prepare(dir: &Path, named: bool) -> anyhow::Result<()> {
    #[cfg(unix)]
    if named && dir.exists() {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            bail!(
                "the cache directory {} can be read by others (mode {:o}): name a private one (chmod 700), or a new one, with --cache-dir",
                dir.display(),
                mode & 0o777
            );
        }
        return Ok(());
    }
    private_dir(dir)
}

/// Creates the cache directory readable by its owner only, and makes an existing one so.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    crate::files::create_dir(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot make {} private", dir.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(root: &Path) -> Entry {
        Entry::new(
            root,
            &Key {
                issuer: "https://i.example",
                audience: None,
                identity: "web",
            },
        )
    }

    fn session(token: &str) -> Session {
        Session {
            access_token: token.to_owned(),
            expires_at: 1,
            refresh_token: Some("r".into()),
            issuer: "https://i.example".into(),
            audience: None,
            identity: "web".into(),
            ca_file: None,
        }
    }

    #[cfg(unix)]
    #[test]
    fn the_cache_dir_is_private_new_or_old() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let root = tempfile::tempdir().unwrap();
        let fresh = root.path().join("a/idbridge");
        private_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        let old = root.path().join("old");
        std::fs::create_dir(&old).unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&old).unwrap();
        assert_eq!(mode(&old), 0o700);
    }

    #[test]
    fn keys_that_differ_get_different_files() {
        let dir = Path::new("/c");
        let k = |identity, issuer, audience| {
            Entry::new(
                dir,
                &Key {
                    issuer,
                    audience,
                    identity,
                },
            )
            .path
        };
        let a = k("password:a_b", "https://x", None);
        assert_ne!(a, k("password:a b", "https://x", None));
        assert_ne!(a, k("password:a_b", "https://x", Some("")));
        assert_ne!(a, k("password:a_b", "https://y", None));
        assert_eq!(a, k("password:a_b", "https://x", None));
        let name = a.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("session-password_a_b-x-"), "{name}");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_write_replaces_the_file_whole_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let e = entry(root.path());
        // A stale temporary file from a crash, world-readable, does not make the next one so.
        std::fs::write(e.path.with_extension("json.tmp"), b"junk").unwrap();
        std::fs::set_permissions(
            e.path.with_extension("json.tmp"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let held = e.lock(Duration::from_secs(1)).await.unwrap();
        e.write(&held, &session("one")).unwrap();
        e.write(&held, &session("two")).unwrap();
        assert_eq!(e.read().unwrap().access_token, "two");
        let mode = std::fs::metadata(&e.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(entries(root.path()).len(), 1);
        e.remove(&held).unwrap();
        assert!(e.read().is_none());
    }

    #[tokio::test]
    async fn a_write_that_cannot_be_saved_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let e = entry(root.path());
        let held = e.lock(Duration::from_secs(1)).await.unwrap();
        // A directory where the temporary file goes: the open fails, for root too.
        std::fs::create_dir_all(e.path.with_extension("json.tmp").join("x")).unwrap();
        let err = e.write(&held, &session("one")).unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot save the session"),
            "{err:#}"
        );
    }

    #[tokio::test]
    async fn a_held_lock_makes_the_next_wait_then_time_out_naming_the_holder() {
        let root = tempfile::tempdir().unwrap();
        let e = entry(root.path());
        let held = e.lock(Duration::from_secs(1)).await.unwrap();
        let err = e.lock(Duration::from_millis(300)).await.unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains(&format!("pid {}", std::process::id()))
                && text.contains("--lock-timeout"),
            "{text}"
        );
        drop(held);
        e.lock(Duration::from_millis(300)).await.unwrap();
    }

    #[tokio::test]
    async fn a_signal_removes_the_lock_files_held() {
        let root = tempfile::tempdir().unwrap();
        let e = entry(root.path());
        let held = e.lock(Duration::from_secs(1)).await.unwrap();
        assert!(e.lock_path.exists());
        // (Only this test's: other tests of this process hold locks of their own.)
        remove_held_locks_where(|p| p.starts_with(root.path()));
        assert!(!e.lock_path.exists());
        drop(held);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn letting_go_leaves_no_lock_file_and_a_waiter_takes_a_new_one() {
        let root = tempfile::tempdir().unwrap();
        let e = entry(root.path());
        let held = e.lock(Duration::from_secs(1)).await.unwrap();
        assert!(e.lock_path.exists());
        let waiter = {
            let e = e.clone();
            tokio::spawn(async move { e.lock(Duration::from_secs(5)).await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(held);
        let second = waiter.await.unwrap();
        // The waiter holds the file at the path, so a third process must wait for it.
        assert!(still_at(&second.file, &e.lock_path));
        assert!(e.lock(Duration::from_millis(200)).await.is_err());
        drop(second);
        assert!(!e.lock_path.exists());
        let names: Vec<_> = std::fs::read_dir(root.path()).unwrap().collect();
        assert!(names.is_empty(), "{names:?}");
    }
}

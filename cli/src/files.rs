//! Private directories, and replacing a file whole: a temporary file beside it, flushed to disk, renamed over it, and the
//! directory flushed, so a crash leaves the old content or the new, never part of either.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

/// Creates `dir` and its missing parents, each new one readable by its owner only; an existing
/// one is left as it is.
pub(crate) fn create_dir(dir: &Path) -> anyhow::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// Replaces `path` with `bytes` through the temporary file `tmp` (in the same directory), which
/// is created with `mode`. A `tmp` left by a crash is removed first, so the new file gets `mode`
/// whatever the old one had; the caller makes sure nobody else writes `tmp` meanwhile (a lock).
/// Errors say "cannot `what` `path`".
pub(crate) fn replace(
    path: &Path,
    tmp: &Path,
    bytes: &[u8],
    mode: u32,
    what: &str,
) -> anyhow::Result<()> {
    let fail = || format!("cannot {what} {}", path.display());
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let _ = std::fs::remove_file(tmp);
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
        #[cfg(not(unix))]
        let _ = mode;
        let mut f = opts.open(tmp).with_context(fail)?;
        f.write_all(bytes).with_context(fail)?;
        f.sync_all().with_context(fail)?;
    }
    std::fs::rename(tmp, path).with_context(fail)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(fail)?;
    Ok(())
}

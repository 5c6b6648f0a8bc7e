//! Questions asked on the terminal (`/dev/tty`, never standard input or output, which belong to
//! kubectl): a username with echo, a password without.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};

use anyhow::{Context, bail};
use rustix::termios::{LocalModes, OptionalActions, Termios, tcgetattr, tcsetattr};

fn tty() -> anyhow::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("there is no terminal to ask on (/dev/tty): without one, pass --username, and the password with --password-file or IDBRIDGE_PASSWORD")
}

/// Asks `question` and reads a line, echoed.
pub(crate) async fn ask(question: &str) -> anyhow::Result<String> {
    let question = question.to_owned();
    read_line(question, false).await
}

/// Asks `question` and reads a line with echo off; the terminal is put back as it was, on
/// Ctrl-C too.
pub(crate) async fn ask_secret(question: &str) -> anyhow::Result<String> {
    let question = question.to_owned();
    read_line(question, true).await
}

/// The terminal's modes to put back if a signal ends the process while echo is off.
static SAVED: std::sync::Mutex<Option<(File, Termios)>> = std::sync::Mutex::new(None);

fn saved() -> std::sync::MutexGuard<'static, Option<(File, Termios)>> {
    SAVED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// From now until the process ends, a Ctrl-C, SIGTERM or SIGHUP ends the process as the
/// signal would have (exit 130, 143 or 129), but first puts the terminal's modes back if a
/// password prompt turned echo off, and removes the cache lock files this process holds. Once
/// these handlers exist, the signals no longer end the process by themselves.
pub(crate) fn clean_exit_on_signals() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    static ONCE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if ONCE.set(()).is_err() {
        return Ok(());
    }
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        let code = tokio::select! {
            _ = interrupt.recv() => 130,
            _ = terminate.recv() => 143,
            _ = hangup.recv() => 129,
        };
        if let Some((tty, modes)) = saved().take() {
            let _ = tcsetattr(&tty, OptionalActions::Now, &modes);
            eprintln!();
        }
        super::cache::remove_held_locks();
        std::process::exit(code);
    });
    Ok(())
}

async fn read_line(question: String, secret: bool) -> anyhow::Result<String> {
    let mut out = tty()?;
    let saved = if secret {
        let modes = tcgetattr(&out).context("cannot read the terminal's modes")?;
        // The handlers and the modes to restore first: a signal at any moment after echo goes
        // off puts it back.
        clean_exit_on_signals()?;
        *saved() = Some((tty()?, modes.clone()));
        let mut quiet = modes.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        quiet.local_modes.insert(LocalModes::ECHONL);
        tcsetattr(&out, OptionalActions::Flush, &quiet).context("cannot turn echo off")?;
        Some((tty()?, modes))
    } else {
        None
    };
    out.write_all(question.as_bytes())?;
    out.flush()?;
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).map(|_| line)
    })
    .await;
    if let Some((tty, modes)) = &saved {
        let _ = tcsetattr(tty, OptionalActions::Now, modes);
        *self::saved() = None;
    }
    let line = line
        .context("the terminal reader stopped")?
        .context("cannot read the terminal")?;
    if line.is_empty() {
        bail!("the terminal closed before an answer was typed");
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

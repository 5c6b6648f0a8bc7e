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
        .context("there is no terminal to ask on (/dev/tty)")
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

/// From now until the process ends, a Ctrl-C, SIGTERM or SIGHUP puts the terminal's modes back
/// as `saved` and ends the process, as the signal would have (without this, the process would end
/// with echo off; once these handlers exist, the signals no longer end it by themselves).
fn restore_on_signals(tty: File, saved: Termios) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        let code = tokio::select! {
            _ = interrupt.recv() => 130,
            _ = terminate.recv() => 143,
            _ = hangup.recv() => 129,
        };
        let _ = tcsetattr(&tty, OptionalActions::Now, &saved);
        eprintln!();
        std::process::exit(code);
    });
    Ok(())
}

async fn read_line(question: String, secret: bool) -> anyhow::Result<String> {
    let mut out = tty()?;
    let saved = if secret {
        let modes = tcgetattr(&out).context("cannot read the terminal's modes")?;
        // The handlers first: a signal at any moment after echo goes off puts it back.
        restore_on_signals(tty()?, modes.clone())?;
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
    }
    let line = line
        .context("the terminal reader stopped")?
        .context("cannot read the terminal")?;
    if line.is_empty() {
        bail!("the terminal closed before an answer was typed");
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

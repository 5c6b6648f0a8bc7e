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

/// Puts the terminal's modes back when dropped.
struct Restore(Option<(File, Termios)>);

impl Drop for Restore {
    fn drop(&mut self) {
        if let Some((tty, modes)) = &self.0 {
            let _ = tcsetattr(tty, OptionalActions::Now, modes);
        }
    }
}

async fn read_line(question: String, secret: bool) -> anyhow::Result<String> {
    let mut out = tty()?;
    let saved = if secret {
        Some(tcgetattr(&out).context("cannot read the terminal's modes")?)
    } else {
        None
    };
    let restore = Restore(match &saved {
        Some(modes) => Some((tty()?, modes.clone())),
        None => None,
    });
    if let Some(modes) = &saved {
        let mut quiet = modes.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        quiet.local_modes.insert(LocalModes::ECHONL);
        tcsetattr(&out, OptionalActions::Flush, &quiet).context("cannot turn echo off")?;
    }
    out.write_all(question.as_bytes())?;
    out.flush()?;
    let reader = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).map(|_| line)
    });
    let line = tokio::select! {
        r = reader => r.context("the terminal reader stopped")?.context("cannot read the terminal")?,
        _ = tokio::signal::ctrl_c() => {
            drop(restore);
            eprintln!();
            std::process::exit(130);
        }
    };
    drop(restore);
    if line.is_empty() {
        bail!("the terminal closed before an answer was typed");
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

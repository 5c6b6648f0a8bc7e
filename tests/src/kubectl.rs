//! The real `kubectl` running an exec credential plugin. The API server it talks to is a
//! stand-in on 127.0.0.1 (HTTPS with a test CA, since kubectl sends credentials only over TLS)
//! that answers every request and keeps the bearer token kubectl sends.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio::process::Command;

use crate::ldap::{program, test_ca};

/// Runs `kubectl get --raw /version` with a kubeconfig whose user is `user_yaml` (the body of
/// its `user:` entry, indented by 4 spaces), and returns the bearer token kubectl sent.
///
/// # Errors
/// If kubectl is missing or fails, or sends no bearer token.
pub async fn bearer_token_sent(
    dir: &Path,
    user_yaml: &str,
    env: &[(String, String)],
) -> anyhow::Result<String> {
    let (ca, cert, key) = test_ca(dir, "apiserver")?;
    let certs = rustls::pki_types::pem::PemObject::pem_file_iter(&cert)?
        .collect::<Result<Vec<rustls::pki_types::CertificateDer<'static>>, _>>()?;
    let key = rustls::pki_types::pem::PemObject::from_pem_file(&key)?;
    let tls = Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)?,
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: k8s\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority: {}\nusers:\n- name: user\n  user:\n{user_yaml}contexts:\n- name: user\n  context: {{cluster: k8s, user: user}}\ncurrent-context: user\n",
            ca.display()
        ),
    )?;
    // Answers every connection until kubectl has exited, keeping the bearer tokens it sent.
    listener.set_nonblocking(true)?;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = Arc::clone(&done);
    let server = std::thread::spawn(move || -> anyhow::Result<Vec<String>> {
        let mut tokens = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let tcp = match listener.accept() {
                Ok((tcp, _)) => tcp,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            tcp.set_nonblocking(false)?;
            let conn = rustls::ServerConnection::new(Arc::clone(&tls))?;
            let mut stream = BufReader::new(rustls::StreamOwned::new(conn, tcp));
            loop {
                let mut line = String::new();
                if stream.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("authorization")
                    && let Some(t) = v.trim().strip_prefix("Bearer ")
                {
                    tokens.push(t.to_owned());
                }
            }
            let _ = stream.get_mut().write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
            );
            let _ = stream.get_mut().flush();
        }
        Ok(tokens)
    });
    let out = Command::new(program("kubectl")?)
        .args(["get", "--raw", "/version", "--kubeconfig"])
        .arg(&kubeconfig)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .kill_on_drop(true)
        .output()
        .await
        .context("cannot run kubectl")?;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let tokens = tokio::task::spawn_blocking(move || server.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the stand-in API server panicked"))?;
    if !out.status.success() {
        bail!(
            "kubectl failed: {} (stand-in API server: {:?})",
            String::from_utf8_lossy(&out.stderr),
            tokens.as_ref().map(Vec::len)
        );
    }
    tokens?.pop().context("kubectl sent no bearer token")
}

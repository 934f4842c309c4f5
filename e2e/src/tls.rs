//! A certificate authority of a test's own and a server certificate it signed (for
//! `localhost` and `127.0.0.1`), made with the installed `openssl` command in a directory, for
//! Redis nodes that speak TLS ([`crate::redis_topology::SentinelOptions::tls`]). A client
//! trusts the CA with [`TestCa::certificates`] (redis-rs) or `SSL_CERT_FILE` ([`TestCa::ca`]:
//! what funcscale's programs and redis-py read).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;

/// The files: the CA's certificate, and the server's certificate and key.
#[derive(Clone, Debug)]
pub struct TestCa {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("run openssl (is it installed?)")?;
    anyhow::ensure!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

impl TestCa {
    /// Make a CA and a server certificate in `dir` (valid for two days).
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        let subj_ca = "/CN=funcscale-e2e-ca";
        openssl(
            dir,
            &[
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
                "ca.crt", "-days", "2", "-subj", subj_ca,
            ],
        )?;
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        )?;
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
        )?;
        Ok(Self {
            ca: dir.join("ca.crt"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
        })
    }

    /// The `redis.conf` lines that make a node (or a sentinel) speak TLS only, on `port`, and
    /// replicate (or, for a sentinel, reach the nodes and the other sentinels) over TLS.
    pub fn server_config(&self, port: u16) -> Vec<String> {
        vec![
            "port 0".into(),
            format!("tls-port {port}"),
            format!("tls-cert-file {}", self.cert.display()),
            format!("tls-key-file {}", self.key.display()),
            format!("tls-ca-cert-file {}", self.ca.display()),
            "tls-auth-clients no".into(),
            "tls-replication yes".into(),
        ]
    }

    /// The CA as redis-rs takes it ([`redis::Client::build_with_tls`]).
    pub fn certificates(&self) -> anyhow::Result<redis::TlsCertificates> {
        Ok(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(&self.ca)?),
        })
    }
}

//! Where and how to connect to the source database: libpq connection strings and `PG*`
//! variables, password redaction, and the TLS connector for each `sslmode`.
//!
//! In: a connection string (`DATABASE_URL`, libpq URL or `key=value` form) and the `PG*`
//! environment variables. Out: a `SourceConfig` whose `Debug` and `Display` never show the
//! password, and the TLS connector `Source::connect` uses. I/O: reads the environment and
//! the `sslrootcert` file; no network.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres_rustls::MakeRustlsConnect;

use super::error::SourceError;

/// Environment variable holding the source database's connection string.
pub const DATABASE_URL: &str = "DATABASE_URL";

/// How long to wait for a connection before giving up, unless the URL says otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS requirement, with libpq's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS when the server offers it, without certificate checks (libpq's default).
    Prefer,
    /// TLS always, without certificate checks.
    Require,
    /// TLS, certificate chain checked against the roots, host name not checked.
    VerifyCa,
    /// TLS, certificate chain and host name checked.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, SourceError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(SourceError::Config {
                    message: format!("`sslmode={other}` is not a TLS mode"),
                    hint: "use disable, prefer, require, verify-ca or verify-full".into(),
                });
            }
        })
    }
}

/// Where and how to connect. Its `Debug` and `Display` never show the password.
#[derive(Clone)]
pub struct SourceConfig {
    pub(super) pg: tokio_postgres::Config,
    ssl: SslMode,
    root_cert: Option<PathBuf>,
    /// The connection string with the password masked, for messages.
    pub(super) target: String,
    pub(super) password: Option<String>,
}

impl fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceConfig")
            .field("target", &self.target)
            .field("ssl", &self.ssl)
            .finish()
    }
}

impl fmt::Display for SourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.target)
    }
}

impl SourceConfig {
    /// From `DATABASE_URL`, else from `PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`,
    /// `PGDATABASE`, `PGSSLMODE`, `PGSSLROOTCERT`, `PGCONNECT_TIMEOUT`, `PGAPPNAME`.
    pub fn from_env() -> Result<SourceConfig, SourceError> {
        match std::env::var(DATABASE_URL) {
            Ok(url) if !url.trim().is_empty() => SourceConfig::parse(&url),
            _ => SourceConfig::parse(""),
        }
    }

    /// Parses a libpq connection string (`postgres://…` or `key=value …`). Settings it leaves
    /// out come from the `PG*` environment variables, then libpq's defaults.
    pub fn parse(conn: &str) -> Result<SourceConfig, SourceError> {
        let target = if conn.trim().is_empty() {
            "PG* environment variables".to_string()
        } else {
            redact(conn)
        };
        let (rest, sslmode) = take_option(conn, "sslmode");
        let (rest, rootcert) = take_option(&rest, "sslrootcert");
        let mut pg: tokio_postgres::Config = if rest.trim().is_empty() {
            tokio_postgres::Config::new()
        } else {
            rest.parse()
                .map_err(|e: tokio_postgres::Error| SourceError::Config {
                    message: format!(
                        "cannot read the connection string {target}: {}",
                        scrub(&e.to_string(), None)
                    ),
                    hint: "write `postgres://user@host:5432/dbname` or `host=… dbname=…`".into(),
                })?
        };
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if pg.get_hosts().is_empty() {
            match env("PGHOST") {
                Some(h) => {
                    for h in h.split(',') {
                        pg.host(h);
                    }
                }
                None if std::path::Path::new("/var/run/postgresql").exists() => {
                    pg.host_path("/var/run/postgresql");
                }
                None => {
                    pg.host("localhost");
                }
            }
        }
        if pg.get_ports().is_empty()
            && let Some(p) = env("PGPORT").and_then(|p| p.parse().ok())
        {
            pg.port(p);
        }
        if pg.get_user().is_none() {
            let user = env("PGUSER")
                .or_else(|| env("USER"))
                .unwrap_or_else(|| "postgres".into());
            pg.user(&user);
        }
        if pg.get_password().is_none()
            && let Some(p) = env("PGPASSWORD")
        {
            pg.password(p);
        }
        if pg.get_dbname().is_none()
            && let Some(d) = env("PGDATABASE")
        {
            pg.dbname(&d);
        }
        if pg.get_application_name().is_none() {
            pg.application_name(env("PGAPPNAME").unwrap_or_else(|| "kdit".into()));
        }
        if pg.get_connect_timeout().is_none() {
            let t = env("PGCONNECT_TIMEOUT")
                .and_then(|t| t.parse().ok())
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
            pg.connect_timeout(t);
        }
        let ssl = SslMode::parse(
            &sslmode
                .or_else(|| env("PGSSLMODE"))
                .unwrap_or_else(|| "prefer".into()),
        )?;
        // libpq never uses TLS over Unix-domain sockets.
        #[cfg(unix)]
        let ssl = if pg
            .get_hosts()
            .iter()
            .all(|h| matches!(h, tokio_postgres::config::Host::Unix(_)))
        {
            SslMode::Disable
        } else {
            ssl
        };
        pg.ssl_mode(match ssl {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let password = pg
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        Ok(SourceConfig {
            pg,
            ssl,
            root_cert: rootcert.or_else(|| env("PGSSLROOTCERT")).map(PathBuf::from),
            target,
            password,
        })
    }

    pub fn ssl_mode(&self) -> SslMode {
        self.ssl
    }

    /// The same server and credentials, another database.
    pub fn with_dbname(&self, dbname: &str) -> SourceConfig {
        let mut c = self.clone();
        c.pg.dbname(dbname);
        c.target = format!("{} (database {dbname})", self.target);
        c
    }

    /// libpq environment variables for the same connection, for running `psql`.
    /// Holds the password (as `PGPASSWORD`): pass it to a child process, never print it.
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        use tokio_postgres::config::Host;
        let mut env = Vec::new();
        if let Some(h) = self.pg.get_hosts().first() {
            env.push((
                "PGHOST",
                match h {
                    Host::Tcp(s) => s.clone(),
                    #[cfg(unix)]
                    Host::Unix(p) => p.display().to_string(),
                },
            ));
        }
        if let Some(p) = self.pg.get_ports().first() {
            env.push(("PGPORT", p.to_string()));
        }
        if let Some(u) = self.pg.get_user() {
            env.push(("PGUSER", u.to_string()));
        }
        if let Some(d) = self.pg.get_dbname() {
            env.push(("PGDATABASE", d.to_string()));
        }
        if let Some(p) = &self.password {
            env.push(("PGPASSWORD", p.clone()));
        }
        env.push((
            "PGSSLMODE",
            match self.ssl {
                SslMode::Disable => "disable",
                SslMode::Prefer => "prefer",
                SslMode::Require => "require",
                SslMode::VerifyCa => "verify-ca",
                SslMode::VerifyFull => "verify-full",
            }
            .to_string(),
        ));
        env
    }

    /// The connection string with its password masked.
    pub fn target(&self) -> &str {
        &self.target
    }
}

/// Removes `key` from a URL's query string or a key=value string, returning its value.
fn take_option(conn: &str, key: &str) -> (String, Option<String>) {
    if conn.contains("://") {
        let Some((base, query)) = conn.split_once('?') else {
            return (conn.to_string(), None);
        };
        let mut found = None;
        let kept: Vec<&str> = query
            .split('&')
            .filter(|kv| match kv.split_once('=') {
                Some((k, v)) if k == key => {
                    found = Some(v.to_string());
                    false
                }
                _ => true,
            })
            .collect();
        let s = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        (s, found)
    } else {
        let mut found = None;
        let kept: Vec<&str> = conn
            .split_whitespace()
            .filter(|kv| match kv.split_once('=') {
                Some((k, v)) if k.trim() == key => {
                    found = Some(v.trim_matches('\'').to_string());
                    false
                }
                _ => true,
            })
            .collect();
        (kept.join(" "), found)
    }
}

/// A connection string with any password replaced by `****`: the userinfo of a URL, a
/// `password=` query option, or a `password=` key in key=value form.
pub fn redact(conn: &str) -> String {
    if let Some(scheme_end) = conn.find("://") {
        let (scheme, rest) = conn.split_at(scheme_end + 3);
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let authority = match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.split_once(':') {
                    Some((user, _)) => format!("{user}:****{}", &authority[at..]),
                    None => authority.to_string(),
                }
            }
            None => authority.to_string(),
        };
        let tail = match tail.split_once('?') {
            Some((path, query)) => {
                let q: Vec<String> = query
                    .split('&')
                    .map(|kv| match kv.split_once('=') {
                        Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=****"),
                        _ => kv.to_string(),
                    })
                    .collect();
                format!("{path}?{}", q.join("&"))
            }
            None => tail.to_string(),
        };
        return format!("{scheme}{authority}{tail}");
    }
    // key=value form; values may be quoted with single quotes and contain spaces.
    let mut out = String::with_capacity(conn.len());
    let mut rest = conn;
    while let Some(pos) = find_key(rest, "password") {
        out.push_str(&rest[..pos]);
        let after_key = &rest[pos + "password".len()..];
        let eq = after_key.find('=').map(|i| i + 1).unwrap_or(0);
        out.push_str("password=****");
        let value = after_key[eq..].trim_start();
        let consumed = if let Some(q) = value.strip_prefix('\'') {
            let mut end = q.len();
            let mut chars = q.char_indices();
            while let Some((i, c)) = chars.next() {
                if c == '\\' {
                    chars.next();
                } else if c == '\'' {
                    end = i + 1;
                    break;
                }
            }
            1 + end
        } else {
            value.find(char::is_whitespace).unwrap_or(value.len())
        };
        let value_start = after_key.len() - value.len();
        rest = &after_key[value_start + consumed..];
    }
    out.push_str(rest);
    out
}

fn find_key(s: &str, key: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(p) = s[from..].find(key) {
        let at = from + p;
        let before_ok = at == 0 || s[..at].ends_with(char::is_whitespace);
        let after = s[at + key.len()..].trim_start();
        if before_ok && after.starts_with('=') {
            return Some(at);
        }
        from = at + key.len();
    }
    None
}

/// `message` with every occurrence of the password masked (belt and braces: drivers and
/// servers should not echo passwords, but a message is printed, so make sure).
pub(super) fn scrub(message: &str, password: Option<&str>) -> String {
    match password {
        Some(p) if !p.is_empty() => message.replace(p, "****"),
        _ => message.to_string(),
    }
}

/// A TLS connector, or none.
#[derive(Clone)]
pub(super) enum Tls {
    None,
    Rustls(MakeRustlsConnect),
}

pub(super) fn tls_connector(cfg: &SourceConfig) -> Result<Tls, SourceError> {
    use rustls::ClientConfig;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let all_unix = cfg
        .pg
        .get_hosts()
        .iter()
        .all(|h| matches!(h, tokio_postgres::config::Host::Unix(_)));
    // Like libpq, never TLS over a Unix socket (`prefer` means plain there).
    if cfg.ssl == SslMode::Disable || (cfg.ssl == SslMode::Prefer && all_unix) {
        return Ok(Tls::None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| SourceError::Config {
            message: format!("TLS setup failed: {e}"),
            hint: String::new(),
        })?;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &cfg.root_cert {
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| SourceError::Config {
            message: format!("cannot read sslrootcert {}: {e}", path.display()),
            hint: "point sslrootcert (or PGSSLROOTCERT) at a PEM file of CA certificates".into(),
        })?;
        for c in certs {
            let c = c.map_err(|e| SourceError::Config {
                message: format!("bad certificate in {}: {e}", path.display()),
                hint: String::new(),
            })?;
            roots.add(c).map_err(|e| SourceError::Config {
                message: format!("bad certificate in {}: {e}", path.display()),
                hint: String::new(),
            })?;
        }
    }
    let roots = Arc::new(roots);
    let config = match cfg.ssl {
        SslMode::VerifyFull => builder.with_root_certificates(roots).with_no_client_auth(),
        SslMode::VerifyCa => {
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                roots,
                provider.clone(),
            )
            .build()
            .map_err(|e| SourceError::Config {
                message: format!("TLS setup failed: {e}"),
                hint: String::new(),
            })?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verify::ChainOnly(inner)))
                .with_no_client_auth()
        }
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verify::NoCheck(provider)))
            .with_no_client_auth(),
    };
    Ok(Tls::Rustls(MakeRustlsConnect::new(config)))
}

mod verify {
    //! Certificate verifiers for libpq's `require`/`prefer` (encrypt, do not verify) and
    //! `verify-ca` (verify the chain, not the host name).
    use std::sync::Arc;

    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};

    #[derive(Debug)]
    pub struct NoCheck(pub Arc<CryptoProvider>);

    impl ServerCertVerifier for NoCheck {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    #[derive(Debug)]
    pub struct ChainOnly(pub Arc<WebPkiServerVerifier>);

    impl ServerCertVerifier for ChainOnly {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            match self
                .0
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            {
                Err(Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                other => other,
            }
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.0.verify_tls12_signature(message, cert, dss)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.0.verify_tls13_signature(message, cert, dss)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.supported_verify_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_everywhere() {
        assert_eq!(
            redact("postgres://kdit:s3cret@db.example.com:5432/app?sslmode=require"),
            "postgres://kdit:****@db.example.com:5432/app?sslmode=require"
        );
        assert_eq!(
            redact("postgresql://kdit@db/app?password=s3cret&sslmode=disable"),
            "postgresql://kdit@db/app?password=****&sslmode=disable"
        );
        assert_eq!(
            redact("host=db user=kdit password=s3cret dbname=app"),
            "host=db user=kdit password=**** dbname=app"
        );
        assert_eq!(
            redact("host=db password = 'with space\\' quote' dbname=app"),
            "host=db password=**** dbname=app"
        );
        assert_eq!(redact("postgres://u:p%40ss@h/d"), "postgres://u:****@h/d");
        assert_eq!(redact("postgres://h/d"), "postgres://h/d");
    }

    #[test]
    fn config_debug_and_display_hide_the_password() {
        let c = SourceConfig::parse("postgres://kdit:s3cret@127.0.0.1:5432/app?sslmode=disable")
            .unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(!c.to_string().contains("s3cret"));
        assert_eq!(c.ssl_mode(), SslMode::Disable);
    }

    #[test]
    fn sslmodes_parse() {
        for (s, m) in [
            ("disable", SslMode::Disable),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            let c = SourceConfig::parse(&format!("postgres://u@h/d?sslmode={s}")).unwrap();
            assert_eq!(c.ssl_mode(), m);
            let c = SourceConfig::parse(&format!("host=h user=u sslmode={s}")).unwrap();
            assert_eq!(c.ssl_mode(), m);
        }
        assert!(SourceConfig::parse("postgres://u@h/d?sslmode=maybe").is_err());
        assert!(
            tls_connector(&SourceConfig::parse("postgres://u@h/d?sslmode=verify-full").unwrap())
                .is_ok()
        );
    }

    #[test]
    fn unix_sockets_never_use_tls() {
        let c =
            SourceConfig::parse("host=/var/run/postgresql user=postgres sslmode=require").unwrap();
        assert_eq!(c.ssl_mode(), SslMode::Disable);
    }
}

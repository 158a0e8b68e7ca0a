//! PostgreSQL: connect, and stream the rows of a job's query.
//!
//! In: a connection string (`DATABASE_URL`, libpq URL or `key=value` form, else the usual
//! `PG*` variables) and a `RenderedQuery`. Out: a stream of typed rows (`Vec<Cell>`) and the
//! statement's columns, or a `SourceError` that names the job, the query file and line, the
//! server's message and hint. Does I/O (network).
//!
//! Queries run inside a `READ ONLY` transaction with `SET LOCAL statement_timeout`, values
//! travel as bind parameters, rows are streamed (tokio-postgres reads the socket only as fast
//! as rows are consumed, so memory stays flat) and a `CancelHandle` cancels the query on the
//! server. Passwords never appear in messages: see `redact`.

use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use futures::StreamExt;
use tokio_postgres::error::{ErrorPosition, SqlState};
use tokio_postgres::types::{FromSql, Kind, ToSql, Type};
use tokio_postgres::{CancelToken, Row, RowStream};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::job::query::{BindValue, ParamType, RenderedQuery};

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
    pg: tokio_postgres::Config,
    ssl: SslMode,
    root_cert: Option<PathBuf>,
    /// The connection string with the password masked, for messages.
    target: String,
    password: Option<String>,
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
fn scrub(message: &str, password: Option<&str>) -> String {
    match password {
        Some(p) if !p.is_empty() => message.replace(p, "****"),
        _ => message.to_string(),
    }
}

/// A TLS connector, or none.
#[derive(Clone)]
enum Tls {
    None,
    Rustls(MakeRustlsConnect),
}

fn tls_connector(cfg: &SourceConfig) -> Result<Tls, SourceError> {
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

/// Everything that can go wrong reading from PostgreSQL. `Display` gives the message and,
/// on following lines, `hint: …`.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{message}{}", fmt_hint(.hint))]
    Config { message: String, hint: String },
    #[error("cannot connect to PostgreSQL at {target}: {message}{}", fmt_hint(.hint))]
    Connect {
        target: String,
        message: String,
        hint: String,
    },
    #[error("queries run read-only: {context} tried to write: {message}{}", fmt_hint(&Some("a job's query may only read; do writes in a migration or a scheduled SQL job, not in kdit".to_string())))]
    ReadOnly { context: String, message: String },
    #[error("{context} timed out after {timeout} (statement_timeout){}", fmt_hint(&Some(format!("raise {setting} (now `{timeout}`), or make the query faster"))))]
    Timeout {
        context: String,
        timeout: String,
        /// Where the timeout is set: `query.timeout` in the job file, or `--timeout`.
        setting: String,
    },
    #[error("{context} was cancelled")]
    Cancelled { context: String },
    #[error("{0}")]
    Sql(Box<SqlFailure>),
    #[error("{context}: {message}{}", fmt_hint(.hint))]
    Columns {
        context: String,
        message: String,
        hint: Option<String>,
    },
    #[error("{context}: lost the connection to PostgreSQL: {message}")]
    Connection { context: String, message: String },
}

/// An error the server reported for the query, located in the query file.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {location}{message}{}{}", .excerpt.as_deref().map(|e| format!("\n{e}")).unwrap_or_default(), fmt_hint(.hint))]
pub struct SqlFailure {
    pub context: String,
    /// `file.sql:LINE: ` when the server gave a position.
    pub location: String,
    /// Source line in the query file, when known.
    pub line: Option<usize>,
    pub message: String,
    pub sqlstate: String,
    pub hint: Option<String>,
    pub excerpt: Option<String>,
}

fn fmt_hint(h: &impl HintText) -> String {
    match h.hint_text() {
        Some(h) if !h.is_empty() => format!("\nhint: {h}"),
        _ => String::new(),
    }
}

trait HintText {
    fn hint_text(&self) -> Option<&str>;
}
impl HintText for String {
    fn hint_text(&self) -> Option<&str> {
        Some(self)
    }
}
impl HintText for Option<String> {
    fn hint_text(&self) -> Option<&str> {
        self.as_deref()
    }
}

impl SourceError {
    /// The line of the query file the error points at, if any.
    pub fn line(&self) -> Option<usize> {
        match self {
            SourceError::Sql(f) => f.line,
            _ => None,
        }
    }
}

/// Asks a running query to stop: the server gets a cancel request and the query ends with
/// `SourceError::Cancelled`. Clones watch the same signal.
#[derive(Debug, Clone)]
pub struct Interrupt {
    rx: tokio::sync::watch::Receiver<bool>,
}

/// Fires an `Interrupt`.
#[derive(Debug)]
pub struct InterruptTrigger {
    tx: tokio::sync::watch::Sender<bool>,
}

impl InterruptTrigger {
    pub fn fire(&self) {
        let _ = self.tx.send(true);
    }
}

impl Interrupt {
    pub fn new() -> (InterruptTrigger, Interrupt) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (InterruptTrigger { tx }, Interrupt { rx })
    }

    /// An interrupt that fires when the user presses Ctrl-C; a second Ctrl-C exits (130).
    pub fn ctrl_c() -> Interrupt {
        let (trigger, interrupt) = Interrupt::new();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "interrupted: cancelling the query on the server (Ctrl-C again to quit now)"
                );
                trigger.fire();
                // Once this handler is installed Ctrl-C no longer ends the process: a second
                // one must, in case the cancel request itself hangs.
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
        interrupt
    }

    /// Resolves once fired (never, if the trigger is dropped unfired).
    async fn fired(&mut self) {
        if self.rx.wait_for(|v| *v).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// What a query run is part of, for messages and limits.
#[derive(Debug, Clone, Default)]
pub struct RunContext {
    /// Cancels the query on the server when fired (e.g. `Interrupt::ctrl_c()`).
    pub interrupt: Option<Interrupt>,
    /// The job's name, when running for a job.
    pub job: Option<String>,
    /// `statement_timeout` for the query.
    pub timeout: Option<Duration>,
    /// Stop after this many rows (wraps the query in `select * from (…) q limit N`).
    pub limit: Option<u64>,
}

impl RunContext {
    fn describe(&self, q: &RenderedQuery) -> String {
        match &self.job {
            Some(j) => format!("job `{j}`, query {}", q.label),
            None => format!("query {}", q.label),
        }
    }
}

/// A json/jsonb value; one nested past serde_json's depth limit becomes `Cell::Unreadable`
/// so only its row is rejected. Other parse errors (which PostgreSQL never sends) stay errors.
fn json_cell(raw: &[u8]) -> Result<Cell, serde_json::Error> {
    match serde_json::from_slice(raw) {
        Ok(v) => Ok(Cell::Json(v)),
        Err(e) if e.to_string().contains("recursion limit exceeded") => Ok(Cell::Unreadable(
            "JSON nested deeper than 128 levels".to_string(),
        )),
        Err(e) => Err(e),
    }
}

/// A result column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// PostgreSQL's name for the type (`text`, `numeric`, `_int4`, an enum's name, …).
    pub type_name: String,
    /// Whether kdit can read values of this type.
    pub supported: bool,
}

/// A connection pool to the source database.
#[derive(Clone)]
pub struct Source {
    pool: Pool,
    tls: Tls,
    config: SourceConfig,
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("target", &self.config.target)
            .finish()
    }
}

const CONNECT_ATTEMPTS: u32 = 4;

impl Source {
    /// Builds the pool and opens one connection to check the server is there. Retries a
    /// refused connection a few times with backoff (a server that is starting up); any other
    /// failure is reported at once.
    pub async fn connect(config: SourceConfig) -> Result<Source, SourceError> {
        let tls = tls_connector(&config)?;
        let mgr_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &tls {
            Tls::None => Manager::from_config(config.pg.clone(), tokio_postgres::NoTls, mgr_config),
            Tls::Rustls(t) => Manager::from_config(config.pg.clone(), t.clone(), mgr_config),
        };
        let timeout = config
            .pg
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let pool = Pool::builder(manager)
            .max_size(4)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(timeout + Duration::from_secs(1)))
            .wait_timeout(Some(timeout * 3))
            .build()
            .map_err(|e| SourceError::Config {
                message: format!("cannot set up the connection pool: {e}"),
                hint: String::new(),
            })?;
        let source = Source { pool, tls, config };
        drop(source.client().await?);
        Ok(source)
    }

    /// The connection string, password masked.
    pub fn target(&self) -> &str {
        &self.config.target
    }

    /// A pooled connection, retrying a refused connection with backoff.
    pub async fn client(&self) -> Result<Object, SourceError> {
        let mut delay = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            match self.pool.get().await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    let refused = is_refused(&e);
                    if refused && attempt < CONNECT_ATTEMPTS {
                        tracing::debug!(attempt, "connection refused; retrying");
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                        attempt += 1;
                        continue;
                    }
                    return Err(self.connect_error(&e, refused, attempt));
                }
            }
        }
    }

    fn connect_error(
        &self,
        e: &deadpool_postgres::PoolError,
        refused: bool,
        attempts: u32,
    ) -> SourceError {
        use deadpool_postgres::PoolError;
        let password = self.config.password.as_deref();
        let (message, hint) = match e {
            PoolError::Backend(pg) => {
                let code = pg.code().cloned();
                let msg = match pg.as_db_error() {
                    Some(db) => db.message().to_string(),
                    None => error_chain(pg),
                };
                let hint = if refused {
                    format!(
                        "nothing accepts connections there ({attempts} attempts); is PostgreSQL running, and are host and port right? \
                         Set DATABASE_URL or PGHOST/PGPORT"
                    )
                } else if code == Some(SqlState::INVALID_PASSWORD)
                    || code == Some(SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
                {
                    "check the user name and password in DATABASE_URL (or PGUSER/PGPASSWORD)".into()
                } else if code == Some(SqlState::INVALID_CATALOG_NAME) {
                    "check the database name in DATABASE_URL (or PGDATABASE)".into()
                } else if msg.contains("TLS") || msg.contains("tls") || msg.contains("certificate")
                {
                    "check sslmode: `disable` for servers without TLS, `verify-full` needs a certificate trusted by the roots (sslrootcert)".into()
                } else {
                    String::new()
                };
                (msg, hint)
            }
            PoolError::Timeout(_) => (
                "timed out while connecting".to_string(),
                "raise connect_timeout in DATABASE_URL (seconds), or check the network path".into(),
            ),
            other => (other.to_string(), String::new()),
        };
        SourceError::Connect {
            target: self.config.target.clone(),
            message: scrub(&message, password),
            hint,
        }
    }

    /// The columns of a query, by running it with `LIMIT 0` in a read-only transaction.
    pub async fn describe(
        &self,
        q: &RenderedQuery,
        ctx: &RunContext,
    ) -> Result<Vec<Column>, SourceError> {
        let ctx = RunContext {
            limit: Some(0),
            ..ctx.clone()
        };
        let mut rows = self.stream(q, &ctx).await?;
        let columns = rows.columns().to_vec();
        while let Some(r) = rows.next().await {
            r?;
        }
        rows.finish().await?;
        Ok(columns)
    }

    /// Starts a query: begins a read-only transaction, sets the timeout, prepares and
    /// executes the statement. Rows arrive through `Rows::next`.
    pub async fn stream(&self, q: &RenderedQuery, ctx: &RunContext) -> Result<Rows, SourceError> {
        let client = self.client().await?;
        let context = ctx.describe(q);
        let (sql, prefix_chars) = match ctx.limit {
            Some(n) => {
                let prefix = "select * from (\n";
                (
                    format!(
                        "{prefix}{}\n) kdit_q limit {n}",
                        strip_trailing_semicolons(&q.sql)
                    ),
                    prefix.chars().count(),
                )
            }
            None => (q.sql.clone(), 0),
        };
        let mut setup = String::from("begin transaction read only");
        if let Some(t) = ctx.timeout {
            setup.push_str(&format!(
                "; set local statement_timeout = {}",
                t.as_millis().max(1)
            ));
        }
        let mapper = ErrorMapper {
            query: q.clone(),
            context: context.clone(),
            prefix_chars,
            timeout: ctx.timeout,
            job: ctx.job.is_some(),
        };
        if let Err(e) = client.batch_execute(&setup).await {
            return Err(mapper.map(&e));
        }
        let types: Vec<Type> = q.binds.iter().map(|b| bind_type(b.ty)).collect();
        let stmt = match client.prepare_typed(&sql, &types).await {
            Ok(s) => s,
            Err(e) => {
                let _ = client.batch_execute("rollback").await;
                return Err(mapper.map(&e));
            }
        };
        let columns: Vec<Column> = stmt
            .columns()
            .iter()
            .map(|c| Column {
                name: c.name().to_string(),
                type_name: c.type_().name().to_string(),
                supported: supported(c.type_()),
            })
            .collect();
        let unsupported: Vec<String> = columns
            .iter()
            .filter(|c| !c.supported)
            .map(|c| format!("`{}` ({})", c.name, c.type_name))
            .collect();
        if !unsupported.is_empty() {
            let _ = client.batch_execute("rollback").await;
            return Err(SourceError::Columns {
                context,
                message: format!(
                    "kdit cannot read columns of type {}",
                    unsupported.join(", ")
                ),
                hint: Some("cast them in the query, e.g. `col::text`".into()),
            });
        }
        let params: Vec<&(dyn ToSql + Sync)> =
            q.binds.iter().map(|b| bind_value(&b.value)).collect();
        let cancel = CancelHandle {
            token: client.cancel_token(),
            tls: self.tls.clone(),
        };
        // The server flushes nothing until the first rows are ready, so a slow query blocks
        // here: watch the interrupt meanwhile.
        let query = client.query_raw(&stmt, params);
        let mut interrupt = ctx.interrupt.clone();
        let mut cancel_sent = false;
        let result = match interrupt.as_mut() {
            Some(i) => {
                tokio::pin!(query);
                tokio::select! {
                    r = &mut query => r,
                    _ = i.fired() => {
                        cancel_sent = true;
                        let _ = cancel.cancel().await;
                        query.await
                    }
                }
            }
            None => query.await,
        };
        let stream = match result {
            Ok(s) => s,
            Err(e) => {
                let _ = client.batch_execute("rollback").await;
                return Err(mapper.map(&e));
            }
        };
        Ok(Rows {
            columns,
            decoder: None,
            stream: Box::pin(stream),
            client: Some(client),
            mapper,
            cancel,
            interrupt: if cancel_sent { None } else { interrupt },
            rows: 0,
            done: false,
        })
    }
}

fn strip_trailing_semicolons(sql: &str) -> &str {
    let mut s = sql.trim_end();
    while let Some(t) = s.strip_suffix(';') {
        s = t.trim_end();
    }
    s
}

fn is_refused(e: &deadpool_postgres::PoolError) -> bool {
    use std::error::Error as _;
    let deadpool_postgres::PoolError::Backend(pg) = e else {
        return false;
    };
    let mut src: Option<&(dyn std::error::Error + 'static)> = pg.source();
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        src = s.source();
    }
    false
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

/// Cancels a running query on the server (PostgreSQL's cancel request, on a new connection).
#[derive(Clone)]
pub struct CancelHandle {
    token: CancelToken,
    tls: Tls,
}

impl CancelHandle {
    pub async fn cancel(&self) -> Result<(), String> {
        let r = match &self.tls {
            Tls::None => self.token.cancel_query(tokio_postgres::NoTls).await,
            Tls::Rustls(t) => self.token.cancel_query(t.clone()).await,
        };
        r.map_err(|e| e.to_string())
    }
}

/// The rows of a running query, in order, one at a time.
pub struct Rows {
    columns: Vec<Column>,
    /// How `next` reads the columns, chosen at the first row.
    decoder: Option<RowDecoder>,
    stream: Pin<Box<RowStream>>,
    /// Held for the transaction's lifetime. `None` once finished.
    client: Option<Object>,
    mapper: ErrorMapper,
    cancel: CancelHandle,
    /// Watched until it fires once.
    interrupt: Option<Interrupt>,
    rows: u64,
    done: bool,
}

impl Rows {
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    /// Rows read so far.
    pub fn count(&self) -> u64 {
        self.rows
    }

    /// The next row's values, one per column.
    pub async fn next(&mut self) -> Option<Result<Vec<Cell>, SourceError>> {
        let row = match self.next_raw().await? {
            Ok(row) => row,
            Err(e) => return Some(Err(e)),
        };
        let decoder = self.decoder.get_or_insert_with(|| RowDecoder::of(&row));
        let mut cells = Vec::with_capacity(self.columns.len());
        match decoder.decode_into(&row, &self.columns, &mut cells) {
            Ok(()) => Some(Ok(cells)),
            Err(e) => {
                self.done = true;
                Some(Err(self.unreadable(self.rows, e)))
            }
        }
    }

    /// The error for a row `decode_row` could not read: it ends the query.
    pub fn unreadable(&self, row_number: u64, e: Undecodable) -> SourceError {
        SourceError::Columns {
            context: self.mapper.context.clone(),
            message: format!(
                "cannot read column `{}` of row {row_number}: {}",
                e.column, e.detail
            ),
            hint: None,
        }
    }

    /// The next row as PostgreSQL sent it, not yet decoded (`decode_row` decodes it, on any
    /// thread).
    pub async fn next_raw(&mut self) -> Option<Result<Row, SourceError>> {
        let mut one = Vec::with_capacity(1);
        loop {
            match self.next_batch(&mut one, 1).await {
                Err(e) => return Some(Err(e)),
                Ok(more) => {
                    if let Some(row) = one.pop() {
                        return Some(Ok(row));
                    }
                    if !more {
                        return None;
                    }
                    // The interrupt fired: read on, to the server's "canceled" error.
                }
            }
        }
    }

    /// Up to `max` more rows into `out`, as PostgreSQL sent them (`next_raw` a batch at a time:
    /// the interrupt is watched once for the batch, not once a row). `Ok(true)` while more
    /// rows may come; an error ends the rows, after the rows before it.
    pub async fn next_batch(
        &mut self,
        out: &mut Vec<Row>,
        max: usize,
    ) -> Result<bool, SourceError> {
        if self.done {
            return Ok(false);
        }
        let before = out.len();
        let Rows {
            stream,
            interrupt,
            cancel,
            ..
        } = self;
        // Some(result) when the rows ended (or failed); None when the batch is full.
        let read = async {
            while out.len() < max {
                match stream.next().await {
                    Some(Ok(row)) => out.push(row),
                    Some(Err(e)) => return Some(Err(e)),
                    None => return Some(Ok(())),
                }
            }
            None
        };
        let ended = match interrupt.as_mut() {
            Some(i) => {
                tokio::select! {
                    ended = read => ended,
                    _ = i.fired() => {
                        // Rows already read stay in `out`; the next call reads on, unwatched,
                        // to the server's "canceled" error.
                        *interrupt = None;
                        let _ = cancel.cancel().await;
                        None
                    }
                }
            }
            None => read.await,
        };
        self.rows += (out.len() - before) as u64;
        match ended {
            None => Ok(true),
            Some(Ok(())) => {
                self.done = true;
                Ok(false)
            }
            Some(Err(e)) => {
                self.done = true;
                Err(self.mapper.map(&e))
            }
        }
    }

    /// Ends the read-only transaction and returns the connection to the pool.
    pub async fn finish(mut self) -> Result<u64, SourceError> {
        if let Some(client) = self.client.take() {
            client
                .batch_execute("commit")
                .await
                .map_err(|e| self.mapper.map(&e))?;
        }
        Ok(self.rows)
    }
}

impl Drop for Rows {
    fn drop(&mut self) {
        // Dropped mid-query: the connection is inside a transaction with a statement
        // running, so it must not go back to the pool. Taking it closes it.
        if let Some(client) = self.client.take() {
            drop(Object::take(client));
        }
    }
}

/// Turns server errors into messages about the user's query file.
#[derive(Debug, Clone)]
struct ErrorMapper {
    query: RenderedQuery,
    context: String,
    /// Characters added before the query's text (the `LIMIT` wrapper).
    prefix_chars: usize,
    timeout: Option<Duration>,
    /// Running for a job (rather than `kdit query run`).
    job: bool,
}

impl ErrorMapper {
    fn map(&self, e: &tokio_postgres::Error) -> SourceError {
        let context = self.context.clone();
        let Some(db) = e.as_db_error() else {
            if e.is_closed() {
                return SourceError::Connection {
                    context,
                    message: error_chain(e),
                };
            }
            return SourceError::Connection {
                context,
                message: error_chain(e),
            };
        };
        let code = db.code();
        if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
            return SourceError::ReadOnly {
                context,
                message: db.message().to_string(),
            };
        }
        if *code == SqlState::QUERY_CANCELED {
            if db.message().contains("statement timeout") {
                return SourceError::Timeout {
                    setting: if self.job {
                        "`query.timeout` in the job file".into()
                    } else {
                        "`--timeout`".into()
                    },
                    context,
                    timeout: self
                        .timeout
                        .map(|t| humantime::format_duration(t).to_string())
                        .unwrap_or_else(|| "the server's statement_timeout".into()),
                };
            }
            return SourceError::Cancelled { context };
        }
        let (location, line, excerpt) = match db.position() {
            Some(ErrorPosition::Original(pos)) => self.locate(*pos as usize),
            _ => (String::new(), None, None),
        };
        let mut hint = db.hint().map(str::to_string);
        if db
            .message()
            .contains("multiple commands into a prepared statement")
        {
            hint = Some("a job's query is one statement: remove the `;` between statements".into());
        }
        if let Some(d) = db.detail() {
            hint = Some(match hint {
                Some(h) => format!("{h} ({d})"),
                None => d.to_string(),
            });
        }
        SourceError::Sql(Box::new(SqlFailure {
            context,
            location,
            line,
            message: db.message().to_string(),
            sqlstate: code.code().to_string(),
            hint,
            excerpt,
        }))
    }

    /// The query file's line for a 1-based character position in the SQL sent.
    fn locate(&self, pos: usize) -> (String, Option<usize>, Option<String>) {
        let Some(idx) = pos.checked_sub(1 + self.prefix_chars) else {
            return (String::new(), None, None);
        };
        let sql = &self.query.sql;
        // Past the end (end of input, or the LIMIT wrapper's tail): point just after the
        // query's last visible character.
        let count = sql.chars().count();
        let idx = if idx >= count {
            sql.trim_end().chars().count().saturating_sub(1)
        } else {
            idx
        };
        let mut line = 1;
        let mut col: usize = 1;
        let mut found = false;
        for (i, ch) in sql.chars().enumerate() {
            if i == idx {
                found = true;
                break;
            }
            if ch == '\n' {
                line += 1;
                col = 1;
            } else {
                col += 1;
            }
        }
        if !found {
            return (String::new(), None, None);
        }
        let text = sql.lines().nth(line - 1).unwrap_or_default();
        let caret = format!("{}^", " ".repeat(col.saturating_sub(1)));
        match self.query.source_line(line) {
            Some(src) => (
                format!("{}:{src}: ", self.query.label),
                Some(src),
                Some(format!("  {src:>4} | {text}\n       | {caret}")),
            ),
            None => (
                format!("line {line} of the rendered query: "),
                None,
                Some(format!("  {line:>4} | {text}\n       | {caret}")),
            ),
        }
    }
}

/// The PostgreSQL type a parameter is bound as. Numeric and interval travel as text and are
/// cast in SQL (`$1::interval`), so humane durations and exact decimals need no float.
fn bind_type(ty: ParamType) -> Type {
    match ty {
        ParamType::Text | ParamType::Numeric | ParamType::Interval => Type::TEXT,
        ParamType::Int => Type::INT4,
        ParamType::BigInt => Type::INT8,
        ParamType::Bool => Type::BOOL,
        ParamType::Date => Type::DATE,
        ParamType::Timestamptz => Type::TIMESTAMPTZ,
        ParamType::TextArray => Type::TEXT_ARRAY,
        ParamType::IntArray => Type::INT4_ARRAY,
    }
}

fn bind_value(v: &BindValue) -> &(dyn ToSql + Sync) {
    match v {
        BindValue::Text(s) | BindValue::Numeric(s) | BindValue::Interval(s) => s,
        BindValue::Int(i) => i,
        BindValue::BigInt(i) => i,
        BindValue::Bool(b) => b,
        BindValue::Date(d) => d,
        BindValue::Timestamptz(t) => t,
        BindValue::TextArray(a) => a,
        BindValue::IntArray(a) => a,
    }
}

/// One value of a result row.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// Exact decimal digits as PostgreSQL has them (`412.50`), or `NaN`/`Infinity`/`-Infinity`.
    Numeric(String),
    Text(String),
    /// `None` for `infinity`/`-infinity` (kept as text in `Text`).
    Date(NaiveDate),
    /// A `timestamp without time zone`, taken to be UTC.
    Timestamp(NaiveDateTime),
    Timestamptz(DateTime<Utc>),
    Uuid(uuid::Uuid),
    Json(serde_json::Value),
    Array(Vec<Cell>),
    /// A value PostgreSQL sent that kdit cannot represent (JSON nested deeper than the
    /// decoder allows): the row is rejected, the query goes on.
    Unreadable(String),
}

impl Cell {
    pub fn is_null(&self) -> bool {
        matches!(self, Cell::Null)
    }

    /// The value as text, as `psql` would show it (without quoting).
    pub fn to_text(&self) -> Option<String> {
        Some(match self {
            Cell::Null => return None,
            Cell::Bool(b) => b.to_string(),
            Cell::Int(i) => i.to_string(),
            Cell::Float(f) => f.to_string(),
            Cell::Numeric(s) | Cell::Text(s) => s.clone(),
            Cell::Date(d) => d.format("%Y-%m-%d").to_string(),
            Cell::Timestamp(t) => format_datetime(&t.and_utc()),
            Cell::Timestamptz(t) => format_datetime(t),
            Cell::Uuid(u) => u.to_string(),
            Cell::Json(j) => j.to_string(),
            Cell::Unreadable(why) => format!("<{why}>"),
            Cell::Array(items) => {
                let parts: Vec<String> = items
                    .iter()
                    .map(|c| c.to_text().unwrap_or_else(|| "NULL".into()))
                    .collect();
                format!("{{{}}}", parts.join(","))
            }
        })
    }
}

/// RFC 3339 in UTC with `Z`, seconds precision unless there are fractions.
pub fn format_datetime(t: &DateTime<Utc>) -> String {
    let mut out = Vec::with_capacity(30);
    write_datetime(&mut out, t);
    // ASCII digits and separators, or chrono's text: always UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

/// `format_datetime`, written at the end of `out`.
pub fn write_datetime(out: &mut Vec<u8>, t: &DateTime<Utc>) {
    use chrono::{Datelike as _, Timelike as _};
    let nanos = t.timestamp_subsec_nanos();
    // Years 0–9999 without a leap second, by hand: this runs for every timestamp of every
    // row. The same text as chrono's `to_rfc3339_opts(AutoSi, true)` (a test compares them).
    if !(0..=9999).contains(&t.year()) || nanos >= 1_000_000_000 {
        out.extend_from_slice(
            t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
                .as_bytes(),
        );
        return;
    }
    push_digits(out, t.year() as u32, 4);
    for (sep, n) in [
        (b'-', t.month()),
        (b'-', t.day()),
        (b'T', t.hour()),
        (b':', t.minute()),
        (b':', t.second()),
    ] {
        out.push(sep);
        push_digits(out, n, 2);
    }
    let (frac, width) = match nanos {
        0 => (0, 0),
        n if n % 1_000_000 == 0 => (n / 1_000_000, 3),
        n if n % 1_000 == 0 => (n / 1_000, 6),
        n => (n, 9),
    };
    if width > 0 {
        out.push(b'.');
        push_digits(out, frac, width);
    }
    out.push(b'Z');
}

/// `n` in decimal, zero-padded to `width` digits (`n` has at most `width`).
fn push_digits(out: &mut Vec<u8>, n: u32, width: u32) {
    for p in (0..width).rev() {
        out.push(b'0' + (n / 10u32.pow(p) % 10) as u8);
    }
}

fn supported(ty: &Type) -> bool {
    match ty.kind() {
        Kind::Enum(_) => true,
        Kind::Domain(inner) => supported(inner),
        Kind::Array(inner) => supported(inner),
        _ => {
            matches!(
                *ty,
                Type::BOOL
                    | Type::INT2
                    | Type::INT4
                    | Type::INT8
                    | Type::OID
                    | Type::FLOAT4
                    | Type::FLOAT8
                    | Type::NUMERIC
                    | Type::TEXT
                    | Type::VARCHAR
                    | Type::BPCHAR
                    | Type::NAME
                    | Type::CHAR
                    | Type::UNKNOWN
                    | Type::DATE
                    | Type::TIMESTAMP
                    | Type::TIMESTAMPTZ
                    | Type::UUID
                    | Type::JSON
                    | Type::JSONB
                    | Type::VOID
            ) || ty.name() == "citext"
        }
    }
}

type BoxError = Box<dyn std::error::Error + Sync + Send>;

fn take<const N: usize>(raw: &[u8]) -> Result<[u8; N], BoxError> {
    raw.get(..N)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| "truncated value".into())
}

const PG_EPOCH_DAYS_FROM_CE: i32 = 730_120; // 2000-01-01

/// How a column's values are read, chosen once per column from its type (matching a type
/// against every case for each value costs more than reading most values).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decoder {
    Bool,
    Int2,
    Int4,
    Oid,
    Int8,
    Float4,
    Float8,
    Numeric,
    Char,
    Date,
    Timestamp,
    Timestamptz,
    Uuid,
    Void,
    Json,
    Jsonb,
    /// text, varchar, bpchar, name, unknown, citext, enums: UTF-8 text on the wire.
    Text,
    /// Text no one reads (`RowDecoder::reading`): checked as `Text` checks it, then NULL.
    Unread,
    /// Domains and arrays: worked out from the type for each value.
    ByType,
}

impl Decoder {
    pub fn of(ty: &Type) -> Decoder {
        match ty.kind() {
            Kind::Domain(_) | Kind::Array(_) => return Decoder::ByType,
            Kind::Enum(_) => return Decoder::Text,
            _ => {}
        }
        match *ty {
            Type::BOOL => Decoder::Bool,
            Type::INT2 => Decoder::Int2,
            Type::INT4 => Decoder::Int4,
            Type::OID => Decoder::Oid,
            Type::INT8 => Decoder::Int8,
            Type::FLOAT4 => Decoder::Float4,
            Type::FLOAT8 => Decoder::Float8,
            Type::NUMERIC => Decoder::Numeric,
            Type::CHAR => Decoder::Char,
            Type::DATE => Decoder::Date,
            Type::TIMESTAMP => Decoder::Timestamp,
            Type::TIMESTAMPTZ => Decoder::Timestamptz,
            Type::UUID => Decoder::Uuid,
            Type::VOID => Decoder::Void,
            Type::JSON => Decoder::Json,
            Type::JSONB => Decoder::Jsonb,
            _ => Decoder::Text,
        }
    }
}

fn decode(ty: &Type, raw: &[u8]) -> Result<Cell, BoxError> {
    decode_as(Decoder::of(ty), ty, raw)
}

fn decode_as(d: Decoder, ty: &Type, raw: &[u8]) -> Result<Cell, BoxError> {
    Ok(match d {
        Decoder::ByType => match ty.kind() {
            Kind::Domain(inner) => return decode(inner, raw),
            Kind::Array(inner) => return decode_array(inner, raw),
            _ => Cell::Text(std::str::from_utf8(raw)?.to_string()),
        },
        Decoder::Bool => Cell::Bool(take::<1>(raw)?[0] != 0),
        Decoder::Int2 => Cell::Int(i16::from_be_bytes(take(raw)?) as i64),
        Decoder::Int4 => Cell::Int(i32::from_be_bytes(take(raw)?) as i64),
        Decoder::Oid => Cell::Int(u32::from_be_bytes(take(raw)?) as i64),
        Decoder::Int8 => Cell::Int(i64::from_be_bytes(take(raw)?)),
        // Through the shortest decimal of the f32, so `1.1::float4` is 1.1, not 1.100000023841858.
        Decoder::Float4 => {
            let x = f32::from_be_bytes(take(raw)?);
            Cell::Float(x.to_string().parse::<f64>().unwrap_or(x as f64))
        }
        Decoder::Float8 => Cell::Float(f64::from_be_bytes(take(raw)?)),
        Decoder::Numeric => Cell::Numeric(decode_numeric(raw)?),
        Decoder::Char => Cell::Text((take::<1>(raw)?[0] as char).to_string()),
        Decoder::Date => {
            let days = i32::from_be_bytes(take(raw)?);
            match days {
                i32::MAX => Cell::Text("infinity".into()),
                i32::MIN => Cell::Text("-infinity".into()),
                d => Cell::Date(
                    NaiveDate::from_num_days_from_ce_opt(PG_EPOCH_DAYS_FROM_CE + d)
                        .ok_or("date out of range")?,
                ),
            }
        }
        Decoder::Timestamp | Decoder::Timestamptz => {
            let micros = i64::from_be_bytes(take(raw)?);
            match micros {
                i64::MAX => Cell::Text("infinity".into()),
                i64::MIN => Cell::Text("-infinity".into()),
                m => {
                    let t = DateTime::from_timestamp_micros(m + 946_684_800_000_000)
                        .ok_or("timestamp out of range")?;
                    if d == Decoder::Timestamp {
                        Cell::Timestamp(t.naive_utc())
                    } else {
                        Cell::Timestamptz(t)
                    }
                }
            }
        }
        Decoder::Uuid => Cell::Uuid(uuid::Uuid::from_slice(raw)?),
        Decoder::Void => Cell::Null,
        Decoder::Json => json_cell(raw)?,
        Decoder::Jsonb => {
            let (version, rest) = raw.split_first().ok_or("empty jsonb")?;
            if *version != 1 {
                return Err(format!("unsupported jsonb version {version}").into());
            }
            json_cell(rest)?
        }
        Decoder::Text => Cell::Text(std::str::from_utf8(raw)?.to_string()),
        Decoder::Unread => {
            std::str::from_utf8(raw)?;
            Cell::Null
        }
    })
}

/// Binary array format: ndim, has-null flag, element oid, (dim, lower bound) per dimension,
/// then length-prefixed elements. Multi-dimensional arrays are flattened.
fn decode_array(elem: &Type, raw: &[u8]) -> Result<Cell, BoxError> {
    let ndim = i32::from_be_bytes(take(raw)?);
    if ndim == 0 {
        return Ok(Cell::Array(Vec::new()));
    }
    let mut at = 12;
    let mut total: usize = 1;
    for _ in 0..ndim {
        let dim = i32::from_be_bytes(take(&raw[at.min(raw.len())..])?);
        total = total.saturating_mul(dim.max(0) as usize);
        at += 8;
    }
    let mut items = Vec::with_capacity(total.min(1 << 16));
    for _ in 0..total {
        let len = i32::from_be_bytes(take(raw.get(at..).ok_or("truncated array")?)?);
        at += 4;
        if len < 0 {
            items.push(Cell::Null);
        } else {
            let end = at + len as usize;
            let bytes = raw.get(at..end).ok_or("truncated array")?;
            items.push(decode(elem, bytes)?);
            at = end;
        }
    }
    Ok(Cell::Array(items))
}

/// Binary numeric: ndigits, weight, sign, dscale, then base-10000 digits. Decoded to the
/// exact decimal text PostgreSQL would print.
pub(crate) fn decode_numeric(raw: &[u8]) -> Result<String, BoxError> {
    let field = |off: usize| -> Result<[u8; 2], BoxError> {
        take(raw.get(off..).ok_or("truncated numeric")?)
    };
    let ndigits = i16::from_be_bytes(field(0)?).max(0) as usize;
    let weight = i16::from_be_bytes(field(2)?) as i32;
    let sign = u16::from_be_bytes(field(4)?);
    let dscale = u16::from_be_bytes(field(6)?) as usize;
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        _ => {}
    }
    let mut digits = Vec::with_capacity(ndigits);
    for i in 0..ndigits {
        let off = 8 + i * 2;
        digits.push(u16::from_be_bytes(take(
            raw.get(off..).ok_or("truncated numeric")?,
        )?));
    }
    let digit = |k: i32| -> u16 {
        if k < 0 {
            0
        } else {
            digits.get(k as usize).copied().unwrap_or(0)
        }
    };
    let mut s = String::with_capacity((weight.max(0) as usize + 1) * 4 + dscale + 2);
    if sign == 0x4000 {
        s.push('-');
    }
    // Base-10000 digits as four decimal digits each, without `fmt` (this runs per value).
    let push4 = |s: &mut String, d: u16| {
        let d = d.min(9999);
        for div in [1000, 100, 10, 1] {
            s.push(char::from(b'0' + (d / div % 10) as u8));
        }
    };
    if weight < 0 {
        s.push('0');
    } else {
        for k in 0..=weight {
            let d = digit(k);
            if k == 0 {
                // The leading group without its leading zeros.
                let mut started = false;
                for div in [1000, 100, 10, 1] {
                    let x = (d.min(9999) / div % 10) as u8;
                    if x != 0 || started || div == 1 {
                        started = true;
                        s.push(char::from(b'0' + x));
                    }
                }
            } else {
                push4(&mut s, d);
            }
        }
    }
    if dscale > 0 {
        s.push('.');
        let start = s.len();
        let mut j = 1;
        while s.len() - start < dscale {
            push4(&mut s, digit(weight + j));
            j += 1;
        }
        s.truncate(start + dscale);
    }
    Ok(s)
}

/// A value `decode_row` could not read: the column, and why.
#[derive(Debug, Clone)]
pub struct Undecodable {
    pub column: String,
    pub detail: String,
}

/// A row's values, one per column.
pub fn decode_row(row: &Row, columns: &[Column]) -> Result<Vec<Cell>, Undecodable> {
    let mut cells = Vec::with_capacity(columns.len());
    RowDecoder::of(row).decode_into(row, columns, &mut cells)?;
    Ok(cells)
}

/// Reads rows of one query: each column's `Decoder`, chosen once.
#[derive(Debug, Clone)]
pub struct RowDecoder(Vec<Decoder>);

impl RowDecoder {
    /// The decoders for rows shaped like `row` (every row of a query has the same columns).
    pub fn of(row: &Row) -> RowDecoder {
        RowDecoder(
            row.columns()
                .iter()
                .map(|c| Decoder::of(c.type_()))
                .collect(),
        )
    }

    /// Like `of`, for readers of some columns only (`read[i]`: column `i` is read): text in
    /// the other columns is checked as it would be (a value that cannot be read still ends
    /// the query) but not copied out, and comes out NULL.
    pub fn reading(row: &Row, read: &[bool]) -> RowDecoder {
        let mut d = RowDecoder::of(row);
        for (i, d) in d.0.iter_mut().enumerate() {
            if *d == Decoder::Text && !read.get(i).copied().unwrap_or(true) {
                *d = Decoder::Unread;
            }
        }
        d
    }

    /// Replaces `cells` with the row's values, one per column. Text is written into the
    /// buffer of the text `cells` held at its place, if any, so a caller that puts buffers
    /// back (`RowBuilder::build_in`) decodes rows without allocating for them.
    pub fn decode_into(
        &self,
        row: &Row,
        columns: &[Column],
        cells: &mut Vec<Cell>,
    ) -> Result<(), Undecodable> {
        cells.truncate(self.0.len());
        let types = row.columns();
        for (i, d) in self.0.iter().enumerate() {
            let cell = match row.try_get::<_, RawValue>(i) {
                Ok(RawValue(None)) => Ok(Cell::Null),
                Ok(RawValue(Some(raw))) if *d == Decoder::Text => match std::str::from_utf8(raw) {
                    Ok(text) => {
                        if let Some(Cell::Text(buf)) = cells.get_mut(i) {
                            buf.clear();
                            buf.push_str(text);
                            continue;
                        }
                        Ok(Cell::Text(text.to_string()))
                    }
                    Err(e) => Err(e.into()),
                },
                Ok(RawValue(Some(raw))) => decode_as(*d, types[i].type_(), raw),
                Err(e) => Err(e.into()),
            };
            match cell {
                Ok(c) if i < cells.len() => cells[i] = c,
                Ok(c) => cells.push(c),
                Err(e) => {
                    cells.truncate(i);
                    return Err(Undecodable {
                        column: columns
                            .get(i)
                            .map(|c| c.name.clone())
                            .unwrap_or_else(|| format!("column {}", i + 1)),
                        detail: error_chain(&*e),
                    });
                }
            }
        }
        Ok(())
    }
}

/// A row's fingerprint: SHA-256 (first 16 bytes) over `prefix` (whatever must change the
/// fingerprint besides the values: the mapping, the columns) and the row's values exactly as
/// PostgreSQL sent them. Equal fingerprints mean equal values, so the same profile.
pub fn row_fingerprint(prefix: &sha2::Sha256, row: &Row) -> [u8; 16] {
    use sha2::Digest as _;
    let mut h = prefix.clone();
    for i in 0..row.len() {
        match row.try_get::<_, RawValue>(i) {
            Ok(RawValue(Some(raw))) => {
                h.update((raw.len() as u32).to_le_bytes());
                h.update(raw);
            }
            _ => h.update(u32::MAX.to_le_bytes()),
        }
    }
    let full = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// A value's bytes as sent (binary format), whatever its type; `None` for NULL.
struct RawValue<'a>(Option<&'a [u8]>);

impl<'a> FromSql<'a> for RawValue<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(RawValue(Some(raw)))
    }
    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(RawValue(None))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

impl<'a> FromSql<'a> for Cell {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        decode(ty, raw)
    }
    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Cell::Null)
    }
    fn accepts(_: &Type) -> bool {
        true
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

    #[test]
    fn datetimes_print_as_chrono_prints_them() {
        let mut next = crate::rows::testing::xorshift(0x853C_49E6_748F_EA9Bu64);
        for i in 0..100_000 {
            let Some(t) = crate::rows::testing::datetime(&mut next, i) else {
                continue;
            };
            assert_eq!(
                format_datetime(&t),
                t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                "{t:?}"
            );
        }
    }

    #[test]
    fn numeric_decodes_exactly() {
        // 412.50: ndigits 2, weight 0, sign +, dscale 2, digits [412, 5000]
        let raw = [0, 2, 0, 0, 0, 0, 0, 2, 0x01, 0x9C, 0x13, 0x88];
        assert_eq!(decode_numeric(&raw).unwrap(), "412.50");
        // -0.0001: ndigits 1, weight -1, sign -, dscale 4, digits [1]
        let raw = [0, 1, 0xFF, 0xFF, 0x40, 0, 0, 4, 0, 1];
        assert_eq!(decode_numeric(&raw).unwrap(), "-0.0001");
        // 10000: ndigits 1, weight 1, digits [1]
        let raw = [0, 1, 0, 1, 0, 0, 0, 0, 0, 1];
        assert_eq!(decode_numeric(&raw).unwrap(), "10000");
        // Truncated input is an error, not a panic.
        for n in 0..raw.len() {
            assert!(decode_numeric(&raw[..n]).is_err() || n >= 8);
        }
        assert!(decode(&Type::INT4, &[0, 1]).is_err());
        assert!(decode(&Type::TEXT_ARRAY, &[0, 0, 0, 1, 0]).is_err());
    }
}

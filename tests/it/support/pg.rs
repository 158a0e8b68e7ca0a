//! A fresh PostgreSQL database per test, dropped afterwards.
//!
//! In: `KDIT_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`), a
//! server where that role may create databases. Out: a `TestDb` with its own uniquely named
//! database and a URL to it. I/O: creates and drops a database. When the server cannot be
//! reached the test panics with the command that starts it: never a silent skip.

use std::sync::atomic::{AtomicU32, Ordering};

use tokio_postgres::{Client, NoTls};

pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A database that exists for one test.
pub struct TestDb {
    /// URL of the test's own database.
    pub url: String,
    /// The database's name.
    pub name: String,
    admin_url: String,
}

pub fn admin_url() -> String {
    std::env::var("KDIT_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_string())
}

/// Connects with `url`, panicking with instructions when PostgreSQL is not there.
pub async fn connect(url: &str) -> Client {
    match tokio_postgres::connect(url, NoTls).await {
        Ok((client, conn)) => {
            tokio::spawn(async move {
                let _ = conn.await;
            });
            client
        }
        Err(e) => panic!(
            "\n\nPostgreSQL is not reachable at {url}: {e}\n\
             The integration tests need a real server. Start it with:\n\n    \
             pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n\n\
             or point KDIT_TEST_DATABASE_URL at a server where this role may CREATE DATABASE.\n"
        ),
    }
}

impl TestDb {
    /// Creates a fresh database named `kdit_test_<pid>_<n>_<nanos>`.
    pub async fn new() -> TestDb {
        let admin_url = admin_url();
        let admin = connect(&admin_url).await;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "kdit_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            nanos
        );
        admin
            .batch_execute(&format!("create database \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        let url = with_database(&admin_url, &name);
        TestDb {
            url,
            name,
            admin_url,
        }
    }

    /// A client connected to the test database.
    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    /// Runs setup SQL (several statements allowed) in the test database.
    pub async fn execute(&self, sql: &str) {
        self.client()
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("setup SQL failed: {e}\n{sql}"));
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop may run inside a runtime: do the async work on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok((client, conn)) = tokio_postgres::connect(&admin_url, NoTls).await {
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    let _ = client
                        .batch_execute(&format!("drop database if exists \"{name}\" with (force)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// `url` with its database replaced by `db` (URL or key=value form).
pub fn with_database(url: &str, db: &str) -> String {
    if url.contains("://") {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (url, None),
        };
        let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
        let base = match base[scheme_end..].find('/') {
            Some(i) => &base[..scheme_end + i],
            None => base,
        };
        match query {
            Some(q) => format!("{base}/{db}?{q}"),
            None => format!("{base}/{db}"),
        }
    } else {
        let kept: Vec<&str> = url
            .split_whitespace()
            .filter(|kv| !kv.starts_with("dbname="))
            .collect();
        format!("{} dbname={db}", kept.join(" "))
    }
}
